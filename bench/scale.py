"""How winnow's cost grows with the corpus: a seeded N-document corpus through the CPU pipeline.

    python bench/scale.py --docs 250000 [--workers 2] [--work /tmp/winnow-scale] [--keep]

The corpus: every paragraph (8+ words) of ../shared/data/web and ../shared/data/reference, each
document 3-7 paragraphs drawn at random (seeded), so N documents are distinct; a planted share are
near-duplicates of an earlier document (one word in ~60 replaced: 5-gram Jaccard about 0.85, where
the default 14x8 LSH finds a pair with probability ~0.97) and a smaller share exact copies of one
(other id). Each record carries `planted_group` (-1: none) so recall is read back from the output.
Written as gzipped JSONL shards of --docs-per-file documents under --work (outside the repository).

The run: `winnow run` on a config the bench writes (ingest, normalize, exact_dedup, minhash_dedup,
heuristics, tokenize, pack) with an embedded LocalCluster of --workers processes. The bench samples
the driver's RSS and every worker's every 0.2 s (psutil) and reads the run's own manifests
(`wall_seconds`, `fit_seconds`, per-shard `peak_rss`, `driver_peak_rss`). It prints docs/s end to
end, seconds per stage, peak RSS of the driver per stage (sampled while that stage's folder was the
newest) and of each worker, disk written, and the MinHash recall on the planted near-duplicates;
`--json FILE` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = ("web", "reference")
MAX_PARAGRAPHS = 7


def paragraphs(data: Path) -> list[str]:
    """Every distinct paragraph of 8+ words (under 3,000 characters) of the web and reference text, sorted."""
    found: set[str] = set()
    for source in SOURCES:
        for path in sorted((data / source).rglob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    for p in re.split(r"\n\s*\n", json.loads(line).get("text") or ""):
                        p = p.strip()
                        if len(p.split()) >= 8 and len(p) < 3000:
                            found.add(p)
    return sorted(found)


def perturb(text: str, rng: np.random.Generator, vocabulary: list[str], every: int = 60) -> str:
    """`text` with about one word in `every` replaced by a random word: a near-duplicate."""
    words = text.split(" ")
    n = max(1, len(words) // every)
    for i in rng.choice(len(words), size=min(n, len(words)), replace=False).tolist():
        words[i] = vocabulary[int(rng.integers(len(vocabulary)))]
    return " ".join(words)


def write_corpus(n_docs: int, folder: Path, seed: int, near_share: float, exact_share: float,
                 docs_per_file: int, data: Path = DATA) -> dict:
    """Write the corpus; returns what was planted (counts of near-duplicate and exact copies).

    A copy's `planted_group` is the number of the original it copies (the original's id is
    `d<that number>`; the original itself, written first, says -1)."""
    paras = paragraphs(data)
    vocabulary = sorted({w for p in paras[:2000] for w in p.split() if w.isalpha()})
    rng = np.random.default_rng(seed)
    recipe = np.full((n_docs, MAX_PARAGRAPHS), -1, np.int32)   # paragraph numbers: a document's text, rebuilt
    kind = np.zeros(n_docs, np.int8)                          # 0 original, 1 near copy, 2 exact copy
    groups: set[int] = set()

    def record(i: int) -> str:
        r, group = rng.random(), -1
        if i and r < near_share + exact_share:
            group = int(rng.integers(i))
            while kind[group] != 0:  # copy an original: a group's members are all copies of one document
                group = int(rng.integers(i))
            recipe[i], kind[i] = recipe[group], 1 if r < near_share else 2
            groups.add(group)
        else:
            k = int(rng.integers(3, MAX_PARAGRAPHS + 1))
            recipe[i, :k] = rng.choice(len(paras), size=k, replace=False)
        text = "\n\n".join(paras[p] for p in recipe[i] if p >= 0)
        if kind[i] == 1:
            text = perturb(text, np.random.default_rng([seed, i]), vocabulary)
        return json.dumps({"id": f"d{i:09d}", "text": text, "planted_group": group}) + "\n"

    folder.mkdir(parents=True, exist_ok=True)
    n_files = -(-n_docs // docs_per_file)
    for f in range(n_files):
        with gzip.open(folder / f"part-{f:05d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as out:
            for i in range(f * docs_per_file, min(n_docs, (f + 1) * docs_per_file)):
                out.write(record(i))
    return {"documents": n_docs, "files": n_files, "paragraph_pool": len(paras),
            "near_copies": int((kind == 1).sum()), "exact_copies": int((kind == 2).sum()), "groups": len(groups)}


CONFIG = """\
input:
  paths: ["{corpus}/*.jsonl.gz"]
