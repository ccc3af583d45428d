"""`winnow verify`: re-check a finished run from its files alone, trusting nothing the run said.

The engine checks conservation and hashes while it runs; this reads the output folder afterwards
(after a crash, a copy, a fault-injection trial) and checks that every number and file still agrees:

1. every `NN-name/` stage folder has a `_manifest.json` (one without is an unfinished stage);
2. each shard marker `_shards/part-NNNNN.json`: its kept file exists iff rows_out > 0 and hashes to
   output_fingerprint, its rejected file exists and hashes to rejected_fingerprint, rows in + added
   = kept + rejected, bytes in + added = kept + rejected + removed (engine.py's byte rule), the
   removed bytes by reason sum to bytes_removed, a removed file (`outputs.removed`) exists and
   hashes to removed_fingerprint, and the files hold rows_out / rejected / removed_rows rows
   (Parquet footers only);
3. the manifest: totals, reasons and removed_reasons are the sums of its shard records (peak_rss:
   the max), its records are the markers,
   and no kept or rejected file lacks a marker (hidden `.*.tmp-*` files are reported as leftovers);
4. chaining: a stage's shards are the previous stage's non-empty kept shards, and each shard's
   rows_in is the rows_out it read (ingest reads raw input: not checked);
5. ids are unique within each stage's kept data (packed rows have no `id` column: skipped);
6. the run's other outputs: `_run.json`, `dataset/` (the rows of the stage `_run.json` names as
   dataset_stage: the last document stage), a tokenize stage's `tokenizer.json`, and the `packed/`,
   `tokens/` and `megatron/` files a packed run writes (sizes and counts against the manifests).

`verify_run(out_dir)` gives the problems as data (the fault-injection script calls it after every
trial); `verify(out_dir)` also gives the counts and notes the CLI prints.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from winnow.pipeline.manifest import MANIFEST, SHARDS_DIR, ShardRecord
from winnow.pipeline.shards import TEMP_GLOB, file_hash, kept_path, rejected_path, removed_path
from winnow.pipeline.stage import Stage

STAGE_DIR = re.compile(r"^(\d+)-(.+)$")
RECORD_FIELDS = {f.name for f in fields(ShardRecord)}
MAX_LISTED = 20                 # duplicate ids named one by one; the rest are counted
# files hashed at once: file reads release the GIL, so one file is read while another is hashed
HASH_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run's files.

    stage: the stage folder (`02-exact_dedup`), "" for run-level files; path: the file or folder
    concerned, relative to the output folder; what: one sentence; kind: a short tag for scripts
    (unfinished, missing, checksum, count, conservation, marker, manifest, totals, stray, leftover,
    chain, duplicate_id, id, run, dataset, tokens, megatron, tokenizer, unreadable).
    """

    stage: str
    path: str
    what: str
    kind: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass
class Verification:
    """What `verify` found: problems (empty when the run is intact), notes, and what it covered."""

    out_dir: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stages: int = 0     # stage folders checked
    shards: int = 0     # shard markers checked (one per shard per stage)
    rows: int = 0       # rows counted in kept and rejected files

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        status = "OK" if self.ok else f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        return f"verified {self.stages} stages, {self.shards:,} shards, {self.rows:,} rows: {status}"

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "ok": self.ok, "stages": self.stages, "shards": self.shards,
                "rows": self.rows, "problems": [asdict(p) for p in self.problems], "notes": self.notes}


def verify_run(out_dir: str | Path, partial: bool = False) -> list[Problem]:
    """Every problem with the run in `out_dir` (see the module docstring); [] when it is intact."""
    return verify(out_dir, partial=partial).problems


def verify(out_dir: str | Path, partial: bool = False) -> Verification:
    """Check the run in `out_dir`. `partial`: the run was stopped on purpose (a kill in a fault
    trial): a stage it was clearly stopped in, and the missing run-level files, become notes, not
    problems; the markers such a stage has written are still checked against their files."""
    return _Verifier(Path(out_dir), partial).run()


