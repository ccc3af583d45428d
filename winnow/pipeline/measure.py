"""Run a child process, time it, and sample its whole process tree's peak RSS (for bench/ scripts)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time


def run_measured(cmd: list[str]) -> dict:
    """Wall seconds, peak summed RSS of the process tree (sampled every 50 ms), and the child's last
    JSON line on stdout merged in."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed:\n{err.decode()[-3000:]}")
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    return {"seconds": seconds, "peak_rss_mb": peak[0] / 2**20, **(json.loads(lines[-1]) if lines else {})}


def link_inputs(files: list[str], folder) -> str:
    """Symlink `files` into `folder` as 00000.jsonl, …: datatrove's readers take one folder and give
    each task whole files, so it sees exactly the files (and shards) winnow does."""
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(files):
        os.symlink(f, os.path.join(folder, f"{i:05d}.jsonl"))
    return str(folder)


def median_of_pairs(ratios: list[float]) -> tuple[float, str]:
    """The median of alternating runs' ratios, and what to print after it: ` (median of a, b, c)` when
    there is more than one (one pair's ratio moves with a shared machine's load)."""
    each = f" (median of {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
    return statistics.median(ratios), each
