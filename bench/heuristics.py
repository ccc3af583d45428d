"""Heuristic filtering throughput: winnow vs datatrove's own executor, same filters, files, processes.

Both run GopherQuality → GopherRepetition → C4Quality → FineWebQuality (datatrove's classes,
default arguments) over the same JSONL files and write the kept documents:
  - datatrove: JsonlReader → 4 filters → JsonlWriter (gzip) on LocalPipelineExecutor(workers=N);
    its ParquetWriter stops on these files (a column typed null in one document, a string in the next)
  - winnow:    `winnow run` with ingest + heuristics on a LocalCluster of N worker processes
Each run is a separate process; its peak RSS is the peak of the summed RSS of its whole process
tree (driver, scheduler, workers), sampled every 50 ms. Wall time includes start-up.

    python bench/heuristics.py                     # all of ../shared/data/web, 2 processes
    python bench/heuristics.py --files 4 --workers 2
    python bench/heuristics.py --scaling           # adds datatrove with 1 worker, for its scaling
    python bench/heuristics.py --no-single         # only the two runs the ratio needs
    python bench/heuristics.py --no-single --repeats 3   # three pairs in turn: the median ratio
Last line: `ratio winnow/datatrove: X.XX` (with --repeats, the median of the pairs' ratios).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from winnow.pipeline.measure import link_inputs, median_of_pairs, run_measured

REPO = Path(__file__).resolve().parents[1]
WEB = REPO.parent / "shared" / "data" / "web"


def run_datatrove(files: list[str], workers: int, out: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    links = link_inputs(files, out / "in")
    LocalPipelineExecutor(
        pipeline=[JsonlReader(links), GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(),
                  FineWebQualityFilter(), JsonlWriter(str(out / "kept"))],
        tasks=len(files), workers=workers, logging_dir=str(out / "logs")).run()


def run_winnow(files: list[str], workers: int, out: Path) -> None:
    from winnow.pipeline.config import resolve
    from winnow.pipeline.run import run_pipeline

    cfg = resolve({"input": {"paths": files}, "output": str(out / "w"), "outputs": {"dataset": False},
                   "engine": {"n_workers": workers, "progress": False}, "stages": [{"heuristics": {}}]})
    result = run_pipeline(cfg)
    heur = result.stages[-1]
    print(json.dumps({"task_seconds": sum(r.seconds for r in heur.records), "stage_seconds": heur.seconds}))


def measure(which: str, files: list[str], workers: int) -> dict:
    """Run one side in a child process; wall seconds and peak RSS of its process tree."""
    with tempfile.TemporaryDirectory() as tmp:
        return run_measured([sys.executable, __file__, "--child", which, "--workers", str(workers), "--out", tmp,
                             "--file-list", json.dumps(files)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=0, help="use the first N web files (0 = all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scaling", action="store_true", help="also run datatrove with 1 worker")
    ap.add_argument("--no-single", action="store_true", help="skip winnow with 1 worker (the ratio needs "
                    "only the two runs with --workers)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the datatrove/winnow pair N times in turn and print the median ratio "
                         "(one pair's ratio moves with this machine's load)")
    ap.add_argument("--child", choices=["datatrove", "winnow"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--file-list", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.child:
        fn = run_datatrove if args.child == "datatrove" else run_winnow
        fn(json.loads(args.file_list), args.workers, Path(args.out))
        return

    files = sorted(str(p) for p in WEB.rglob("*.jsonl"))
    files = files[: args.files] if args.files else files
    n_docs = sum(Path(f).read_bytes().count(b"\n") for f in files)
    print(f"{len(files)} files, {n_docs:,} documents, {args.workers} processes; "
          f"filters: gopher_quality, gopher_repetition, c4_quality, fineweb_quality")
    results, first, ratios = {}, {}, []
    pair = [("datatrove", args.workers), ("winnow", args.workers)]
    runs = pair + ([] if args.no_single else [("winnow-1", 1)]) + ([("datatrove-1", 1)] if args.scaling else [])
    runs += pair * (args.repeats - 1)
    for name, workers in runs:
        r = measure(name.split("-")[0], files, workers)
        results[name] = r
        first.setdefault(name, r)   # the one-worker runs are in the first round only
        extra = (f"  (heuristics stage {r['stage_seconds']:.1f} s wall, {r['task_seconds']:.1f} s summed over tasks)"
                 if "task_seconds" in r else "")
        print(f"{name:11s} workers={workers}  {n_docs / r['seconds']:8.1f} docs/s  "
              f"{r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB{extra}", flush=True)
        if name == "winnow":   # a pair is complete
            ratios.append(results["datatrove"]["seconds"] / r["seconds"])
    for peer in ("winnow", "datatrove"):
        if f"{peer}-1" in first:
            scaling = first[f"{peer}-1"]["seconds"] / first[peer]["seconds"]
            print(f"{peer} scaling {args.workers} workers vs 1: {scaling:.2f}x")
    ratio, each = median_of_pairs(ratios)
    print(f"ratio winnow/datatrove: {ratio:.2f}{each}")


if __name__ == "__main__":
    main()