output: {out}
seed: 0
engine: {{n_workers: {workers}}}
stages:
  - normalize: {{}}
  - exact_dedup: {{}}
  - minhash_dedup: {{ngram: 5, bands: 14, rows: 8}}
  - heuristics:
      gopher_quality: {{}}
      gopher_repetition: {{}}
      c4_quality: {{}}
      fineweb_quality: {{}}
  - tokenize: {{vocab_size: 8192}}
  - pack: {{seq_len: 2048}}
"""


class Sampler:
    """RSS of a process and of its descendants every `interval` s: the driver's peak per stage (the
    newest stage folder under `out` at the time) and each descendant's peak (Dask workers)."""

    def __init__(self, pid: int, out: Path, interval: float = 0.2):
        import psutil

        self.process, self.out, self.interval = psutil.Process(pid), out, interval
        self.driver_by_stage: dict[str, int] = {}
        self.cpu_by_stage: dict[str, float] = {}   # CPU seconds of the driver and workers: rates under load
        self.children: dict[int, tuple[str, int]] = {}
        self._cpu: dict[int, float] = {}
        self._cpu_total = 0.0
        self._dumped = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def dump(self) -> None:
        self._dumped = time.monotonic()
        samples = {"driver_by_stage": self.driver_by_stage, "cpu_by_stage": self.cpu_by_stage,
                   "workers": {str(pid): v for pid, v in self.children.items()}}
        (self.out.parent / "samples.json").write_text(json.dumps(samples, indent=1))

    def _stage(self) -> str:
        dirs = sorted(p.name for p in self.out.glob("[0-9][0-9]-*") if p.is_dir()) if self.out.exists() else []
        if not dirs:
            return "(start)"
        # a stage's manifest is written when it ends: after the last one, the run's finalize
        return f"after {dirs[-1]}" if (self.out / dirs[-1] / "_manifest.json").exists() else dirs[-1]

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(self.interval):
            try:
                rss = self.process.memory_info().rss
                kids = self.process.children(recursive=True)
            except psutil.Error:
                return
            stage = self._stage()
            self.driver_by_stage[stage] = max(self.driver_by_stage.get(stage, 0), rss)
            for proc in (self.process, *kids):
                try:
                    t = proc.cpu_times()
                    self._cpu[proc.pid] = t.user + t.system
                    if proc is not self.process:
                        name = " ".join(proc.cmdline()[-2:])[-60:]
                        self.children[proc.pid] = (name, max(self.children.get(proc.pid, ("", 0))[1],
                                                             proc.memory_info().rss))
                except psutil.Error:
                    continue
            if time.monotonic() - self._dumped > 10:  # a run killed before the end still leaves its samples
                self.dump()
            total = sum(self._cpu.values())
            self.cpu_by_stage[stage] = self.cpu_by_stage.get(stage, 0.0) + total - self._cpu_total
            self._cpu_total = total

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def recall(out: Path) -> dict:
    """MinHash's recall on the planted near-duplicates that reached it: of the planted groups' members
    in its input (an original and its copies), beyond one per group, the share it rejected as a
    duplicate of the same group; and how many it rejected outside the planted groups (chance
    near-duplicates among the real paragraphs: quoted Usenet posts, boilerplate)."""
    stage = next(out.glob("[0-9][0-9]-minhash_dedup"))
    before = sorted(out.glob("[0-9][0-9]-exact_dedup"))[0]
    group_of: dict[str, int] = {}    # planted copies only; an original's group is its own number
    per_group: dict[int, int] = {}
    originals: list[int] = []
    for path in sorted(before.glob("train-*.parquet")):
        t = pq.read_table(path, columns=["id", "planted_group"])
        g = np.asarray(t.column("planted_group"))
        for doc_id, grp in zip(np.asarray(t.column("id"))[g >= 0].tolist(), g[g >= 0].tolist(), strict=True):
            group_of[doc_id] = grp
            per_group[grp] = per_group.get(grp, 0) + 1
        originals += [int(i[1:]) for i in np.asarray(t.column("id"))[g < 0].tolist()]
    for number in originals:
        if number in per_group:
            per_group[number] += 1

    def group(doc_id: str) -> int:
        return group_of.get(doc_id, int(doc_id[1:]))

    wanted = sum(m - 1 for m in per_group.values())
    found = other = 0
    for path in sorted((stage / "rejected").glob("part-*.parquet")):
        t = pq.read_table(path, columns=["id", "dup_of"])
        for doc_id, dup_of in zip(t.column("id").to_pylist(), t.column("dup_of").to_pylist(), strict=True):
            if group(doc_id) in per_group and group(doc_id) == group(dup_of):
                found += 1
            else:
                other += 1
    return {"planted_pairs": wanted, "found": found, "recall": round(found / wanted, 4) if wanted else None,
            "rejected_outside_planted": other}


