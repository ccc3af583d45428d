"""MinHash dedup speed and memory: winnow's `minhash_dedup` vs datatrove's four MinHash steps.

Corpus: ../shared/data/web replicated `--copies` times (default 8: 106,040 documents), each copy
after the first lightly perturbed (2% of words replaced, seeded), written as JSONL to a temp folder.
Both sides read those files and write the deduplicated documents, with word 5-grams, 14 bands x
8 rows, the same number of processes:
  - datatrove: Signature → Buckets → Cluster → Filter on LocalPipelineExecutor(workers=N)
  - winnow:    `winnow run` with ingest + minhash_dedup on a LocalCluster of N workers
Then winnow alone at `--growth` times the corpus, to show how its peak memory grows.
Peak RSS is summed over each run's process tree.

    python bench/dedup_speed.py [--copies 8] [--workers 2] [--growth 4]
Last line: `ratio winnow/datatrove: X.XX`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
from pathlib import Path

# bench/tokenize.py shares its name with the standard library's `tokenize`; keep this folder off
# the import path so that `import tokenize` (inspect, dill, linecache) finds the real one.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from winnow.pipeline.measure import run_measured  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--growth", type=int, default=4, help="also run winnow alone at this many times the corpus "
                    "(0 = skip)")
    ap.add_argument("--skip-datatrove", action="store_true", help="winnow only (no ratio line)")
    ap.add_argument("--child", choices=["datatrove", "winnow"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--file-list", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = child_datatrove if args.child == "datatrove" else child_winnow
        fn(json.loads(args.file_list), args.workers, Path(args.out))
        return

    with tempfile.TemporaryDirectory() as tmp:
        n = make_corpus(Path(tmp) / "corpus", args.copies)
        files = sorted(str(p) for p in (Path(tmp) / "corpus").glob("*.jsonl"))
        print(f"{n:,} documents ({args.copies} copies of the web sample), {args.workers} processes, "
              "5-grams, 14 x 8")
        results = {}
        for side in ("winnow",) if args.skip_datatrove else ("datatrove", "winnow"):
            out = Path(tmp) / side
            out.mkdir()
            r = run_measured([sys.executable, __file__, "--child", side, "--workers", str(args.workers),
                              "--out", str(out), "--file-list", json.dumps(files)])
            results[side] = r
            print(f"  {side:9s} {n / r['seconds']:8.0f} docs/s  {r['seconds']:7.1f} s  peak RSS "
                  f"{r['peak_rss_mb']:6.0f} MB  removed {r['removed']:,}")
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
    if "datatrove" in results:
        print(f"ratio winnow/datatrove: {results['datatrove']['seconds'] / results['winnow']['seconds']:.2f}")


if __name__ == "__main__":
    main()
