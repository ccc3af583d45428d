"""Fault injection for the reliability tests and `bench/faults.py`; inert unless asked for.

A plan is a JSON file named by the environment variable `WINNOW_FAULT_PLAN`:

    {"point": "after_kept", "stage": "minhash_dedup", "shard": "part-00001", "action": "kill_worker"}

`point` is one of POINTS, `stage` matches the end of the stage folder name, `shard` is optional (any
shard). Actions: `kill_worker` (SIGKILL the process running the task: a Dask worker dies mid-shard),
`kill_run` (SIGKILL the whole process group: the driver and its embedded cluster die at once, as on
a crash or an OOM kill) and `raise` (an OSError, as a failing disk). A plan fires once: the first
process to reach it creates `<plan>.fired` and acts; every later match passes, so the retried task
or the resumed run goes through. Costs one environment lookup per call when no plan is set.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

ENV = "WINNOW_FAULT_PLAN"
POINTS = ("before_apply", "after_kept", "before_marker", "after_fit")


def inject(point: str, stage_dir: str | Path, shard: str = "") -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    plan = json.loads(Path(path).read_text())
    if plan.get("point") != point or not Path(stage_dir).name.endswith(plan.get("stage", "")):
        return
    if plan.get("shard") and plan["shard"] != shard:
        return
    try:
        os.close(os.open(f"{path}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    action = plan.get("action", "kill_worker")
    if action == "kill_worker":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill_run":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif action == "raise":
        raise OSError(f"injected fault at {point} ({Path(stage_dir).name} {shard})")
    else:
        raise ValueError(f"{path}: unknown fault action {action!r}")


# ---- harness: what tests/test_faults.py and bench/faults.py drive a run with ----

def run_command(config_path: str | Path) -> list[str]:
    """The argv of a quiet `winnow run CONFIG` in a new interpreter."""
    import sys

    return [sys.executable, "-m", "winnow", "run", str(config_path), "--quiet"]


def run_cli(config_path: str | Path, plan: dict | None = None, env: dict | None = None,
            timeout: float = 600) -> int:
    """`winnow run CONFIG` in its own process group (so `kill_run` takes down only that run),
    with `plan` as the fault plan; returns the exit status (-9 when killed)."""
    import subprocess

    environ = {**os.environ, **(env or {})}
    environ.pop(ENV, None)
    if plan is not None:
        plan_path = Path(config_path).with_suffix(".fault.json")
        Path(f"{plan_path}.fired").unlink(missing_ok=True)
        plan_path.write_text(json.dumps(plan))
        environ[ENV] = str(plan_path)
    done = subprocess.run(run_command(config_path), env=environ, start_new_session=True, timeout=timeout,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"winnow run {config_path} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.returncode


def fired(config_path: str | Path) -> bool:
    return Path(f"{Path(config_path).with_suffix('.fault.json')}.fired").exists()


def output_files(out: str | Path) -> dict[str, str]:
    """Content hash of every data file a run wrote (stage shards, tokens, dataset), by relative path;
    bookkeeping that legitimately differs between runs (timings, fit caches, markers) is left out."""
    from winnow.pipeline.shards import file_hash

    out = Path(out)
    return {str(p.relative_to(out)): file_hash(p) for p in sorted(out.rglob("*"))
            if p.is_file() and not {"_shards", "_fit"} & set(p.parts) and not p.name.startswith(".")
            and p.suffix != ".json" and p.name != "config.resolved.yaml"}  # it names the output folder


def id_counts(out: str | Path) -> dict[str, dict[str, int]]:
    """Per stage folder: how many times each id occurs in kept plus rejected rows."""
    from collections import Counter

    import pyarrow.parquet as pq

    counts = {}
    for stage_dir in sorted(p for p in Path(out).iterdir() if p.is_dir() and p.name[:2].isdigit()):
        c: Counter = Counter()
        for f in sorted(stage_dir.glob("train-*.parquet")) + sorted((stage_dir / "rejected").glob("*.parquet")):
            if "id" in pq.read_schema(f).names:
                c.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
        counts[stage_dir.name] = dict(c)
    return counts


def lost_and_duplicated(reference: dict[str, dict[str, int]], got: dict[str, dict[str, int]]) -> tuple[int, int]:
    """Rows of `reference` missing from `got`, and rows `got` holds more often than `reference`."""
    lost = duplicated = 0
    for stage, ref in reference.items():
        mine = got.get(stage, {})
        lost += sum(max(0, n - mine.get(i, 0)) for i, n in ref.items())
        duplicated += sum(max(0, n - ref.get(i, 0)) for i, n in mine.items())
    return lost, duplicated
