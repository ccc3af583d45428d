"""The Dask engine: runs a chain of stages shard by shard, resumably, on a Dask cluster.

The engine knows the stage protocol (`inputs`, `fit`, `shard_state`, `load`, `apply`) and the
data contract (kept shards, `rejected/`, `_shards/` markers, `_manifest.json`), and nothing of
any particular stage. For each stage:

1. `fit` runs once over all input shards; its state is cached under `_fit/` keyed by the
   stage's config hash and every input fingerprint, so a rerun does not fit again. The cache is
   signed (HMAC, a key outside the output folder): a state file this machine did not write is
   refitted, never unpickled.
2. A shard's input fingerprint is its own content, the config, and the part of the fitted state
   that shard receives, so one new input file reruns only the shards whose work changes.
   Each shard whose marker matches (config hash + input fingerprint) and whose outputs still hash
   to the marker's checksums is skipped; every other shard becomes one Dask task that removes the
   old marker, loads, applies, checks conservation, writes both outputs atomically (fsynced) and
   writes its marker last.
3. The markers merge into `_manifest.json`; the kept shards are the next stage's input.

Two conservation rules are checked for every shard (the run stops on a broken one) and again by
`winnow verify` from the markers:
- rows: rows in + added = kept + rejected (added: rows the stage created, `synthetic=true`);
- bytes (UTF-8 bytes of `text`): bytes_in + bytes_added = bytes_kept + bytes_rejected + bytes_removed.
  bytes_added is the text of the rows the stage created (rephrase's synthetic rows, kept or not);
  bytes_removed is what a text-editing stage (`Stage.edits_text`) declared it cut from rows it
  kept, by reason (`removed`), and must equal the sum of the kept rows' `<stage>_bytes_removed`. It
  is signed: a rewrite that grows text (NFKC expanding a ligature) is a negative cut. Rejected rows
  hold the text they came in with, so they count in full. A stage whose kept rows are not text
  (pack: token rows, no `text` column) keeps its documents in another form: its bytes_kept is the
  text bytes of the documents it packed (bytes in + added - rejected), and it removes nothing.
  Source stages (ingest) read raw records: their bytes_in is what they kept plus what they rejected.
With `outputs.removed`, a text-editing stage's cuts (id, reason, bytes, text) are written to
`removed/part-NNNNN.parquet`, fsynced and hashed into the marker like the kept and rejected files.

Each shard also records the peak RSS of its worker process while it ran (sampled every 20 ms).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import pickle
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from winnow.pipeline import fit_progress
from winnow.pipeline.config import stable_hash
from winnow.pipeline.errors import ShardError, WinnowError
from winnow.pipeline.faults import inject
from winnow.pipeline.manifest import SHARDS_DIR, ShardRecord, manifest_describes, write_manifest
from winnow.pipeline.remote_output import RemoteOutput
from winnow.pipeline.shards import (
    TEMP_GLOB,
    file_hash,
    kept_path,
    rejected_path,
    removed_path,
    text_bytes,
    write_bytes_atomic,
    write_parquet_atomic,
)
from winnow.pipeline.stage import Context, ShardRef, Stage, bytes_removed_column, created_rows

REJECTED = "rejected"
REMOVED = "removed"
log = logging.getLogger(__name__)


@dataclass
class StageResult:
    dirname: str
    records: list[ShardRecord]
    skipped: int
    fit_seconds: float
    seconds: float
    outputs: list[ShardRef]
    redone: bool = True   # fitted or ran a shard in this run (False: every output was up to date)


class PeakRSS:
    """The peak resident memory of this process while the block runs, sampled by a daemon thread
    (psutil; 0 where it is missing). The RSS at entry and exit are samples too."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        try:
            import psutil

            self._process = psutil.Process()
        except ImportError:
            return self
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="winnow-peak-rss")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self._sample()


