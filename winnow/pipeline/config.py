"""The config schema: one place that owns the defaults, loaded from YAML with `--set` overrides.

Precedence: `--set a.b=c` > YAML > the defaults written here. Unknown keys and wrong types are
rejected with the file, the line and the key path (`stages[2].heuristics.gopher_quality.min_doc_words`).
Each stage's own block is validated by that stage's `Params` model, found through the registry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from winnow.pipeline.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputConfig(Strict):
    """Where the raw corpus is and how to read it."""

    paths: list[str] = Field(default_factory=list, description="files, folders or glob patterns (`**` recurses)")
    format: Literal["auto", "jsonl", "parquet", "hf", "txt", "installed_packages"] = Field(
        "auto", description="auto: by file suffix; hf: a `datasets` save_to_disk folder; "
        "installed_packages: documentation shipped inside the installed Python packages")
    text_field: str = Field("text", description="input field holding the document text")
    id_field: str = Field("id", description="input field holding a unique id; missing ids become `path:line`")
    shard_size_mb: float | None = Field(
        None, gt=0, description="split files into shards of about this size; null: about 12 shards per worker")
    max_text_bytes: int = Field(16_000_000, gt=0, description="longer documents go to rejected/ as text_too_long")
    utf8_errors: Literal["reject", "replace"] = Field(
        "reject", description="invalid UTF-8: reject the line, or replace bad bytes with U+FFFD and keep it")
    strict: bool = Field(False, description="stop at the first bad record instead of quarantining it")


class EngineConfig(Strict):
    """The Dask cluster. Default: an embedded LocalCluster of worker processes sized to the machine."""

    scheduler: str | None = Field(None, description="address of an existing cluster, e.g. tcp://host:8786")
    n_workers: int | None = Field(None, gt=0, description="LocalCluster worker processes (default: CPU count)")
    threads_per_worker: int = Field(1, gt=0)
    gpu_workers: int = Field(0, ge=0, description="extra LocalCluster workers (one thread each) that "
                             "advertise {GPU: 1}: model training and scoring tasks go there, the rest to the "
                             "CPU workers; one is all a single-GPU machine needs")
    resources: dict[str, float] | None = Field(None, description="Dask resources every CPU worker of the "
                                               "LocalCluster advertises")
    memory_limit: str = Field("auto", description="per worker, e.g. '4GiB'; auto splits system memory")
    retries: int = Field(2, ge=0, description="times a shard task is retried after a failure")
    progress: bool = Field(True, description="show a progress bar per stage")
    dashboard: bool | str = Field(False, description="the Dask dashboard of the embedded LocalCluster: "
                                  "false (default: none), true (:8787) or an address such as ':8790'")
    arrow_memory_pool: Literal["system", "mimalloc", "jemalloc", "default"] = Field(
        "system", description="Arrow's allocator in every process; `system` (glibc, trimmed by Dask's "
        "MALLOC_TRIM_THRESHOLD_) returns freed shard memory, mimalloc keeps it (bench/LOG.md)")


class OutputsConfig(Strict):
    dataset: bool = Field(True, description="also write the final rows as a `datasets` save_to_disk folder")
    token_files: bool = Field(True, description="when the last stage packs: tokens/ (flat memmap + index)")
    megatron: bool = Field(True, description="when the last stage packs: megatron/text_document.{bin,idx}")
    report: bool = Field(False, description="end by writing report.html (what `winnow report OUT` writes)")
    removed: bool = Field(False, description="stages that edit kept text also write what they cut out "
                          "(id, reason, text) under <stage>/removed/, so nothing is unrecoverable")


class PipelineConfig(Strict):
    """The whole run. `stages` is a list of one-key mappings: `- heuristics: {…}`."""

    input: InputConfig
    output: str = Field(description="output folder; each stage writes <output>/<NN>-<stage>/")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    seed: int = 0
    stages: list[dict[str, Any]] = Field(default_factory=list)


class StageSpec(BaseModel):
    """One stage, resolved: its registry name, position and validated parameters."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    index: int
    params: BaseModel

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.name}"


class ResolvedConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    source: str
    pipeline: PipelineConfig
    stages: list[StageSpec]

    def to_dict(self) -> dict:
        data = self.pipeline.model_dump(mode="json")
        data["stages"] = [{s.name: s.params.model_dump(mode="json")} for s in self.stages]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def stable_hash(obj: Any) -> str:
    """A deterministic hash of JSON-able data; refuses anything it cannot serialise exactly."""
    try:
        blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot hash deterministically: {e}") from e
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


# ---------------------------------------------------------------- YAML with line numbers


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path of a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = path + (key_node.value,)
            out[sub] = key_node.start_mark.line + 1
            _line_map(value_node, sub, out)
            out[sub] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out


def key_path(loc: tuple) -> str:
    """('stages', 2, 'heuristics', 'x') -> 'stages[2].heuristics.x'"""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML; list items by index: stages.1.x=…)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}", key=assignment)
    dotted, raw = assignment.split("=", 1)
    parts: list[Any] = [int(p) if p.isdigit() else p for p in dotted.strip().split(".")]
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(f"no list item {part!r}", key=key_path(tuple(parts[: i + 1])))
            node = node[part]
            continue
        if isinstance(node, dict) and isinstance(node.get(part), list) and isinstance(parts[i + 1], int):
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError("cannot set a key inside a non-mapping", key=key_path(tuple(parts[: i + 1])))
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_model(path: str | Path, model: type[BaseModel], overrides: list[str] | tuple[str, ...] = ()) -> BaseModel:
    """Read a YAML file into any strict pydantic model, with `--set` overrides and located errors."""
    data, lines = _read_yaml(Path(path), overrides)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        raise ConfigError(_describe(err), path=str(path), key=key_path(loc), line=_line_for(lines, loc)) from e


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ResolvedConfig:
    """Read, override and validate a config; every error names the file, line and key path."""
    data, lines = _read_yaml(Path(path), overrides)
    return resolve(data, source=str(path), lines=lines)


def _read_yaml(path: Path, overrides: list[str] | tuple[str, ...]) -> tuple[dict, dict[tuple, int]]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path.resolve()}", path=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(e, 'problem', e)}", path=str(path),
                          line=mark.line + 1 if mark else None) from e
    if not isinstance(data, dict):
        raise ConfigError("YAML root must be a mapping", path=str(path), line=1)
    lines = _line_map(node) if node is not None else {}
    for assignment in overrides:
        apply_override(data, assignment)
    return data, lines


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def resolve(data: dict, source: str = "<dict>", lines: dict[tuple, int] | None = None) -> ResolvedConfig:
    """Validate a config mapping and each stage's parameters against its registered `Params`."""
    from winnow.pipeline.registry import get_stage_class

    lines = lines or {}
    try:
        pipeline = PipelineConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        raise ConfigError(_describe(err), path=source, key=key_path(loc), line=_line_for(lines, loc)) from e
    specs = []
    for i, item in enumerate(pipeline.stages):
        loc: tuple = ("stages", i)
        if len(item) != 1:
            raise ConfigError("each stage is a one-key mapping, like `- heuristics: {}`",
                              path=source, key=key_path(loc), line=_line_for(lines, loc))
        name, block = next(iter(item.items()))
        try:
            cls = get_stage_class(name)
        except KeyError as e:
            raise ConfigError(e.args[0], path=source, key=key_path(loc + (name,)),
                              line=_line_for(lines, loc + (name,))) from None
        try:
            params = cls.Params.model_validate(block or {})
        except ValidationError as e:
            err = e.errors()[0]
            sub = loc + (name,) + tuple(err["loc"])
            raise ConfigError(_describe(err), path=source, key=key_path(sub), line=_line_for(lines, sub)) from e
        specs.append(StageSpec(name=name, index=i + 1, params=params))
    return ResolvedConfig(source=source, pipeline=pipeline, stages=specs)


def _describe(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    got = err.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{err['msg']}{got_text}"
