"""The config schema: one place that owns the defaults, loaded from YAML with `--set` overrides.

Precedence: `--set a.b=c` > YAML > the defaults written here. Unknown keys and wrong types are
rejected with the file, the line and the key path (`stages[2].heuristics.gopher_quality.min_doc_words`).
Each stage's own block is validated by that stage's `Params` model, found through the registry.
Unknown keys are found at every depth before validation, each with its own line and the nearest
valid names; a `Params` model names the keys its free-form mappings accept (e.g. a datatrove
filter's constructor arguments) through an optional classmethod `accepted_keys(field) -> list | None`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from winnow.pipeline.errors import ConfigError, InputPathError, KeyedValueError


@dataclass
class Locator:
    """Where each key path of a config came from: a line of its YAML file, or a `--set` assignment
    (which has no line; the YAML lines under an overridden key no longer apply)."""

    source: str
    lines: dict[tuple, int] = field(default_factory=dict)
    overrides: dict[tuple, str] = field(default_factory=dict)

    def where(self, loc: tuple) -> tuple[int | None, str | None]:
        """(line, None) or (None, the `--set` assignment) for the nearest located key at or above `loc`."""
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in self.overrides:
                return None, self.overrides[loc[:cut]]
            if loc[:cut] in self.lines:
                return self.lines[loc[:cut]], None
        return None, None

    def error(self, message: str, loc: tuple, also: tuple[ConfigError, ...] = ()) -> ConfigError:
        line, setting = self.where(loc)
        return ConfigError(message, path=self.source, key=key_path(loc), line=line, setting=setting, also=also)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputConfig(Strict):
    """Where the raw corpus is and how to read it."""

    paths: list[str] = Field(default_factory=list, description="files, folders or glob patterns (`**` recurses)")
    format: Literal["auto", "jsonl", "parquet", "hf", "txt", "warc", "wet", "installed_packages"] = Field(
        "auto", description="auto: by file suffix; hf: a `datasets` save_to_disk folder; warc: one row per "
        "HTTP response (html, url, …; text comes from the `extract` stage); wet: Common Crawl's extracted text; "
        "installed_packages: documentation shipped inside the installed Python packages")
    text_field: str = Field("text", description="input field holding the document text")
    id_field: str = Field("id", description="input field holding a unique id; missing ids become `path:line`")
    shard_size_mb: float | None = Field(
        None, gt=0, description="split files into shards of about this size; null: about 12 shards per worker")
    max_text_bytes: int = Field(16_000_000, gt=0, description="longer documents go to rejected/ as text_too_long")
    utf8_errors: Literal["reject", "replace"] = Field(
        "reject", description="invalid UTF-8: reject the line, or replace bad bytes with U+FFFD and keep it")
    strict: bool = Field(False, description="stop at the first bad record instead of quarantining it")
    # where this block came from, so that ingest planning can point a path that reads nothing at its line
    _locator: Locator | None = PrivateAttr(None)

    def locate(self, error: InputPathError) -> InputPathError:
        """`error` (raised by the readers at `input.paths[i]`) with the config's file and line, or the
        `--set` assignment the paths came from."""
        locator = self._locator or Locator("<config>")
        line, setting = locator.where(_parse_key(error.key))
        return InputPathError(error.reason, file=error.file, key=error.key, path=locator.source, line=line,
                              setting=setting)


class SlurmConfig(Strict):
    """Workers as Slurm batch jobs (dask-jobqueue's SLURMCluster); the driver stays where `winnow run`
    started. Each job runs `cores / engine.threads_per_worker` worker processes sharing `memory`."""

    jobs: int = Field(1, gt=0, description="worker jobs kept running; one that ends (scancel, walltime, "
                      "node failure) is replaced and loses only its tasks")
    cores: int = Field(1, gt=0, description="CPU cores per job (sbatch --cpus-per-task)")
    memory: str = Field("4GB", description="memory per job, e.g. '16GB' (sbatch --mem), split among its workers")
    walltime: str = Field("01:00:00", description="per job (sbatch -t); a job that reaches it is replaced")
    queue: str | None = Field(None, description="partition (sbatch -p); null: the cluster's default")
    account: str | None = Field(None, description="sbatch -A; null: the user's default")
    job_extra_directives: list[str] = Field(default_factory=list, description="more sbatch options, one per "
                                            "item, e.g. ['--qos=normal', '--constraint=skylake']")
    start_timeout_s: float = Field(600, gt=0, description="how long to wait for the first worker job to "
                                   "start before the run stops with an error naming the queue")


class EngineConfig(Strict):
    """The Dask cluster. Default: an embedded LocalCluster of worker processes sized to the machine."""

    scheduler: str | None = Field(None, description="address of an existing cluster, e.g. tcp://host:8786")
    slurm: SlurmConfig | None = Field(None, description="workers as Slurm jobs (pip install 'winnow[slurm]'); "
                                      "null: not on Slurm")
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

    @model_validator(mode="after")
    def _one_cluster(self) -> EngineConfig:
        if self.slurm is None:
            return self
        if self.scheduler:
            raise ValueError("engine.slurm and engine.scheduler both name a cluster: set one")
        if self.gpu_workers:
            raise ValueError("engine.gpu_workers is for the embedded LocalCluster; on Slurm, request GPUs "
                             "through slurm.job_extra_directives and engine.resources")
        if self.slurm.cores % self.threads_per_worker:
            raise ValueError(f"slurm.cores ({self.slurm.cores}) must be a multiple of threads_per_worker "
                             f"({self.threads_per_worker}): each job runs cores / threads_per_worker workers")
        return self


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
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for every remote filesystem the run opens (e.g. "
        "endpoint_url for an S3-compatible server); credentials come from each cloud's own chain, never from here")
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
        from winnow.pipeline.storage import scrub

        data["storage_options"] = scrub(data.get("storage_options") or {})   # never write a secret anywhere
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
    data, locator = _read_yaml(Path(path), overrides)
    return _validate(model, data, (), locator)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ResolvedConfig:
    """Read, override and validate a config; every error names the file, line and key path."""
    data, locator = _read_yaml(Path(path), overrides)
    return resolve(data, source=str(path), lines=locator.lines, overrides=locator.overrides)


def _read_yaml(path: Path, overrides: list[str] | tuple[str, ...]) -> tuple[dict, Locator]:
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
    locator = Locator(str(path), _line_map(node) if node is not None else {})
    for assignment in overrides:
        apply_override(data, assignment)
        loc = _parse_key(assignment.split("=", 1)[0].strip())
        # the file's lines at and under an overridden key describe a value that no longer runs
        locator.lines = {k: v for k, v in locator.lines.items() if k[:len(loc)] != loc}
        locator.overrides = {k: v for k, v in locator.overrides.items() if k[:len(loc)] != loc}
        locator.overrides[loc] = assignment.strip()
    return data, locator


def _parse_key(dotted: str) -> tuple:
    """'stages.1.x' or 'stages[1].x' -> ('stages', 1, 'x'): the inverse of `key_path`."""
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    return tuple(int(p) if p.isdigit() else p for p in parts if p != "")


def resolve(data: dict, source: str = "<dict>", lines: dict[tuple, int] | None = None,
            overrides: dict[tuple, str] | None = None) -> ResolvedConfig:
    """Validate a config mapping and each stage's parameters against its registered `Params`.
    `lines` and `overrides` (from `load_config`) locate errors: key path -> line or `--set` assignment."""
    from winnow.pipeline.registry import get_stage_class

    locator = Locator(source, dict(lines or {}), dict(overrides or {}))
    unknown = _unknown_keys(PipelineConfig, data, ())
    stages = data.get("stages") if isinstance(data, dict) else None
    for i, item in enumerate(stages if isinstance(stages, list) else []):
        if isinstance(item, dict) and len(item) == 1:   # every stage's block, so one pass reports them all
            name, block = next(iter(item.items()))
            with contextlib.suppress(KeyError):   # an unknown stage name is reported below, at its line
                unknown += _unknown_keys(get_stage_class(name).Params, block, ("stages", i, name))
    _raise_unknown(unknown, locator)
    pipeline = _validate(PipelineConfig, data, (), locator)
    pipeline.input._locator = locator
    specs = []
    for i, item in enumerate(pipeline.stages):
        loc: tuple = ("stages", i)
        if len(item) != 1:
            raise locator.error("each stage is a one-key mapping, like `- heuristics: {}`", loc)
        name, block = next(iter(item.items()))
        try:
            cls = get_stage_class(name)
        except KeyError as e:
            raise locator.error(e.args[0], loc + (name,)) from None
        params = _validate(cls.Params, block or {}, loc + (name,), locator)
        specs.append(StageSpec(name=name, index=i + 1, params=params))
    return ResolvedConfig(source=source, pipeline=pipeline, stages=specs)


def _validate(model: type[BaseModel], data: Any, loc: tuple, locator: Locator) -> Any:
    """`model.model_validate(data)`, after reporting every unknown key at any depth (each at its own
    line, with the nearest valid names); then the first other problem pydantic finds."""
    _raise_unknown(_unknown_keys(model, data, loc), locator)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        # a bad entry of a free-form mapping (a KeyedValueError from a validator) is located at the entry
        cause = (err.get("ctx") or {}).get("error")
        entry = (cause.key,) if isinstance(cause, KeyedValueError) else ()
        reason = str(cause) if entry else _describe(err)
        raise locator.error(reason, loc + tuple(err["loc"]) + entry) from e


# ---------------------------------------------------------------- unknown keys at any depth


def _raise_unknown(unknown: list[tuple[tuple, list[str]]], locator: Locator) -> None:
    """One ConfigError for all unknown keys: the first in its fields, each on its own line."""
    if not unknown:
        return
    errors = [locator.error(_unknown_message(loc[-1], names), loc) for loc, names in unknown]
    first = errors[0]
    raise ConfigError(first.reason, path=first.path, key=first.key, line=first.line, setting=first.setting,
                      also=tuple(errors[1:]))


def _unknown_keys(model: type[BaseModel], data: Any, loc: tuple) -> list[tuple[tuple, list[str]]]:
    """(key path, the valid names beside it) for every key of `data` that `model` would refuse, at
    any depth: nested models, lists and mappings of models, and free-form mappings whose keys the
    model names through `accepted_keys(field)`."""
    if not isinstance(data, dict):
        return []
    names = _field_names(model)
    accepted_keys = getattr(model, "accepted_keys", None)
    found: list[tuple[tuple, list[str]]] = []
    for key, value in data.items():
        if key not in names:
            if model.model_config.get("extra") == "forbid":
                found.append((loc + (key,), sorted(names)))
            continue
        field_name = names[key]
        accepted = accepted_keys(field_name) if callable(accepted_keys) else None
        if accepted is not None and isinstance(value, dict):
            found += [(loc + (key, k), sorted(accepted)) for k in value if k not in accepted]
            # a block's per-language overrides take the same arguments (heuristics' `per_language`)
            for code, inner in (value.get("per_language") or {}).items() if "per_language" in accepted else ():
                if isinstance(inner, dict):
                    found += [(loc + (key, "per_language", code, k), sorted(set(accepted) - {"per_language"}))
                              for k in inner if k not in accepted or k == "per_language"]
            continue
        found += _unknown_in(model.model_fields[field_name].annotation, value, loc + (key,))
    return found


def _unknown_in(annotation: Any, value: Any, loc: tuple) -> list[tuple[tuple, list[str]]]:
    """Descend into `value` along its type: a model, `X | None`, `list[X]`, `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _unknown_keys(annotation, value, loc)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _unknown_in(args[0], value, loc)
    if origin in (typing.Union, types.UnionType):
        # follow the one member of the union that a value of this shape can be (a mapping: a model or
        # a dict type); with several candidates pydantic's own error says which failed
        shape = dict if isinstance(value, dict) else list if isinstance(value, list) else None
        fits = [a for a in args if shape is not None and _shape_of(a) is shape]
        return _unknown_in(fits[0], value, loc) if len(fits) == 1 else []
    if origin is list and args and isinstance(value, list):
        return [u for i, item in enumerate(value) for u in _unknown_in(args[0], item, loc + (i,))]
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return [u for k, item in value.items() for u in _unknown_in(args[1], item, loc + (k,))]
    return []


def _shape_of(annotation: Any) -> type | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return dict
    origin = typing.get_origin(annotation) or annotation
    return origin if origin in (dict, list) else None


def _field_names(model: type[BaseModel]) -> dict[str, str]:
    """Every name a key may use (field names and string aliases) -> the field it sets."""
    names = {}
    for name, info in model.model_fields.items():
        names[name] = name
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names[alias] = name
    return names


def _unknown_message(key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {' or '.join(repr(c) for c in close)}?"
    return f"unknown key {key!r}; valid keys here: {', '.join(valid) or '(none)'}"


def _describe(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown key {err['loc'][-1]!r}" if err["loc"] else "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    got = err.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{err['msg']}{got_text}"