def run_shard(stage: Stage, state: Any, ref: ShardRef, stage_dir: str, config_hash: str,
              input_fingerprint: str, write_removed: bool = False, remote: RemoteOutput | None = None) -> ShardRecord:
    """One Dask task: load → apply → check conservation → write kept, rejected, removed, marker (in
    that order). With `remote` (an output on an object store) each file is also put under its final
    name there, and the marker last: on the store, too, the marker is the commit."""
    with PeakRSS() as rss:
        record = _run_shard(stage, state, ref, stage_dir, config_hash, input_fingerprint, write_removed)
        record.peak_rss = rss.peak
        if remote is not None:
            remote.publish_shard(stage_dir, ref.name)
        inject("before_marker", stage_dir, ref.name)
        record.save(stage_dir)
        if remote is not None:
            remote.commit_shard(stage_dir, ref.name)
    return record


def _run_shard(stage: Stage, state: Any, ref: ShardRef, stage_dir: str, config_hash: str,
               input_fingerprint: str, write_removed: bool) -> ShardRecord:
    t0 = time.perf_counter()
    inject("before_apply", stage_dir, ref.name)
    try:
        data = stage.load(ref)
        out = stage.apply(data, state)
        kept, rejected, removed = out if len(out) == 3 else (*out, None)
    except WinnowError:
        raise
    except Exception as e:
        raise ShardError(f"{type(e).__name__}: {e}", stage=stage.name, shard=ref.path) from e
    documents = stage.documents_in(kept)
    # rows this stage created (synthetic rewrites), kept or rejected: rows in + added = kept + rejected.
    # Rewrites an earlier stage made are input rows here; a stage that drops the `synthetic` column
    # (pack) turns them into documents like any other.
    kept_synthetic, rejected_synthetic = created_rows(kept), created_rows(rejected)
    carries = "synthetic" in kept.column_names or "synthetic" in rejected.column_names
    inherited = created_rows(data) if isinstance(data, pa.Table) and carries else 0
    if isinstance(data, pa.Table):
        rows_in, bytes_in = data.num_rows, text_bytes(data)
    else:  # a source stage (ingest) reads raw records: each one ends up kept or rejected
        rows_in = documents + rejected.num_rows - rejected_synthetic
        bytes_in = text_bytes(kept) + text_bytes(rejected)
    stats = {k: float(v) for k, v in stage.shard_stats(data, kept, rejected).items()}
    record = ShardRecord(
        shard=ref.name, rows_in=rows_in, kept=documents + kept_synthetic, rejected=rejected.num_rows,
        added=kept_synthetic + rejected_synthetic - inherited, rows_out=kept.num_rows,
        bytes_in=bytes_in, bytes_kept=text_bytes(kept), bytes_rejected=text_bytes(rejected),
        reasons=dict(Counter(rejected.column("reason").to_pylist())) if rejected.num_rows else {},
        config_hash=config_hash, input_fingerprint=input_fingerprint,
        flops=float(stage.flops(data)) + stats.pop("flops", 0.0), stats=stats,
    )
    if not record.conserved():
        raise ShardError(f"conservation broken: {rows_in} in (+{record.added} added) != "
                         f"{kept.num_rows} kept + {rejected.num_rows} rejected", stage=stage.name, shard=ref.path)
    _account_bytes(stage, record, data, kept, rejected, removed, ref)
    ShardRecord.remove(stage_dir, ref.name)  # from here on the old marker would vouch for new files
    target = kept_path(stage_dir, ref.name)
    if kept.num_rows:
        record.output_fingerprint = write_parquet_atomic(kept, target)
    else:  # no file for an empty shard: `datasets` cannot read a Parquet file without rows
        target.unlink(missing_ok=True)
        record.output_fingerprint = "empty"
    inject("after_kept", stage_dir, ref.name)
    record.rejected_fingerprint = write_parquet_atomic(rejected, rejected_path(stage_dir, ref.name))
    if write_removed and removed is not None:
        record.removed_fingerprint = write_parquet_atomic(removed, removed_path(stage_dir, ref.name))
        record.removed_rows = removed.num_rows
    else:  # a file from an earlier run with outputs.removed would describe other cuts
        removed_path(stage_dir, ref.name).unlink(missing_ok=True)
    record.seconds = round(time.perf_counter() - t0, 4)
    return record


