"""MinHash dedup speed and memory: winnow's `minhash_dedup` vs datatrove's four MinHash steps.

Corpus: ../shared/data/web replicated `--copies` times (default 8: 106,040 documents), each copy
after the first lightly perturbed (2% of words replaced, seeded), written as JSONL to a temp folder.
Both sides read those files and write the deduplicated documents, with word 5-grams, 14 bands x
8 rows, the same number of processes:
  - datatrove: Signature → Buckets → Cluster → Filter on LocalPipelineExecutor(workers=N)
  - winnow:    `winnow run` with ingest + minhash_dedup on a LocalCluster of N workers
Then winnow alone at `--growth` times the corpus, to show how its peak memory grows.
Peak RSS is summed over each run's process tree.

    python bench/dedup_speed.py [--copies 8] [--workers 2] [--growth 4] [--repeats 3]
Last line: `ratio winnow/datatrove: X.XX` (with --repeats, the median of the pairs' ratios).

SemDeDup scaling (`--semantic-only`, or `--semantic` after the MinHash part): synthetic clustered unit
vectors (d=384, ~300 per natural cluster, 10% planted near-duplicates at cosine ~0.998) for as many
documents as the MinHash corpus (the web sample x `--copies`) and `--semantic-growth` times that,
written as Parquet shards with `text` and `embedding` columns (the stage copies stored vectors
instead of embedding). `semantic_dedup` (eps 0.01, default k = n/300, kmeans_sample 100k) runs
through winnow's engine on a LocalCluster of `--workers` workers, in a fresh process per size;
reported: documents/s of the whole stage, and the driver's own peak RSS (that process alone, sampled:
the workers are not in it), whose 4x/1x ratio should stay below 1.5.

    python bench/dedup_speed.py --semantic-only [--copies 8] [--semantic-growth 4]
Last line: `semantic driver RSS 4x/1x: X.XX`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

from winnow.pipeline.measure import median_of_pairs, run_measured

REPO = Path(__file__).resolve().parents[1]
WEB = REPO.parent / "shared" / "data" / "web"
WORD = re.compile(r"\S+")


def make_corpus(folder: Path, copies: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    docs = [json.loads(line) for f in sorted(WEB.rglob("*.jsonl")) for line in f.read_text().rstrip("\n").split("\n")]
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for c in range(copies):
        with open(folder / f"copy-{c:03d}.jsonl", "w") as f:
            for d in docs:
                text = d["text"]
                if c:
                    words = text.split(" ")
                    for i in rng.sample(range(len(words)), max(1, len(words) // 50)):
                        words[i] = f"w{rng.randrange(10**6)}"
                    text = " ".join(words)
                f.write(json.dumps({"id": f"{c}/{d['id']}", "text": text}) + "\n")
                n += 1
    return n


def child_datatrove(files: list[str], workers: int, out: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    folder = str(Path(files[0]).parent)

    def run(steps, tasks, name):
        LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=workers,
                              logging_dir=str(out / "logs" / name)).run()

    run([JsonlReader(folder), MinhashDedupSignature(output_folder=str(out / "sigs"), config=cfg)], len(files), "s")
    run([MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "b"), config=cfg)],
        cfg.num_buckets, "b")
    run([MinhashDedupCluster(input_folder=str(out / "b"), output_folder=str(out / "r"), config=cfg)], 1, "c")
    run([JsonlReader(folder), MinhashDedupFilter(input_folder=str(out / "r")), JsonlWriter(str(out / "kept"))],
        len(files), "f")
    removed = sum(1 for p in (out / "r").glob("*.remove") for _ in range(p.stat().st_size // 4))
    print(json.dumps({"removed": removed}))


def child_winnow(files: list[str], workers: int, out: Path) -> None:
    from winnow.pipeline.config import resolve
    from winnow.pipeline.run import run_pipeline

    cfg = resolve({"input": {"paths": files}, "output": str(out / "w"), "outputs": {"dataset": False},
                   "engine": {"n_workers": workers, "progress": False},
                   "stages": [{"minhash_dedup": {"ngram": 5, "bands": 14, "rows": 8}}]})
    result = run_pipeline(cfg)
    stage = result.stages[-1]
    print(json.dumps({"removed": sum(r.rejected for r in stage.records), "fit_seconds": stage.fit_seconds}))


def write_vectors(folder: Path, n: int, d: int = 384, rows_per_shard: int = 20_000, seed: int = 0) -> list[str]:
    """Parquet shards of `n` synthetic documents: unit vectors around n/300 random centres (cosine
    ~0.5 between members of a centre), every tenth one a near copy of an earlier document. Written
    shard by shard, so this process never holds more than one shard's vectors."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(1, n // 300), d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, a in enumerate(range(0, n, rows_per_shard)):
        m = min(rows_per_shard, n - a)
        x = centers[rng.integers(0, len(centers), m)] + 0.05 * rng.normal(size=(m, d)).astype(np.float32)
        copies = np.arange(10, m, 10)
        x[copies] = x[copies - rng.integers(1, 10, len(copies))] + 0.002 * rng.normal(size=(len(copies), d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = [f"s{a + j}" for j in range(m)]
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(m + 1, dtype=np.int32) * d),
                                             pa.array(x.astype(np.float32).ravel()))
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(pa.table({"id": ids, "text": [f"document {j}" for j in ids], "embedding": embedding}), path)
        files.append(str(path))
    return files