def stage_rows(out: Path, sampler: Sampler) -> list[dict]:
    rows = []
    for manifest in sorted(out.glob("[0-9][0-9]-*/_manifest.json")):
        m = json.loads(manifest.read_text())
        totals = m["totals"]
        shards = sorted(manifest.parent.glob("_shards/part-*.json"))
        peaks = [json.loads(p.read_text()).get("peak_rss", 0) for p in shards]
        rows.append({"stage": manifest.parent.name, "seconds": m.get("wall_seconds"),
                     "fit_seconds": round(m.get("fit_seconds") or 0, 2), "shards": len(shards),
                     "rows_in": totals.get("rows_in"), "kept": totals.get("kept"),
                     "worker_peak_rss_max": max(peaks, default=0),
                     "worker_peak_rss_median": int(np.median(peaks)) if peaks else 0,
                     "driver_peak_rss_so_far": m.get("driver_peak_rss"),
                     "driver_rss_sampled": sampler.driver_by_stage.get(manifest.parent.name, 0),
                     "cpu_seconds": round(sampler.cpu_by_stage.get(manifest.parent.name, 0.0), 1)})
    return rows


def stage_cpu(out: Path, n_shards: int = 3) -> list[dict]:
    """CPU seconds per 1,000 documents of each stage after ingest, in this process (`time.process_time`:
    a rate the machine's load does not inflate): `apply` on the first `n_shards` input shards of a
    finished run with its cached fit state, plus the fit's per-shard map for the dedup stages."""
    from winnow.filters.minhash_dedup import _bucket_map
    from winnow.pipeline.config import load_config
    from winnow.pipeline.engine import load_signed
    from winnow.pipeline.run import build_stages
    from winnow.pipeline.stage import ShardRef

    chain = build_stages(load_config(str(out.parent / "scale.yaml")))
    rows = []
    for (_, before, _), (dirname, stage, _) in zip(chain, chain[1:], strict=False):
        previous = next(out.glob(f"[0-9][0-9]-{before.name}"))
        files = sorted(previous.glob("train-*.parquet"))[:n_shards]
        refs = [ShardRef(name="part-" + f.name.split("-", 1)[1].split(".")[0], path=str(f), fingerprint="") for f in files]
        cached = sorted((out / dirname / "_fit").glob("state-*.pkl"))
        state = load_signed(cached[-1]) if cached else None
        docs = sum(pq.read_metadata(f).num_rows for f in files)
        t0 = time.process_time()
        if stage.name == "minhash_dedup":
            for i, ref in enumerate(refs):
                _bucket_map((ref, i, stage.params, str(out.parent / "cpu-scratch"), 64))
        elif stage.name == "exact_dedup":
            for ref in refs:
                stage._keys_of_shard(ref)
        fit = time.process_time() - t0
        for ref in refs:
            shard_state = stage.shard_state(state, ref) if state is not None else None
            stage.apply(stage.load(ref), shard_state)
        rows.append({"stage": dirname, "docs": docs, "fit_cpu_per_1k": round(1000 * fit / docs, 3),
                     "apply_cpu_per_1k": round(1000 * (time.process_time() - t0 - fit) / docs, 3)})
    shutil.rmtree(out.parent / "cpu-scratch", ignore_errors=True)
    return rows


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int)
    ap.add_argument("--cpu-of", help="only measure per-stage CPU per document on this finished run's output")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/winnow-scale", help="scratch folder (corpus and output)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--near-share", type=float, default=0.08, help="documents that are near copies of another")
    ap.add_argument("--exact-share", type=float, default=0.02, help="documents that are exact copies of another")
    ap.add_argument("--docs-per-file", type=int, default=10_000)
    ap.add_argument("--data", default=str(DATA), help="the shared data folder (web/ and reference/)")
    ap.add_argument("--keep", action="store_true", help="leave the corpus and output in --work")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    args = ap.parse_args()
    if args.cpu_of:
        for row in stage_cpu(Path(args.cpu_of)):
            print(row)
        return
    if not args.docs:
        ap.error("--docs is required")

    work = Path(args.work) / f"n{args.docs}"
    corpus, out = work / "corpus", work / "out"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    planted = write_corpus(args.docs, corpus, args.seed, args.near_share, args.exact_share, args.docs_per_file,
                           Path(args.data))
    gen_seconds = time.perf_counter() - t0
    config = work / "scale.yaml"
    config.write_text(CONFIG.format(corpus=corpus, out=out, workers=args.workers))
    print(f"corpus: {planted} in {gen_seconds:.0f} s, {du(corpus) / 1e6:,.0f} MB gzipped; load {load_average()}",
          flush=True)

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "winnow", "run", str(config), "--quiet"],
                            cwd=Path(__file__).resolve().parents[1])
    with Sampler(proc.pid, out) as sampler:
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    if rc:
        sys.exit(f"winnow run exited {rc}")
    stages = stage_rows(out, sampler)
    workers = {f"{pid} {name}": peak for pid, (name, peak) in sampler.children.items() if peak > 50e6}
    result = {"docs": args.docs, "workers": args.workers, "seconds": round(seconds, 1),
              "docs_per_s": round(args.docs / seconds, 1), "corpus_bytes": du(corpus),
              "text_bytes": json.loads((out / "00-ingest" / "_manifest.json").read_text())["totals"]["bytes_in"],
              "output_bytes": du(out), "driver_peak_rss": max(sampler.driver_by_stage.values(), default=0),
              "driver_peak_rss_by_stage": sampler.driver_by_stage, "worker_peak_rss": workers,
              "cpu_seconds": round(sum(sampler.cpu_by_stage.values()), 1), "cpu_by_phase": sampler.cpu_by_stage,
              "planted": planted, "minhash": recall(out), "stages": stages, "load_after": load_average()}
    mb = 2**20
    print(f"\n{args.docs:,} documents, {args.workers} workers: {seconds:,.0f} s, {result['docs_per_s']:,.0f} docs/s "
          f"end to end; driver peak {result['driver_peak_rss'] / mb:,.0f} MiB; output {result['output_bytes'] / 1e9:.2f} GB"
          f" (input {result['corpus_bytes'] / 1e9:.2f} GB gz, {result['text_bytes'] / 1e9:.2f} GB text); "
          f"load {result['load_after']}")
    print(f"{'stage':<18}{'s':>8}{'fit s':>8}{'cpu s':>8}{'shards':>7}{'rows in':>11}{'kept':>11}"
          f"{'wrk max':>9}{'wrk med':>9}{'driver':>9}  (MiB)")
    for s in stages:
        print(f"{s['stage']:<18}{s['seconds']:>8.1f}{s['fit_seconds']:>8.1f}{s['cpu_seconds']:>8.1f}{s['shards']:>7}"
              f"{s['rows_in']:>11,}{s['kept']:>11,}{s['worker_peak_rss_max'] / mb:>9,.0f}"
              f"{s['worker_peak_rss_median'] / mb:>9,.0f}{s['driver_rss_sampled'] / mb:>9,.0f}")
    print("CPU seconds by phase (driver + workers):", {k: round(v) for k, v in sampler.cpu_by_stage.items()})
    tail = {k: v for k, v in sampler.driver_by_stage.items() if k not in {s["stage"] for s in stages}}
    if tail:
        print("driver outside stages:", {k: f"{v / mb:,.0f} MiB" for k, v in tail.items()})
    print("worker processes' peak RSS:", ", ".join(f"{v / mb:,.0f} MiB" for v in workers.values()))
    print("minhash on the planted near-duplicates:", result["minhash"])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