def _account_bytes(stage: Stage, record: ShardRecord, data: Any, kept: pa.Table, rejected: pa.Table,
                   removed: pa.Table | None, ref: ShardRef) -> None:
    """Fill bytes_added, bytes_removed and removed-by-reason and check the byte rule (module docstring)."""
    def created_bytes(t: pa.Table) -> int:
        if "synthetic" not in t.column_names or t.num_rows == 0:
            return 0
        import pyarrow.compute as pc

        return text_bytes(t.filter(pc.fill_null(t.column("synthetic"), False)))

    if record.added:
        inherited = created_bytes(data) if isinstance(data, pa.Table) else 0
        record.bytes_added = created_bytes(kept) + created_bytes(rejected) - inherited
    if removed is not None and removed.num_rows:
        import pyarrow.compute as pc

        record.bytes_removed = int(pc.sum(removed.column("bytes")).as_py() or 0)
        grouped = removed.group_by("reason").aggregate([("bytes", "sum")]).to_pylist()
        record.removed = {g["reason"]: int(g["bytes_sum"]) for g in sorted(grouped, key=lambda g: g["reason"])}
        column = bytes_removed_column(stage.name)
        per_row = int(pc.sum(kept.column(column)).as_py() or 0) if column in kept.column_names else 0
        if per_row != record.bytes_removed:
            raise ShardError(f"kept rows' {column} sum to {per_row:,}, its removed pieces to "
                             f"{record.bytes_removed:,}", stage=stage.name, shard=ref.path)
    if kept.num_rows and "text" not in kept.column_names:  # token rows: the documents in another form
        record.bytes_kept = record.bytes_in + record.bytes_added - record.bytes_rejected - record.bytes_removed
    if not record.bytes_conserved():
        raise ShardError(f"byte conservation broken: {record.bytes_in:,} in (+{record.bytes_added:,} added) != "
                         f"{record.bytes_kept:,} kept + {record.bytes_rejected:,} rejected + "
                         f"{record.bytes_removed:,} removed: a stage changed text without declaring the cut "
                         "(Stage.split_edited), or rejected rows do not hold the text they came in with",
                         stage=stage.name, shard=ref.path)


def _size_kb(ref: ShardRef) -> int:
    """Largest shards first (Dask runs higher priority first): the last task to finish is a small one."""
    try:
        return os.path.getsize(ref.path) // 1024
    except OSError:
        return 0


