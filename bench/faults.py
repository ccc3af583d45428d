"""Fault injection at scale: ≥ 20 SIGKILLs of a whole run (driver and embedded cluster) at seeded random
points over every stage kind, then a resume; plus worker kills. Each trial's output must be
byte-identical to an undisturbed run, with no row lost or duplicated, and pass `winnow verify`.

Two kinds of kill point, half the trials each:
- injected: a random (stage, point, shard) from every stage of the chain x `winnow.pipeline.faults.POINTS`
  (before apply, after the kept file, before the marker, after a global fit), so every stage kind
  (map, global fit: MinHash, line dedup, the fastText quality cut; tokenize; pack) is hit at the
  moments resume must get right;
- timed: SIGKILL after a random fraction of the undisturbed run's wall time, which lands anywhere
  (cluster start, a fit's map tasks, mid-write, between stages, writing the dataset).

    python bench/faults.py                 # 24 run kills + 4 worker kills, ~20 min on 2 cores
    python bench/faults.py --trials 6      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from winnow.pipeline.faults import (
    ENV,
    POINTS,
    fired,
    id_counts,
    lost_and_duplicated,
    output_files,
    run_cli,
    run_command,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STAGES = [{"normalize": {}}, {"exact_dedup": {}}, {"minhash_dedup": {}}, {"line_dedup": {}},
          {"heuristics": {}},
          {"fasttext_quality": {"positives": {"paths": [str(SHARED / "reference" / "**" / "*.jsonl")]},
                                "keep_top": 0.5}},
          {"tokenize": {"vocab_size": 2048, "train_docs": 1000}}, {"pack": {"seq_len": 512}}]
FIT_STAGES = {"exact_dedup", "minhash_dedup", "line_dedup", "fasttext_quality", "tokenize", "ingest"}


def web_inputs(n: int) -> list[str]:
    files = sorted((SHARED / "web").rglob("*.jsonl"), key=lambda p: (p.stat().st_size, str(p)))
    return [str(p) for p in files[:n]]


def write_config(folder: Path, out: Path, inputs: list[str]) -> Path:
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({"input": {"paths": inputs, "shard_size_mb": 0.25}, "output": str(out),
                                    "engine": {"n_workers": 2}, "stages": STAGES}))
    return path


def timed_kill(config: Path, after_s: float) -> int:
    """Start `winnow run` and SIGKILL its whole process group after `after_s` seconds."""
    proc = subprocess.Popen(run_command(config), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if k != ENV})
    try:
        proc.wait(timeout=after_s)
        return proc.returncode  # finished before the kill
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def verify(out: Path) -> str:
    try:
        from winnow.pipeline.verify import verify_run
    except ImportError:
        return "n/a"
    problems = verify_run(out)
    return "ok" if not problems else f"{len(problems)} problems"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24, help="run kills (half injected, half timed)")
    ap.add_argument("--worker-kills", type=int, default=4)
    ap.add_argument("--files", type=int, default=2, help="smallest web sample files used as input")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    inputs = web_inputs(args.files)
    with tempfile.TemporaryDirectory(prefix="winnow-faults-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        reference = tmp / "reference"
        run_cli(write_config(tmp, reference, inputs))
        wall = time.perf_counter() - t0
        ref_files, ref_ids = output_files(reference), id_counts(reference)
        names = ["ingest"] + [next(iter(s)) for s in STAGES]
        shards = sorted(p.name.replace("train-", "part-").removesuffix(".parquet")
                        for p in (reference / "00-ingest").glob("train-*.parquet"))
        print(f"undisturbed run: {wall:.1f} s, {len(shards)} shards, stages {', '.join(names)}")
        rows = []
        for trial in range(args.trials + args.worker_kills):
            out = tmp / f"trial{trial:02d}"
            config = write_config(tmp, out, inputs)
            if trial >= args.trials:  # a worker dies mid-shard; the run itself must just finish
                stage = rng.choice(names[1:])
                plan = {"point": rng.choice(POINTS[:3]), "stage": stage, "shard": rng.choice(shards),
                        "action": "kill_worker"}
                kind, where = "worker SIGKILL", f"{stage} {plan['point']} {plan['shard']}"
                run_cli(config, plan)
                hit = fired(config)
            elif trial % 2 == 0:
                stage = rng.choice(names)
                points = POINTS if stage in FIT_STAGES else POINTS[:3]
                plan = {"point": rng.choice(points), "stage": stage, "action": "kill_run"}
                if plan["point"] != "after_fit":
                    plan["shard"] = rng.choice(shards)
                kind, where = "run SIGKILL (injected)", f"{stage} {plan['point']} {plan.get('shard', '')}"
                hit = run_cli(config, plan) == -signal.SIGKILL
            else:
                after = rng.uniform(0.05, 0.95) * wall
                kind, where = "run SIGKILL (timed)", f"after {after:.1f} s"
                hit = timed_kill(config, after) == -signal.SIGKILL
            run_cli(config)  # resume (or, after a worker kill, a no-op rerun)
            lost, duplicated = lost_and_duplicated(ref_ids, id_counts(out))
            got = output_files(out)
            differ = sorted(k for k in set(got) | set(ref_files) if got.get(k) != ref_files.get(k))
            identical = not differ
            rows.append((kind, where, hit, lost, duplicated, identical, verify(out)))
            print(f"{trial:2d} {kind:24s} {where:40s} fired={hit} lost={lost} dup={duplicated} "
                  f"identical={identical} verify={rows[-1][-1]}", flush=True)
            if differ:
                print(f"   differ ({len(differ)}): {', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''}",
                      flush=True)
        print("\n| fault | trials | fired | rows lost | rows duplicated | output identical | verify ok |")
        print("|---|---|---|---|---|---|---|")
        for kind in dict.fromkeys(r[0] for r in rows):
            mine = [r for r in rows if r[0] == kind]
            print(f"| {kind} | {len(mine)} | {sum(r[2] for r in mine)} | {sum(r[3] for r in mine)} | "
                  f"{sum(r[4] for r in mine)} | {sum(r[5] for r in mine)}/{len(mine)} | "
                  f"{sum(r[6] == 'ok' for r in mine)}/{len(mine)} |")
        print(json.dumps({"trials": len(rows), "all_identical": all(r[5] for r in rows),
                          "lost": sum(r[3] for r in rows), "duplicated": sum(r[4] for r in rows)}))


if __name__ == "__main__":
    main()
