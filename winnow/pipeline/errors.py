"""Typed errors that say where: file, line, key path, shard.

Tests assert on the fields, users read the message.
"""

from __future__ import annotations


class WinnowError(Exception):
    """Base class for every error winnow raises on purpose."""


class ConfigError(WinnowError):
    """A config that cannot run: bad YAML, unknown key, wrong type, unknown stage."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None,
                 line: int | None = None, setting: str | None = None, also: tuple[ConfigError, ...] = ()):
        # setting: the `--set` assignment the key came from (it has no line); also: further problems
        # found in the same pass, each printed on its own line
        self.path, self.key, self.line, self.reason = path, key, line, message
        self.setting, self.also = setting, also
        # not super(): in InputPathError the next class is InputError, whose fields differ
        Exception.__init__(self, "\n".join([self.located(), *(e.located() for e in also)]))

    def located(self) -> str:
        """`file:line [key]: message`, or `file [key] (--set k=v): message` for an override."""
        where = self.path or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            where += f" [{self.key}]"
        if self.setting:
            where += f" (from --set {self.setting})"
        return f"{where}: {self.reason}"


class InputError(WinnowError):
    """A bad input record met with `strict: true`, or input that cannot be read at all."""

    def __init__(self, message: str, *, file: str, line: int | None = None, reason: str | None = None):
        self.file, self.line, self.reason = file, line, reason
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {message}")


class InputPathError(ConfigError, InputError):
    """An input path of the config that names no readable file (missing, a glob or folder matching
    nothing winnow reads): a config error at `input.paths[i]`, and an input error about `file`.
    `line` is the config's line; readers raise it unlocated and ingest planning adds the location."""

    def __init__(self, message: str, *, file: str, key: str, path: str | None = None, line: int | None = None,
                 setting: str | None = None):
        self.file = file
        ConfigError.__init__(self, message, path=path, key=key, line=line, setting=setting)


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


class KeyedValueError(ValueError):
    """A bad value inside a free-form mapping of a config (a stage's `meta:` block): `key` names the entry at
    fault, so the config loader reports that entry's own line and key path."""

    def __init__(self, message: str, *, key: str):
        super().__init__(message)
        self.key = key