@dataclass
class _Stage:
    dirname: str
    index: int
    name: str
    path: Path
    manifest: dict | None = None
    records: dict[str, ShardRecord] = field(default_factory=dict)  # from the manifest when finished
    finished: bool = False


class _Verifier:
    def __init__(self, out: Path, partial: bool):
        self.out, self.partial = out, partial
        self.result = Verification(out)
        self.digests: dict[Path, str | OSError] = {}   # a stage's files, hashed side by side before its checks

    # ------------------------------------------------------------------ reporting
    def problem(self, stage: str, path: Path | str, what: str, kind: str) -> None:
        self.result.problems.append(Problem(stage, self.rel(path), what, kind))

    def problem_or_note(self, stage: str, path: Path | str, what: str, kind: str) -> None:
        """A problem, or in partial mode (the run was stopped on purpose) a note."""
        if self.partial:
            self.result.notes.append(f"{self.rel(path)}: {what}")
        else:
            self.problem(stage, path, what, kind)

    def rel(self, path: Path | str) -> str:
        if Path(path) == self.out:
            return str(self.out)
        try:
            return str(Path(path).relative_to(self.out))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------------ the run
    def run(self) -> Verification:
        stages = self.stage_folders()
        if not stages:
            self.problem("", self.out, f"no stage folders (NN-name/ with {MANIFEST}): not a winnow output folder",
                         "missing")
            return self.result
        run_info = self.read_run_json()
        listed = set(run_info.get("stages", [])) if run_info else set()
        for i, st in enumerate(stages):
            self.result.stages += 1
            if not (st.path / MANIFEST).exists():
                later_finished = any((s.path / MANIFEST).exists() for s in stages[i + 1:])
                if not later_finished and st.dirname not in listed:
                    self.problem_or_note(st.dirname, st.path / MANIFEST,
                                         "missing: the run was stopped during this stage (no manifest, and no "
                                         "later stage finished); `winnow run` again to finish it", "unfinished")
                else:
                    self.problem(st.dirname, st.path / MANIFEST, "missing, though a later stage finished or "
                                 "_run.json lists this one: deleted or never written", "unfinished")
            self.check_stage(st)
        self.check_chain(stages)
        for st in stages:
            if st.finished:
                self.check_ids(st)
        if all(st.finished for st in stages):
            self.check_run_outputs(stages, run_info)
        else:
            self.result.notes.append("not every stage finished: _run.json, dataset/, tokens/ and megatron/ "
                                     "were not checked")
        return self.result

    def stage_folders(self) -> list[_Stage]:
        if not self.out.is_dir():
            return []
        found = []
        for path in sorted(p for p in self.out.iterdir() if p.is_dir()):
            m = STAGE_DIR.match(path.name)
            if m:
                found.append(_Stage(path.name, int(m.group(1)), m.group(2), path))
        found.sort(key=lambda s: (s.index, s.dirname))
        seen: dict[int, str] = {}
        for st in found:
            if st.index in seen:
                self.problem(st.dirname, st.path, f"two stage folders numbered {st.index:02d} ({seen[st.index]} "
                             "too): one is left from a run with another config", "stray")
            seen[st.index] = st.dirname
        missing = sorted(set(range(max(seen) + 1)) - set(seen)) if seen else []
        for index in missing:
            self.problem("", self.out, f"no stage folder numbered {index:02d} (the stages are numbered from 00 "
                         "in run order)", "missing")
        return found

    def read_run_json(self) -> dict | None:
        path = self.out / "_run.json"
        if not path.exists():
            return None
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            self.problem("", path, f"unreadable: {e}", "unreadable")
            return None
        if not isinstance(info, dict):
            self.problem("", path, "not a JSON object", "unreadable")
            return None
        return info

    # ------------------------------------------------------------------ one stage
    def check_stage(self, st: _Stage) -> None:
        markers = self.read_markers(st)
        self.hash_files([path for r in markers.values()
                         for path in (kept_path(st.path, r.shard), rejected_path(st.path, r.shard),
                                      removed_path(st.path, r.shard))])
        for record in markers.values():
            self.check_shard(st, record)
        self.digests.clear()
        self.result.shards += len(markers)
        manifest_path = st.path / MANIFEST
        if not manifest_path.exists():
            return
        try:
            st.manifest = json.loads(manifest_path.read_text())
            records = {s["shard"]: ShardRecord(**{k: v for k, v in s.items() if k in RECORD_FIELDS})
                       for s in st.manifest["shards"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.problem(st.dirname, manifest_path, f"unreadable: {type(e).__name__}: {e}", "unreadable")
            st.manifest = None
            return
        st.records = records
        stale = self.compare_manifest(st, markers)
        st.finished = not stale
        if st.finished:
            self.check_totals(st)
            self.check_strays(st, markers)
            if st.manifest.get("stage") != st.name:
                self.problem(st.dirname, manifest_path, f"names stage {st.manifest.get('stage')!r}, but the "
                             f"folder is {st.dirname}", "manifest")
            for path, what, kind in stage_class(st.name).check_outputs(st.path, st.manifest):
                self.problem(st.dirname, path, what, kind)

    def read_markers(self, st: _Stage) -> dict[str, ShardRecord]:
        markers = {}
        for path in sorted((st.path / SHARDS_DIR).glob("part-*.json")):
            try:
                data = json.loads(path.read_text())
                record = ShardRecord(**{k: v for k, v in data.items() if k in RECORD_FIELDS})
            except (OSError, ValueError, TypeError) as e:
                self.problem(st.dirname, path, f"unreadable marker: {type(e).__name__}: {e}", "unreadable")
                continue
            if record.shard != path.stem:
                self.problem(st.dirname, path, f"marker of shard {record.shard!r} under the name {path.name}",
                             "marker")
                continue
            markers[record.shard] = record
        return markers

    def check_shard(self, st: _Stage, r: ShardRecord) -> None:
        """One marker against its files: hashes, row counts (Parquet footers), conservation."""
        marker = st.path / SHARDS_DIR / f"{r.shard}.json"
        if not r.conserved():
            self.problem(st.dirname, marker, f"conservation broken: rows_in {r.rows_in:,} + added {r.added:,} != "
                         f"kept {r.kept:,} + rejected {r.rejected:,}", "conservation")
        if not r.bytes_conserved():
            self.problem(st.dirname, marker, f"byte conservation broken: bytes_in {r.bytes_in:,} + bytes_added "
                         f"{r.bytes_added:,} != bytes_kept {r.bytes_kept:,} + bytes_rejected {r.bytes_rejected:,} + "
                         f"bytes_removed {r.bytes_removed:,}", "conservation")
        if sum(r.removed.values()) != r.bytes_removed:
            self.problem(st.dirname, marker, f"removed bytes by reason sum to {sum(r.removed.values()):,}, "
                         f"bytes_removed is {r.bytes_removed:,}", "conservation")
        if r.removed_fingerprint:
            self.check_file(st, removed_path(st.path, r.shard), r.removed_fingerprint, r.removed_rows,
                            "removed_fingerprint", "removed_rows", marker)
        elif removed_path(st.path, r.shard).exists():
            self.problem(st.dirname, removed_path(st.path, r.shard), f"exists, but its marker {self.rel(marker)} "
                         "vouches for no removed file", "stray")
        kept = kept_path(st.path, r.shard)
        if r.rows_out > 0:
            self.check_file(st, kept, r.output_fingerprint, r.rows_out, "output_fingerprint", "rows_out", marker)
        elif kept.exists():
            self.problem(st.dirname, kept, f"exists, but its marker {self.rel(marker)} says the shard kept no rows "
                         "(rows_out 0)", "stray")
        self.check_file(st, rejected_path(st.path, r.shard), r.rejected_fingerprint, r.rejected,
                        "rejected_fingerprint", "rejected", marker)

    def hash_files(self, paths: list[Path]) -> None:
        """The content hash of each of `paths` that exists (or the error reading it), in `self.digests`."""
        def digest(path: Path) -> str | OSError:
            try:
                return file_hash(path)
            except OSError as e:
                return e

        present = [p for p in paths if p.exists()]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            self.digests.update(zip(present, pool.map(digest, present), strict=True))

    def check_file(self, st: _Stage, path: Path, fingerprint: str, rows: int, fp_field: str, rows_field: str,
                   marker: Path) -> None:
        if not path.exists():
            self.problem(st.dirname, path, f"missing; its marker {self.rel(marker)} says it holds {rows:,} rows",
                         "missing")
            return
        digest = self.digests.get(path)
        if digest is None:
            try:
                digest = file_hash(path)
            except OSError as e:
                digest = e
        if isinstance(digest, OSError):
            self.problem(st.dirname, path, f"unreadable: {digest}", "unreadable")
            return
        if digest != fingerprint:
            self.problem(st.dirname, path, f"content hash {digest} is not the marker's {fp_field} {fingerprint} "
                         f"({self.rel(marker)}): the file changed after it was written", "checksum")
        import pyarrow.parquet as pq

        try:
            n = pq.ParquetFile(path).metadata.num_rows  # the footer only: cheap on any size
        except Exception as e:  # any reader error means an unreadable file
            self.problem(st.dirname, path, f"not a readable Parquet file: {type(e).__name__}: {e}", "unreadable")
            return
        self.result.rows += n
        if n != rows:
            self.problem(st.dirname, path, f"holds {n:,} rows; its marker {self.rel(marker)} says {rows_field} "
                         f"{rows:,}", "count")

    def compare_manifest(self, st: _Stage, markers: dict[str, ShardRecord]) -> bool:
        """The manifest's records are the markers. True (only with `partial`) when the manifest is
        stale: it disagrees with markers written after it (the stage ran again and was stopped)."""
        manifest = st.path / MANIFEST
        differ: list[tuple[Path, str, str]] = []
        for name in sorted(set(st.records) | set(markers)):
            marker = st.path / SHARDS_DIR / f"{name}.json"
            if name not in markers:
                differ.append((marker, f"missing; {MANIFEST} lists shard {name}", "missing"))
            elif name not in st.records:
                differ.append((marker, f"shard {name} is not in {MANIFEST}", "manifest"))
            else:
                a, b = asdict(markers[name]), asdict(st.records[name])
                changed = [k for k in a if a[k] != b[k]]
                if changed:
                    shown = ", ".join(f"{k} {a[k]!r} vs {b[k]!r}" for k in changed[:4])
                    differ.append((marker, f"disagrees with {MANIFEST} on {shown}", "manifest"))
        if not differ:
            return False
        newest = max((p.stat().st_mtime_ns for p in (st.path / SHARDS_DIR).glob("part-*.json")), default=0)
        rerun = newest > manifest.stat().st_mtime_ns  # markers newer than the manifest that differ from it
        if rerun and self.partial:
            self.result.notes.append(f"{self.rel(manifest)}: stale: {len(differ)} shard marker(s) differ from it "
                                     "and are newer; the stage ran again and was stopped before it finished")
            return True
        for path, what, kind in differ:
            self.problem(st.dirname, path, what, kind)
        if rerun:
            self.problem(st.dirname, manifest, f"older than the {len(differ)} marker(s) that differ from it: the "
                         "stage ran again and was stopped before it finished, or the markers were edited",
                         "unfinished")
        return False

    def check_totals(self, st: _Stage) -> None:
        m, path = st.manifest, st.path / MANIFEST
        records = list(st.records.values())
        for key, value in m.get("totals", {}).items():
            if key == "stats":
                expected: Any = Counter()
                for r in records:
                    expected.update(r.stats)
                bad = sorted(k for k in set(value) | set(expected)
                             if not _same(value.get(k, 0), expected.get(k, 0)))
                if bad:
                    self.problem(st.dirname, path, f"totals.stats {', '.join(bad[:4])} are not the sums over its "
                                 "shards", "totals")
            elif key in RECORD_FIELDS:
                values = [getattr(r, key) for r in records]
                expected = max(values, default=0) if key == "peak_rss" else sum(values)
                if not _same(value, expected):
                    self.problem(st.dirname, path, f"totals.{key} is {value:,}, the sum over its shards is "
                                 f"{expected:,}", "totals")
        reasons: Counter = Counter()
        for r in records:
            reasons.update(r.reasons)
        if dict(reasons) != {k: v for k, v in m.get("reasons", {}).items() if v}:
            self.problem(st.dirname, path, "reasons are not the sums of its shards' reasons", "totals")
        removed: Counter = Counter()
        for r in records:
            removed.update(r.removed)
        if {k: v for k, v in removed.items() if v} != {k: v for k, v in m.get("removed_reasons", {}).items() if v}:
            self.problem(st.dirname, path, "removed_reasons are not the sums of its shards' removed bytes",
                         "totals")

    def check_strays(self, st: _Stage, markers: dict[str, ShardRecord]) -> None:
        """Kept and rejected files no marker vouches for, and temporary files a write left behind."""
        for path in sorted(st.path.glob("train-*.parquet")):
            shard = "part-" + path.name.removeprefix("train-").removesuffix(".parquet")
            if shard not in markers:
                self.problem(st.dirname, path, f"kept file without a marker ({SHARDS_DIR}/{shard}.json)", "stray")
        for folder in ("rejected", "removed"):
            for path in sorted((st.path / folder).glob("*.parquet")):
                if path.stem not in markers:
                    self.problem(st.dirname, path, f"{folder} file without a marker ({SHARDS_DIR}/{path.stem}.json)",
                                 "stray")
        for path in sorted(st.path.rglob(TEMP_GLOB)):
            self.problem(st.dirname, path, "leftover temporary file of an interrupted write (the finished file "
                         "is intact; safe to delete)", "leftover")

    # ------------------------------------------------------------------ across stages
    def check_chain(self, stages: list[_Stage]) -> None:
        """Each stage read the previous stage's non-empty kept shards, all of them and nothing else."""
        for prev, st in zip(stages, stages[1:], strict=False):
            if not (prev.finished and st.finished):
                continue
            expected = {name: r.rows_out for name, r in prev.records.items() if r.rows_out > 0}
            for name in sorted(set(expected) - set(st.records)):
                self.problem(st.dirname, st.path / MANIFEST, f"no shard {name}, though {prev.dirname} kept "
                             f"{expected[name]:,} rows in it", "chain")
            for name in sorted(set(st.records) - set(expected)):
                self.problem(st.dirname, st.path / SHARDS_DIR / f"{name}.json", f"shard {name} has no kept rows "
                             f"in {prev.dirname} to read", "chain")
            for name in sorted(set(st.records) & set(expected)):
                if st.records[name].rows_in != expected[name]:
                    self.problem(st.dirname, st.path / SHARDS_DIR / f"{name}.json",
                                 f"rows_in {st.records[name].rows_in:,}, but {prev.dirname} kept "
                                 f"{expected[name]:,} rows in {kept_path(prev.path, name).name}", "chain")

    def check_ids(self, st: _Stage) -> None:
        """Ids unique among a stage's kept rows, read shard by shard (the `id` column only).

        Memory: 8 bytes per row (an xxh3-64 of each id in a numpy array), not the ids themselves: a
        Python set of 100M id strings would take ~10 GB, the hashes 0.8 GB. A repeated hash is then
        confirmed on the real ids, in the few shards that hold one (a collision is not a duplicate)."""
        import pyarrow.parquet as pq

        files = [kept_path(st.path, name) for name, r in sorted(st.records.items()) if r.rows_out > 0]
        files = [f for f in files if f.exists()]
        if not files:
            return
        try:
            if "id" not in pq.read_schema(files[0]).names:
                self.result.notes.append(f"{st.dirname}: no `id` column (packed rows), ids not checked")
                return
            hashes = [_id_hashes(_read_ids(f)) for f in files]
        except Exception as e:  # a file the other checks found damaged
            self.problem(st.dirname, st.path, f"could not read the `id` column of every kept file: "
                         f"{type(e).__name__}: {e}", "unreadable")
            return
        nulls = [(f, int(np.count_nonzero(h[1]))) for f, h in zip(files, hashes, strict=True) if h[1].any()]
        for f, n in nulls:
            self.problem(st.dirname, f, f"{n:,} kept rows have no id", "id")
        flat = np.sort(np.concatenate([h[0][~h[1]] for h in hashes]))
        repeated = np.unique(flat[1:][flat[1:] == flat[:-1]])
        del flat
        if not len(repeated):
            return
        where: dict[str, list[str]] = {}
        for f, (h, null) in zip(files, hashes, strict=True):
            rows = np.flatnonzero(np.isin(h, repeated) & ~null)
            if len(rows):
                ids = _read_ids(f).take(rows).to_pylist()
                for value in ids:
                    where.setdefault(value, []).append(f.name)
        dups = {k: v for k, v in where.items() if len(v) > 1}
        for value, names in list(dups.items())[:MAX_LISTED]:
            counts = Counter(names)
            shown = ", ".join(f"{n} ({c}x)" if c > 1 else n for n, c in counts.items())
            path = files[[f.name for f in files].index(names[0])]
            self.problem(st.dirname, path, f"id {value!r} is kept {len(names)} times: {shown}", "duplicate_id")
        if len(dups) > MAX_LISTED:
            self.problem(st.dirname, st.path, f"… and {len(dups) - MAX_LISTED:,} more duplicated ids",
                         "duplicate_id")

    # ------------------------------------------------------------------ run-level outputs
    def check_run_outputs(self, stages: list[_Stage], run_info: dict | None) -> None:
        final = stages[-1]
        fingerprints = [r.output_fingerprint for r in final.records.values()]
        run_json = self.out / "_run.json"
        leftovers = [*self.out.glob(TEMP_GLOB), *self.out.glob(".dataset-*"),
                     *(p for d in ("tokens", "megatron", "dataset", "packed") for p in (self.out / d).glob(".*.tmp*"))]
        for path in sorted(leftovers):
            self.problem("", path, "leftover temporary file of an interrupted write (safe to delete)", "leftover")
        if run_info is None:
            if not run_json.exists():
                self.problem_or_note("", run_json, "missing: every stage finished, but the run stopped before its "
                                     "end (while writing dataset/ or the token files?)", "run")
            return
        names = [st.dirname for st in stages]
        if run_info.get("stages") != names:
            self.problem("", run_json, f"lists stages {run_info.get('stages')}, the folders are {names}", "run")
        if run_info.get("final_stage") != final.dirname:
            self.problem("", run_json, f"final_stage {run_info.get('final_stage')!r}, the last stage folder is "
                         f"{final.dirname}", "run")
        elif run_info.get("final_fingerprints") != fingerprints:
            self.problem("", run_json, f"final_fingerprints are not those of {final.dirname}/{MANIFEST}: the stage "
                         "changed after the run ended", "run")
        outputs = self.configured_outputs()
        documents = self.dataset_stage(stages, run_info, run_json)
        if documents is not None:
            self.check_dataset(documents, [r.output_fingerprint for r in documents.records.values()],
                               outputs.get("dataset", True), "dataset")
        if final.records and _packed(final):
            self.check_dataset(final, fingerprints, outputs.get("dataset", True), "packed")
            rows = sum(r.rows_out for r in final.records.values())
            documents = sum(r.kept for r in final.records.values())
            for path, what, kind in stage_class(final.name).check_run_outputs(self.out, final.path, rows, documents,
                                                                             outputs):
                self.problem("", path, what, kind)

    def dataset_stage(self, stages: list[_Stage], run_info: dict, run_json: Path) -> _Stage | None:
        """The stage `dataset/` holds: `_run.json`'s dataset_stage (the final stage in runs written
        before it was recorded), which must be the last stage whose kept rows are documents."""
        name = run_info.get("dataset_stage", stages[-1].dirname)
        by_name = {st.dirname: st for st in stages}
        if name not in by_name:
            self.problem("", run_json, f"dataset_stage {name!r} is not a stage folder", "run")
            return None
        documents = [st for st in stages if not (st.records and _packed(st))]
        if documents and documents[-1].dirname != name:
            self.problem("", run_json, f"dataset_stage {name!r}, but the last stage whose rows are documents is "
                         f"{documents[-1].dirname}", "run")
        st = by_name[name]
        fingerprints = [r.output_fingerprint for r in st.records.values()]
        if "dataset_fingerprints" in run_info and run_info["dataset_fingerprints"] != fingerprints:
            self.problem("", run_json, f"dataset_fingerprints are not those of {name}/{MANIFEST}: the stage "
                         "changed after the run ended", "run")
        return st

    def configured_outputs(self) -> dict:
        path = self.out / "config.resolved.yaml"
        try:
            import yaml

            return dict(yaml.safe_load(path.read_text()).get("outputs") or {})
        except (OSError, ValueError, AttributeError) as e:
            self.problem("", path, f"missing or unreadable ({type(e).__name__}); which outputs the run wrote is "
                         "unknown, all are checked", "run")
            return {}

    def check_dataset(self, final: _Stage, fingerprints: list[str], wanted: bool, name: str) -> None:
        """`dataset/` (documents) or `packed/` (packed rows) against the stage it was made from."""
        folder = self.out / name
        if not folder.exists():
            if wanted:
                self.problem("", folder, "missing, though the config asks for it (outputs.dataset)", "dataset")
            return
        from winnow.pipeline.config import stable_hash

        source = folder / "_winnow_source.json"
        try:
            info = json.loads(source.read_text())
            state = json.loads((folder / "state.json").read_text())
            rows = _arrow_rows([folder / f["filename"] for f in state["_data_files"]])
        except Exception as e:  # any read error means a damaged dataset folder
            self.problem("", folder, f"unreadable: {type(e).__name__}: {e}", "dataset")
            return
        if info.get("key") != stable_hash(fingerprints) or info.get("stage") != final.dirname:
            self.problem("", source, f"was not made from the current {final.dirname} shards", "dataset")
        expected = sum(r.rows_out for r in final.records.values())
        if rows != expected:
            self.problem("", folder, f"holds {rows:,} rows; {final.dirname} kept {expected:,}", "dataset")

def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, (int, float)) else repr(v)


def _same(a: Any, b: Any) -> bool:
    """Equal counts; floats (seconds, FLOPs) summed in another order may differ in the last bits."""
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, int):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def _read_ids(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["id"]).column("id").combine_chunks()
    return ids if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) else pc.cast(ids, pa.string())


def _id_hashes(ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """(xxh3-64 of each id, which ids are null)."""
    import xxhash

    values = ids.to_pylist()
    null = np.fromiter((v is None for v in values), bool, count=len(values))
    hashes = np.fromiter((0 if v is None else xxhash.xxh3_64_intdigest(v) for v in values), np.uint64,
                         count=len(values))
    return hashes, null


def _arrow_rows(files: list[Path]) -> int:
    """Rows in `datasets` Arrow stream files, memory-mapped (batch headers only, no copy)."""
    import pyarrow as pa

    total = 0
    for path in files:
        with pa.memory_map(str(path)) as source:
            total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    return total


def stage_class(name: str) -> type[Stage]:
    """The class of the stage a folder was written by (the base class for ingest and for stages this
    installation does not know: their own checks are then skipped, the generic ones still run)."""
    from winnow.pipeline.registry import STAGES, get_stage_class

    return get_stage_class(name) if name in STAGES else Stage


def _packed(st: _Stage) -> bool:
    """The stage's kept rows are packed token rows, not documents (the stage class says so)."""
    return not stage_class(st.name).emits_documents