def child_semantic(files: list[str], workers: int, out: Path) -> None:
    """One size: the stage through the engine; prints the driver's own peak RSS (this process only,
    sampled every 10 ms: getrusage's ru_maxrss would not do, Linux carries it across exec from the
    forking parent, which has just written the vectors)."""
    import threading
    import time

    import psutil

    from winnow.filters.semantic_dedup import SemanticDedupStage, SemanticParams
    from winnow.pipeline.cluster import cluster_client
    from winnow.pipeline.config import EngineConfig
    from winnow.pipeline.engine import Engine
    from winnow.pipeline.shards import file_hash
    from winnow.pipeline.stage import ShardRef

    peak, done = [0], threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    refs = [ShardRef(Path(f).stem, f, file_hash(f)) for f in files]
    params = {"eps": 0.01}
    stage = SemanticDedupStage(SemanticParams(**params))
    with cluster_client(EngineConfig(n_workers=workers, progress=False)) as client:
        t0 = time.perf_counter()
        result = Engine(client, out, progress=False).run_stage("01-semantic_dedup", stage, params, refs)
        seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    manifest = json.loads((out / "01-semantic_dedup" / "_manifest.json").read_text())
    print(json.dumps({"stage_seconds": seconds, "fit_seconds": result.fit_seconds, "driver_peak_mb": peak[0] / 2**20,
                      **{k: manifest.get(k) for k in ("documents", "removed", "clusters", "groups",
                                                      "largest_cluster", "kmeans_sample", "kmeans_backend",
                                                      "fit_phase_seconds")}}))


