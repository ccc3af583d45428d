"""Typed errors that say where: file, line, key path, shard.

Tests assert on the fields, users read the message.
"""

from __future__ import annotations


class WinnowError(Exception):
    """Base class for every error winnow raises on purpose."""


class ConfigError(WinnowError):
    """A config that cannot run: bad YAML, unknown key, wrong type, unknown stage."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None,
                 line: int | None = None):
        self.path, self.key, self.line, self.reason = path, key, line, message
        where = path or "<config>"
        if line is not None:
            where += f":{line}"
        if key:
            where += f" [{key}]"
        super().__init__(f"{where}: {message}")


class InputError(WinnowError):
    """A bad input record met with `strict: true`, or input that cannot be read at all."""

    def __init__(self, message: str, *, file: str, line: int | None = None, reason: str | None = None):
        self.file, self.line, self.reason = file, line, reason
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {message}")


class ShardError(WinnowError):
    """A stage failed on one shard, or a shard's output broke the data contract."""

    def __init__(self, message: str, *, stage: str, shard: str):
        self.stage, self.shard = stage, shard
        super().__init__(f"stage {stage!r}, shard {shard}: {message}")


class StorageError(WinnowError):
    """An output file could not be written (disk full, read-only folder, quota): names the file."""

    def __init__(self, message: str, *, path: str):
        self.path = path
        super().__init__(f"{path}: {message}")
