"""The embedded cluster: no dashboard unless asked (no fight over port 8787), and a rerun whose every
shard is up to date starts no cluster at all."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, web_files

from winnow.pipeline import cluster
from winnow.pipeline.config import EngineConfig, resolve
from winnow.pipeline.run import run_pipeline


def small_config(out: Path) -> dict:
    return {"input": {"paths": web_files(1)}, "output": str(out),
            "engine": {"n_workers": 1, "progress": False, "memory_limit": "2GiB"},
            "stages": [{"normalize": {}}, {"exact_dedup": {}}]}


@contextlib.contextmanager
def port_taken(port: int):
    """Hold `port` on all interfaces, as another program (a second Dask cluster, a notebook) would;
    when something else already holds it, it is taken all the same."""
    sock = socket.socket()
    try:
        sock.bind(("", port))
        sock.listen()
    except OSError:
        pass
    try:
        yield
    finally:
        sock.close()


def test_run_with_port_8787_taken_prints_no_port_warning(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(tmp_path / "out")))
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    with port_taken(8787):
        done = subprocess.run([sys.executable, "-m", "winnow", "run", str(config)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already in use" not in done.stderr + done.stdout
    assert "dashboard" not in done.stdout.lower()      # none asked for, none announced


def test_dashboard_only_when_asked():
    assert cluster.dashboard_address(EngineConfig()) is None
    assert cluster.dashboard_address(EngineConfig(dashboard=True)) == ":8787"
    assert cluster.dashboard_address(EngineConfig(dashboard=":8790")) == ":8790"


def test_up_to_date_rerun_starts_no_cluster(tmp_path, monkeypatch):
    started: list[EngineConfig] = []
    real = cluster.cluster_client

    @contextlib.contextmanager
    def counting(cfg: EngineConfig):   # the real cluster, counted
        started.append(cfg)
        with real(cfg) as client:
            yield client

    monkeypatch.setattr(cluster, "cluster_client", counting)
    config = resolve(small_config(tmp_path / "out"))
    first = run_pipeline(config)
    assert len(started) == 1 and all(s.skipped == 0 for s in first.stages)
    again = run_pipeline(config)
    assert len(started) == 1, "a rerun with every shard up to date started a cluster"
    assert all(s.skipped == len(s.records) for s in again.stages)
    assert again.final_dir == first.final_dir


def _profiling_in_worker(dask_worker) -> bool:
    """Whether the worker runs its profiler's periodic callback (what costs), not only the setting."""
    return "profile" in dask_worker.periodic_callbacks


def _worker_tick_ms(dask_worker) -> float:
    """How often the worker's event-loop watchdog wakes (its periodic callback, not only the setting)."""
    return dask_worker.periodic_callbacks["tick"].callback_time


def _scheduler_tick_ms(dask_scheduler) -> float:
    return dask_scheduler.periodic_callbacks["tick"].callback_time


def test_workers_take_no_statistical_profile_unless_a_dashboard_shows_it():
    # the profiler's thread takes the GIL from a task every 10 ms to walk its stack; only the
    # dashboard reads what it gathers
    quiet = EngineConfig(n_workers=1, memory_limit="2GiB")
    with cluster.cluster_client(quiet) as client:
        assert set(client.run(_profiling_in_worker).values()) == {False}
        # nor does any server wake every 20 ms to time its event loop: a worker's torch threads lost ~5% to it
        assert set(client.run(_worker_tick_ms).values()) == {1000} and client.run_on_scheduler(_scheduler_tick_ms) == 1000
    shown = EngineConfig(n_workers=1, memory_limit="2GiB", dashboard="127.0.0.1:0")
    with cluster.cluster_client(shown) as client:
        assert set(client.run(_profiling_in_worker).values()) == {True}
    # a Slurm worker reads the setting from its job script's environment
    env = cluster.worker_env(quiet)
    assert env["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] == "False"
    assert env["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] == "1s"
    import dask

    assert dask.config.collect(env={"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}, paths=[])[
        "distributed"]["worker"]["profile"]["enabled"] is False