def semantic_scaling(args: argparse.Namespace) -> None:
    """SemDeDup at 1x and `--semantic-growth` x the MinHash corpus's document count, synthetic vectors."""
    per_copy = sum(len(f.read_text().rstrip("\n").split("\n")) for f in WEB.rglob("*.jsonl"))
    n1 = per_copy * args.copies
    print(f"SemDeDup scaling: synthetic d=384 vectors, {args.workers} workers, eps 0.01, k = n/300")
    rows = []
    for scale in (1, args.semantic_growth):
        with tempfile.TemporaryDirectory() as tmp:
            files = write_vectors(Path(tmp) / "in", n1 * scale, seed=scale)
            out = Path(tmp) / "out"
            r = run_measured([sys.executable, __file__, "--child", "semantic", "--workers", str(args.workers),
                              "--out", str(out), "--file-list", json.dumps(files)])
        rows.append(r)
        print(f"  {scale}x {r['documents']:9,} docs  {r['documents'] / r['stage_seconds']:7.0f} docs/s  "
              f"stage {r['stage_seconds']:6.1f} s (fit {r['fit_seconds']:5.1f})  driver peak RSS "
              f"{r['driver_peak_mb']:5.0f} MB  tree peak {r['peak_rss_mb']:6.0f} MB  k {r['clusters']}  "
              f"groups {r['groups']}  largest cluster {r['largest_cluster']}  removed {r['removed']:,}")
        print("     fit phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["fit_phase_seconds"].items()))
    print(f"semantic driver RSS {args.semantic_growth}x/1x: {rows[1]['driver_peak_mb'] / rows[0]['driver_peak_mb']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--growth", type=int, default=4, help="also run winnow alone at this many times the corpus "
                    "(0 = skip)")
    ap.add_argument("--skip-datatrove", action="store_true", help="winnow only (no ratio line)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the datatrove/winnow pair N times in turn and print the median ratio")
    ap.add_argument("--semantic", action="store_true", help="also run the SemDeDup scaling part at the end")
    ap.add_argument("--semantic-only", action="store_true", help="only the SemDeDup scaling part")
    ap.add_argument("--semantic-growth", type=int, default=4, help="SemDeDup's second size, x the first")
    ap.add_argument("--child", choices=["datatrove", "winnow", "semantic"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--file-list", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.child:
        fn = {"datatrove": child_datatrove, "winnow": child_winnow, "semantic": child_semantic}[args.child]
        fn(json.loads(args.file_list), args.workers, Path(args.out))
        return
    if args.semantic_only:
        semantic_scaling(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        n = make_corpus(Path(tmp) / "corpus", args.copies)
        files = sorted(str(p) for p in (Path(tmp) / "corpus").glob("*.jsonl"))
        print(f"{n:,} documents ({args.copies} copies of the web sample), {args.workers} processes, "
              "5-grams, 14 x 8")
        results, ratios = {}, []
        for repeat in range(args.repeats):
            for side in ("winnow",) if args.skip_datatrove else ("datatrove", "winnow"):
                out = Path(tmp) / f"{side}-{repeat}"
                out.mkdir()
                r = run_measured([sys.executable, __file__, "--child", side, "--workers", str(args.workers),
                                  "--out", str(out), "--file-list", json.dumps(files)])
                results[side] = r
                print(f"  {side:9s} {n / r['seconds']:8.0f} docs/s  {r['seconds']:7.1f} s  peak RSS "
                      f"{r['peak_rss_mb']:6.0f} MB  removed {r['removed']:,}", flush=True)
            if "datatrove" in results:
                ratios.append(results["datatrove"]["seconds"] / results["winnow"]["seconds"])
            shutil.rmtree(Path(tmp) / f"datatrove-{repeat}", ignore_errors=True)
            shutil.rmtree(Path(tmp) / f"winnow-{repeat}", ignore_errors=True)
        if args.growth:
            big = Path(tmp) / "big"
            n_big = make_corpus(big, args.copies * args.growth, seed=1)
            out = Path(tmp) / "winnow-big"
            out.mkdir()
            r = run_measured([sys.executable, __file__, "--child", "winnow", "--workers", str(args.workers),
                              "--out", str(out), "--file-list",
                              json.dumps(sorted(str(p) for p in big.glob("*.jsonl")))])
            growth = r["peak_rss_mb"] / results["winnow"]["peak_rss_mb"]
            print(f"  winnow at {args.growth}x ({n_big:,} docs): {n_big / r['seconds']:8.0f} docs/s  "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB = {growth:.2f}x the 1x peak")
    if ratios:
        ratio, each = median_of_pairs(ratios)
        print(f"ratio winnow/datatrove: {ratio:.2f}{each}")
    if args.semantic:
        semantic_scaling(args)


if __name__ == "__main__":
    main()