class Engine:
    """Runs stages over shards on a Dask client. Verbs: `run_stage`, `run`."""

    def __init__(self, client: Any, out_dir: str | Path, seed: int = 0, force: bool = False,
                 retries: int = 2, progress: bool = True, console: Any = None, write_removed: bool = False,
                 remote: RemoteOutput | None = None):
        self.client, self.out_dir, self.seed = client, Path(out_dir), seed
        self.remote = remote  # an output on an object store: out_dir is its local working copy
        self.write_removed = write_removed  # outputs.removed: text-editing stages write removed/
        self.force, self.retries, self.progress, self.console = force, retries, progress, console
        # in task keys: a rerun on the same client (a long-lived scheduler) must not be handed the
        # result, or the error, that the scheduler still holds for an earlier run's identical key
        self.run_token = secrets.token_hex(4)

    def run(self, stages: list[tuple[str, Stage, dict]]) -> list[StageResult]:
        """Run (dirname, stage, params-as-dict) in order; each stage reads the previous one's kept shards."""
        upstream: list[ShardRef] = []
        results = []
        for dirname, stage, params in stages:
            result = self.run_stage(dirname, stage, params, upstream)
            results.append(result)
            upstream = result.outputs
        return results

    def run_stage(self, dirname: str, stage: Stage, params: dict, upstream: list[ShardRef]) -> StageResult:
        t_stage = time.perf_counter()
        stage_dir = self.out_dir / dirname
        stage_dir.mkdir(parents=True, exist_ok=True)
        config_hash = stable_hash({"stage": stage.name, "version": stage.version, "params": params,
                                   "seed": self.seed})
        ctx = Context(client=self.client, seed=self.seed, workdir=str(stage_dir / "_fit"), force=self.force)
        shards = stage.inputs(upstream, ctx)

        t_fit = time.perf_counter()
        state, fitted = self._fit(stage, shards, ctx, config_hash, stage_dir)
        fit_seconds = time.perf_counter() - t_fit

        records: dict[str, ShardRecord] = {}
        todo = []
        whole_state = None if type(stage).shard_state is not Stage.shard_state else state_digest(state)
        for ref in shards:
            if type(stage).fit is Stage.fit:  # no global pass: a shard depends on itself and the config only
                input_fp = stable_hash([ref.fingerprint, config_hash])
            else:
                part = whole_state or state_digest(stage.shard_state(state, ref))
                input_fp = stable_hash([ref.fingerprint, config_hash, part])
            done = None if self.force else ShardRecord.load(stage_dir, ref.name)
            want_removed = self.write_removed and stage.edits_text
            if (done and done.config_hash == config_hash and done.input_fingerprint == input_fp
                    and done.conserved() and done.bytes_conserved()   # a marker that breaks a rule is redone
                    and outputs_intact(done, stage_dir) and (done.removed_fingerprint or not want_removed)):
                records[ref.name] = done
            else:
                todo.append((ref, input_fp))
        skipped = len(records)
        self._remove_stale(stage_dir, {ref.name for ref in shards})

        records.update(self._execute(dirname, stage, state, todo, stage_dir, config_hash, len(shards), skipped))
        self._remove_temp_files(stage_dir)  # a worker killed mid-write leaves its temp file behind
        ordered = [records[ref.name] for ref in shards]
        broken = [r.shard for r in ordered if not r.conserved()]
        if broken:
            raise ShardError("conservation broken", stage=stage.name, shard=",".join(broken))
        seconds = time.perf_counter() - t_stage
        if fitted or todo or not manifest_describes(stage_dir, config_hash, ordered):
            write_manifest(stage_dir, stage.name, config_hash, params, ordered, fit_seconds,
                           extra={"skipped_shards": skipped, "wall_seconds": round(seconds, 3),
                                  "driver_peak_rss": driver_peak_rss(), **stage.manifest_extra(state)})
        # else nothing was redone: the manifest goes on describing the run that made these outputs (its
        # timings, its memory), instead of a rerun's ~0 s in the funnel and the report
        if self.remote is not None:
            self.remote.publish_stage(stage_dir, {ref.name for ref in shards})
        outputs = [ShardRef(name=r.shard, path=str(kept_path(stage_dir, r.shard)),
                            fingerprint=r.output_fingerprint) for r in ordered if r.rows_out]
        return StageResult(dirname, ordered, skipped, fit_seconds, seconds, outputs, redone=bool(fitted or todo))

    def _fit(self, stage: Stage, shards: list[ShardRef], ctx: Context, config_hash: str,
             stage_dir: Path) -> tuple[Any, bool]:
        """(the stage's fitted state, whether it was fitted now rather than read from its cache)."""
        state_key = stable_hash([config_hash, [s.fingerprint for s in shards]])
        if type(stage).fit is Stage.fit:
            return None, False
        cache = stage_dir / "_fit" / f"state-{state_key}.pkl"
        if cache.exists() and not self.force:
            state = load_signed(cache)
            if state is not None:
                return state, False
        progress: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.console is not None and self.progress:
            self.console.print(f"[bold]{stage_dir.name}[/]: fit over {len(shards)} shards…")
            # a fit that runs long in a worker (meta-training) reports its progress: printed as it comes
            progress = fit_progress.shown(self.client, stage_dir, lambda text: self.console.print(
                f"{stage_dir.name}: {text}", highlight=False, soft_wrap=True))
        with progress:
            state = stage.fit(shards, ctx)
        save_signed(state, cache)
        inject("after_fit", stage_dir)
        return state, True

    def _execute(self, dirname: str, stage: Stage, state: Any, todo: list, stage_dir: Path,
                 config_hash: str, total: int, skipped: int) -> dict[str, ShardRecord]:
        from distributed import as_completed
        from distributed.client import FutureCancelledError

        if not todo:
            if self.console is not None and self.progress:
                self.console.print(f"[bold]{dirname}[/]: all {total} shards up to date, skipped")
            return {}
        # A state every shard shares is scattered once to all workers. Scattered data has no task to
        # recompute it from: when every worker holding it dies (the only worker, a one-job Slurm
        # allocation cancelled) the shards waiting on it are cancelled, so it is scattered again to the
        # replacement workers and those shards resubmitted (at most `retries` times).
        shared = state is not None and type(stage).shard_state is Stage.shard_state
        resources = stage.task_resources(Context(client=self.client, seed=self.seed, workdir=str(stage_dir / "_fit")))

        held = []   # the scattered state's futures, kept until the stage ends so the client holds them

        def submit(todo_now: list, attempt: int) -> dict:
            shared_state = self.client.scatter(state, broadcast=True) if shared else None
            held.append(shared_state)
            futures = {}
            for ref, input_fp in todo_now:
                shard_state = shared_state if shared else stage.shard_state(state, ref)
                key = f"{dirname}-{ref.name}-{input_fp}-{self.run_token}" + (f"-again{attempt}" if attempt else "")
                fut = self.client.submit(run_shard, stage, shard_state, ref, str(stage_dir), config_hash, input_fp,
                                         self.write_removed and stage.edits_text, self.remote, key=key,
                                         retries=self.retries, resources=resources, pure=False,
                                         priority=_size_kb(ref))
                futures[fut] = (ref, input_fp)
            return futures

        records: dict[str, ShardRecord] = {}
        errors: list[str] = []
        futures, attempt = submit(todo, 0), 0
        with self._progress(dirname, total, skipped) as advance:
            while futures:
                lost_state = []
                for fut in as_completed(futures):
                    ref, input_fp = futures[fut]
                    try:
                        record = fut.result()
                    except FutureCancelledError as e:
                        if shared and attempt < self.retries:
                            lost_state.append((ref, input_fp))
                            continue
                        errors.append(f"{ref.name} ({ref.path}): {e}")
                        advance(0)
                        continue
                    except Exception as e:  # other shards still finish and keep their markers
                        errors.append(f"{ref.name} ({ref.path}): {e}")
                        advance(0)
                        continue
                    records[ref.name] = record
                    advance(record.rows_in)
                attempt += 1
                futures = submit(lost_state, attempt) if lost_state else {}
        if errors:
            shown = "\n  ".join(errors[:5]) + (f"\n  … and {len(errors) - 5} more" if len(errors) > 5 else "")
            raise ShardError(f"{len(errors)} shard(s) failed; finished shards are kept for resume:\n  {shown}",
                             stage=stage.name, shard=errors[0].split(" ", 1)[0])
        return records

    @contextlib.contextmanager
    def _progress(self, dirname: str, total: int, skipped: int):
        """Per stage: a live bar (shards done/total, rows/s, elapsed, ETA) on a terminal; on a pipe or
        a log file, a plain line every 10% of the shards or 10 s, whichever comes first."""
        if not self.progress:
            yield lambda rows: None
            return
        t0 = time.perf_counter()
        rows, done = [0], [skipped]

        def rate() -> float:
            return rows[0] / max(time.perf_counter() - t0, 1e-9)

        if not getattr(self.console, "is_terminal", False):
            last = [t0, skipped]

            def line(n_rows: int) -> None:
                rows[0] += n_rows
                done[0] += 1
                now = time.perf_counter()
                if done[0] < total and now - last[0] < 10 and done[0] - last[1] < max(1, total // 10):
                    return
                last[:] = [now, done[0]]
                worked = done[0] - skipped
                eta = (now - t0) / worked * (total - done[0]) if worked else 0.0
                self.console.print(f"{dirname}: {done[0]}/{total} shards, {rate():,.0f} rows/s, "
                                   f"{now - t0:.0f} s elapsed, ETA {eta:.0f} s", highlight=False)

            yield line
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("shards  {task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                      TimeRemainingColumn(), console=self.console, transient=False) as bar:
            task = bar.add_task(dirname, total=total, completed=skipped, rate="")

            def advance(n_rows: int) -> None:
                rows[0] += n_rows
                bar.update(task, advance=1, rate=f"{rate():,.0f} rows/s")

            yield advance

    @staticmethod
    def _remove_temp_files(stage_dir: Path) -> None:
        for tmp in stage_dir.rglob(TEMP_GLOB):
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _remove_stale(stage_dir: Path, names: set[str]) -> None:
        """Shards of an earlier run that the current input no longer has, and temporary files
        a killed run left half-written."""
        Engine._remove_temp_files(stage_dir)
        for folder, pattern in ((stage_dir, "train-*.parquet"), (stage_dir / REJECTED, "part-*.parquet"),
                                (stage_dir / REMOVED, "part-*.parquet"), (stage_dir / SHARDS_DIR, "part-*.json")):
            for path in folder.glob(pattern):
                if "part-" + path.name.split(".")[0].split("-", 1)[1] not in names:
                    path.unlink()


def outputs_intact(record: ShardRecord, stage_dir: str | Path) -> bool:
    """The shard's files are the ones its marker describes: same content hashes (a truncated,
    corrupted or foreign file is redone, never taken as complete)."""
    rejected = rejected_path(stage_dir, record.shard)
    kept = kept_path(stage_dir, record.shard)
    try:
        if not record.rejected_fingerprint or file_hash(rejected) != record.rejected_fingerprint:
            return False
        if record.removed_fingerprint and file_hash(removed_path(stage_dir, record.shard)) != \
                record.removed_fingerprint:
            return False
        if record.rows_out == 0:
            return not kept.exists()
        return file_hash(kept) == record.output_fingerprint
    except OSError:
        return False


def driver_peak_rss() -> int:
    """This process's peak RSS in bytes so far (getrusage; 0 where unavailable): read when a stage
    ends, it bounds what the driver needed up to and including that stage."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB
    except (ImportError, OSError):
        return 0


def state_digest(state: Any) -> str:
    """A content hash of (part of) a fitted state, equal for equal states in any process: sets are
    sorted first (a set of strings iterates in a per-process order). Anything else pickle cannot
    reproduce exactly costs a needless redo of the shard, never a wrong skip."""
    return hashlib.blake2b(pickle.dumps(_canonical(state), protocol=5), digest_size=16).hexdigest()


def _canonical(obj: Any) -> Any:
    import dataclasses

    import numpy as np

    if isinstance(obj, (set, frozenset)):
        return ("set", sorted((_canonical(v) for v in obj), key=repr))
    if isinstance(obj, dict):
        return ("dict", [(_canonical(k), _canonical(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [_canonical(v) for v in obj])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__qualname__, [(f.name, _canonical(getattr(obj, f.name))) for f in dataclasses.fields(obj)])
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return ("ndarray", obj.dtype.str, obj.shape, np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.shape, [_canonical(v) for v in obj.tolist()])
    return obj


SIGNATURE_BYTES = 32


def state_key_file() -> Path:
    """The HMAC key that signs fit states: `$WINNOW_STATE_KEY_FILE`, else under the winnow cache
    folder, created on first use (mode 0600). It lives outside every output folder, so whoever can
    write an output folder cannot forge a state that the next run would unpickle."""
    explicit = os.environ.get("WINNOW_STATE_KEY_FILE")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("WINNOW_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "winnow")
    return Path(cache) / "state.key"


def _state_key() -> bytes:
    path = state_key_file()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        return path.read_bytes()


def save_signed(state: Any, path: Path) -> None:
    data = pickle.dumps(state, protocol=5)
    write_bytes_atomic(hmac.new(_state_key(), data, hashlib.sha256).digest() + data, path)


def load_signed(path: Path) -> Any | None:
    """The state in `path` if this machine's key signed it, else None (the caller fits again)."""
    blob = path.read_bytes()
    signature, data = blob[:SIGNATURE_BYTES], blob[SIGNATURE_BYTES:]
    if not hmac.compare_digest(signature, hmac.new(_state_key(), data, hashlib.sha256).digest()):
        log.warning("%s is not signed by this machine's winnow key (%s): fitting again instead of "
                    "loading it", path, state_key_file())
        return None
    return pickle.loads(data)


def kept_files(stage_dir: str | Path) -> list[str]:
    return sorted(str(p) for p in Path(stage_dir).glob("train-*.parquet"))


__all__ = ["Engine", "run_shard", "kept_files"]
