"""The stage protocol: a small class with `fit` (optional global pass) and `apply` (one shard).

`apply(table, state) -> (kept, rejected)` is pure over one Arrow table: no file I/O, no module
globals, randomness only from a seed in the state. The engine owns reading, writing, retries and
the conservation checks (rows in = kept + rejected; bytes in = kept + rejected + removed), so a
stage only decides.

A stage that edits the text of rows it keeps (normalize, line_dedup, heuristics, pii) sets
`edits_text` and builds its result with `split_edited(table, text, keep, reasons, cuts)`: it
declares every cut in a `Cuts` (row, reason, bytes, the piece of text), and gets back
`(kept, rejected, removed)`: kept rows with the new text and `<stage>_bytes_removed`, rejected rows
with the text they came in with, and the removed pieces (`REMOVED_SCHEMA`), which the engine counts
by reason and, with `outputs.removed`, writes to `removed/`.
Models load lazily, once per worker process, never in `__init__`: Dask pickles stages to workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from distributed import Client


# what a text-editing stage cut out of the rows it kept: one row per (document, reason, piece).
# `bytes` is signed: a rewrite that grows text (an NFKC expansion) counts as a negative cut.
REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("bytes", pa.int64()),
                            ("text", pa.string())])


def bytes_removed_column(stage: str) -> str:
    """The per-row column a text-editing stage adds to its kept rows: `heuristics_bytes_removed`."""
    return f"{stage}_bytes_removed"


def utf8_bytes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """UTF-8 bytes of each string (0 for null), as int64."""
    if len(values) == 0:
        return np.zeros(0, np.int64)
    return np.asarray(pc.fill_null(pc.binary_length(values), 0), dtype=np.int64)


class Cuts:
    """The cuts a text-editing stage makes in one shard: (row of the input table, reason, bytes, text).

    `text` is the piece itself where the stage has it (a line, a paragraph), None where the cut is
    not one piece (normalize's whitespace and Unicode-form changes: the bytes are still exact)."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.reasons: list[str] = []
        self.nbytes: list[int] = []
        self.texts: list[str | None] = []
        self._totals: dict[int, int] = {}

    def add(self, row: int, reason: str, nbytes: int, text: str | None = None) -> None:
        if nbytes:
            self.rows.append(int(row))
            self.reasons.append(reason)
            self.nbytes.append(int(nbytes))
            self.texts.append(text)
            self._totals[int(row)] = self._totals.get(int(row), 0) + int(nbytes)

    def add_many(self, rows: np.ndarray, reason: str, nbytes: np.ndarray) -> None:
        """One reason, many rows, no text (vectorised stages)."""
        rows, nbytes = np.asarray(rows, np.int64), np.asarray(nbytes, np.int64)
        nz = nbytes != 0
        self.rows.extend(rows[nz].tolist())
        self.nbytes.extend(nbytes[nz].tolist())
        self.reasons.extend([reason] * int(nz.sum()))
        self.texts.extend([None] * int(nz.sum()))
        for r, b in zip(rows[nz].tolist(), nbytes[nz].tolist(), strict=True):
            self._totals[r] = self._totals.get(r, 0) + b

    def row_total(self, row: int) -> int:
        """Bytes declared so far for one row."""
        return self._totals.get(int(row), 0)

    def per_row(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int64)
        np.add.at(out, np.asarray(self.rows, np.int64), np.asarray(self.nbytes, np.int64))
        return out

    def table(self, ids: list, keep: np.ndarray) -> pa.Table:
        """The cuts of kept rows as a REMOVED_SCHEMA table (a rejected row's cuts never happened)."""
        take = [i for i, r in enumerate(self.rows) if keep[r]]
        return pa.table({"id": pa.array([ids[self.rows[i]] for i in take], pa.string()),
                         "reason": pa.array([self.reasons[i] for i in take], pa.string()),
                         "bytes": pa.array([self.nbytes[i] for i in take], pa.int64()),
                         "text": pa.array([self.texts[i] for i in take], pa.string())}, schema=REMOVED_SCHEMA)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ShardRef:
    """One unit of work: an input shard's name (`part-00003`), where it is, and what it holds.

    `fingerprint` changes whenever the shard's content could have changed; resume compares it.
    """

    name: str
    path: str
    fingerprint: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class RunOutputs:
    """What `Stage.finalize` is given: the run's folder, the final stage's folder and kept-shard
    fingerprints, the config's `outputs:` block, and whether the run was forced."""

    out_dir: Path
    stage_dir: Path
    fingerprints: list[str]
    options: Any
    force: bool = False


@dataclass
class Context:
    """What `fit` may use: the cluster, the run's seed and a folder for side files."""

    client: Client
    seed: int
    workdir: str
    config: Any = None
    force: bool = False   # `run --force`: the fit starts afresh, nothing it saved before is resumed

    def n_workers(self) -> int:
        hint = getattr(self.client, "worker_count_hint", None)  # a cluster not started yet knows its size
        count = hint() if hint is not None else None
        return max(1, count or len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def gpu_resources(self) -> dict[str, float] | None:
        """`{"GPU": 1}` when some worker advertises a GPU resource (so model tasks go there, one at a
        time per GPU), else None: a CPU cluster runs them anywhere."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None

    def map(self, fn, items: list, **kwargs) -> list:
        """Run `fn` on every item on the cluster, in order; results come back to the caller."""
        if not items:
            return []
        futures = self.client.map(fn, items, pure=False, **kwargs)
        return self.client.gather(futures)


def created_rows(table: pa.Table) -> int:
    """Rows marked `synthetic`: made by a stage (rephrase), not read from the input."""
    if "synthetic" not in table.column_names or table.num_rows == 0:
        return 0
    import pyarrow.compute as pc

    return int(pc.sum(pc.cast(pc.fill_null(table.column("synthetic"), False), pa.int64())).as_py() or 0)


class Stage:
    """Base class. Subclasses set `name`, `Params` and implement `apply` (and maybe `fit`).

    Class attributes:
        name: registry name and output folder suffix.
        Params: pydantic model of the stage's YAML block (unknown keys fail); paper defaults.
        version: bump when the same params would now give different output (invalidates resume).
        resources: Dask resources each shard task needs, e.g. {"GPU": 1}.
        reject_columns: extra Arrow fields every rejected row carries (null where not relevant).
        edits_text: the stage changes `text` in rows it keeps; its `apply` returns a third table, the
            removed pieces (build it with `split_edited`).
        emits_documents: kept rows are documents with `text` (false for pack: token rows); the run's
            `dataset/` is the last such stage's rows.
    """

    name: ClassVar[str] = "stage"
    Params: ClassVar[type[BaseModel]] = NoParams
    version: ClassVar[int] = 1
    resources: ClassVar[dict[str, float]] = {}
    reject_columns: ClassVar[dict[str, pa.DataType]] = {}
    edits_text: ClassVar[bool] = False
    emits_documents: ClassVar[bool] = True

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

    def inputs(self, upstream: list[ShardRef], ctx: Context) -> list[ShardRef]:
        """The shards this stage runs over; by default the previous stage's kept shards."""
        return upstream

    def load(self, ref: ShardRef) -> Any:
        """Read one input shard for `apply` (runs on a worker)."""
        import pyarrow.parquet as pq

        return pq.read_table(ref.path)

    def fit(self, shards: list[ShardRef], ctx: Context) -> Any:
        """Optional global pass over all input shards; its result is `apply`'s `state`."""
        return None

    def shard_state(self, state: Any, ref: ShardRef) -> Any:
        """The part of `state` one shard needs; override so large states are not broadcast."""
        return state

    def apply(self, table: pa.Table, state: Any) -> tuple[pa.Table, pa.Table] | tuple[pa.Table, pa.Table, pa.Table]:
        """(kept, rejected), or with `edits_text` (kept, rejected, removed): see `split_edited`."""
        raise NotImplementedError

    def documents_in(self, kept: pa.Table) -> int:
        """How many input rows `kept` accounts for (conservation: rows in = this + rejected).

        One per row, less the rows the stage created (`synthetic`); a stage whose output rows are
        not documents (packing) counts the documents they hold instead.
        """
        return kept.num_rows - created_rows(kept)

    def manifest_extra(self, state: Any) -> dict:
        """Facts about the fitted state for `_manifest.json` (e.g. a tokenizer's hash)."""
        return {}

    def flops(self, table: Any) -> float:
        """Model FLOPs spent on one shard (scoring stages); recorded in the manifest."""
        return 0.0

    def shard_stats(self, data: Any, kept: pa.Table, rejected: pa.Table) -> dict[str, float]:
        """Numbers about one shard's work that the manifest sums over shards (e.g. generated tokens);
        a `flops` entry is added to the shard's FLOPs. `data` is what `load` gave `apply`."""
        return {}

    def finalize(self, outputs: RunOutputs) -> None:
        """Run-level files the last stage of a run writes beside the stage folders (pack writes
        `tokens/` and `megatron/`); called once after the run, on the driver. Default: nothing."""

    @classmethod
    def display_text(cls, text: str, params: dict) -> str:
        """What a report may show of a row this stage rejected (`params`: its manifest's). Default: the
        text; a stage whose rejected rows hold what must not be shown (pii's drop mode) masks it."""
        return text

    @classmethod
    def check_outputs(cls, stage_dir: Path, manifest: dict) -> list[tuple[Path, str, str]]:
        """`winnow verify`'s checks of the side files this stage writes in its own folder (tokenize: its
        `tokenizer.json` against the manifest's hash), as (path, what, kind). Default: none."""
        return []

    @classmethod
    def check_run_outputs(cls, out_dir: Path, stage_dir: Path, rows: int, documents: int,
                          outputs: dict) -> list[tuple[Path, str, str]]:
        """`winnow verify`'s checks of the run-level files `finalize` writes when this stage ends a run
        (pack: `tokens/`, `megatron/`), given the stage's kept rows and the documents they hold and the
        run's `outputs:` block, as (path, what, kind). Default: none."""
        return []

    def task_resources(self, ctx: Context) -> dict[str, float] | None:
        """Dask resources each shard task asks for; by default the class's `resources`."""
        return self.resources or None

    # helpers for subclasses
    def split_edited(self, table: pa.Table, text: pa.Array | pa.ChunkedArray, keep: np.ndarray,
                     reasons: list[str | None], cuts: Cuts) -> tuple[pa.Table, pa.Table, pa.Table]:
        """(kept, rejected, removed) of a stage that edited `text` (the new text of every row, aligned
        with `table`): kept rows carry the new text and `<stage>_bytes_removed`; rejected rows carry
        the text they came in with; removed holds the kept rows' cuts. A kept row whose declared cuts
        do not add up to the bytes its text lost is a bug in the stage: ValueError."""
        keep = np.asarray(keep, bool)
        n = table.num_rows
        declared = cuts.per_row(n)
        lost = utf8_bytes(table.column("text")) - utf8_bytes(text)
        wrong = np.flatnonzero(keep & (declared != lost))
        if len(wrong):
            i = int(wrong[0])
            raise ValueError(f"{self.name}: row {i} lost {lost[i]} bytes of text but its cuts declare "
                             f"{declared[i]} ({len(wrong)} such rows)")
        col = table.schema.get_field_index("text")
        edited = table.set_column(col, table.schema.field(col), pc.cast(text, table.schema.field(col).type))
        name = bytes_removed_column(self.name)
        if name in edited.column_names:  # an earlier stage of the same kind: the column describes this one
            edited = edited.drop_columns([name])
        edited = edited.append_column(name, pa.array(declared, pa.int64()))
        dropped = np.flatnonzero(~keep)
        rejected = self.reject(table.take(pa.array(dropped, pa.int64())), [reasons[i] for i in dropped])
        return edited.filter(pa.array(keep)), rejected, cuts.table(table.column("id").to_pylist(), keep)

    def reject(self, table: pa.Table, reasons: list | np.ndarray, **extra: Any) -> pa.Table:
        """Rows of `table` tagged with this stage's name, a reason each, and `reject_columns`."""
        n = table.num_rows
        out = table.append_column("stage", pa.array([self.name] * n, pa.string()))
        out = out.append_column("reason", pa.array(list(reasons), pa.string()))
        for col, typ in self.reject_columns.items():
            values = extra.get(col)
            out = out.append_column(col, pa.nulls(n, typ) if values is None else pa.array(values, typ))
        return out


class FilterStage(Stage):
    """A stage that only drops rows: implement `keep(table, state) -> (mask, reasons)`.

    `mask[i]` is True to keep row i; `reasons[i]` is a snake_case reason for each dropped row
    (None where kept). The split into kept and rejected and the bookkeeping are done here once.
    """

    def keep(self, table: pa.Table, state: Any) -> tuple[np.ndarray, list[str | None]]:
        raise NotImplementedError

    def apply(self, table: pa.Table, state: Any) -> tuple[pa.Table, pa.Table]:
        mask, reasons = self.keep(table, state)
        mask = np.asarray(mask, dtype=bool)
        dropped = np.flatnonzero(~mask)
        kept = table.filter(pa.array(mask))
        rejected = self.reject(table.take(pa.array(dropped, pa.int64())), [reasons[i] for i in dropped])
        return kept, rejected
