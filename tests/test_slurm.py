"""`engine.slurm`: workers as Slurm jobs (dask-jobqueue's SLURMCluster) on a real one-node Slurm that
`scripts/local-slurm.sh` starts on this machine. A run there writes the same bytes as on the
LocalCluster, and a worker job cancelled mid-stage (`scancel`) costs only its tasks: a replacement job
is submitted and the output is still identical.

Under CI=true these run (setup.sh --dev installs slurm-wlm and munge); elsewhere they skip without
`sbatch` or root. The first tests need no Slurm at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, check_conservation, web_files

from winnow.pipeline.cluster import LazyClient, SlurmStartError, _import_slurm_cluster, slurm_cluster_kwargs
from winnow.pipeline.config import EngineConfig, resolve
from winnow.pipeline.errors import ConfigError
from winnow.pipeline.faults import output_files
from winnow.pipeline.run import run_pipeline

SCRIPT = REPO / "scripts" / "local-slurm.sh"
STATE = Path(os.environ.get("WINNOW_SLURM_DIR", "/tmp/winnow-slurm"))
SLURM = {"jobs": 1, "cores": 1, "memory": "2GB", "walltime": "00:10:00", "start_timeout_s": 120}
IN_CI = os.environ.get("CI", "").lower() == "true"


def config(out: Path, slurm: dict | None) -> dict:
    """Two stages over two web sample files in ~17 small shards (the cancel lands mid-stage)."""
    engine = {"progress": False, "n_workers": 1, "memory_limit": "2GiB"} if slurm is None else \
        {"progress": False, "slurm": slurm}
    return {"input": {"paths": web_files(2), "shard_size_mb": 0.1}, "output": str(out), "engine": engine,
            "stages": [{"normalize": {}}, {"heuristics": {}}]}


# ---------------------------------------------------------------- without Slurm


def test_worker_count_hint_is_planned_jobs_times_processes_without_starting_anything():
    import contextlib

    with contextlib.ExitStack() as stack:
        cfg = EngineConfig(slurm={"jobs": 3, "cores": 4}, threads_per_worker=2)
        lazy = LazyClient(cfg, stack)
        assert lazy.worker_count_hint() == 6    # 3 jobs × (4 cores / 2 threads) worker processes
        assert not lazy.started                   # asking started nothing (no sbatch needed)
        assert LazyClient(EngineConfig(slurm={"jobs": 2, "cores": 1}), stack).worker_count_hint() == 2


def test_slurm_config_is_strict_and_consistent():
    base = {"input": {"paths": web_files(1)}, "output": "/tmp/unused"}
    with pytest.raises(ConfigError, match="slurm.cores"):
        resolve({**base, "engine": {"slurm": {"cores": 3}, "threads_per_worker": 2}})
    with pytest.raises(ConfigError, match="both name a cluster"):
        resolve({**base, "engine": {"slurm": {}, "scheduler": "tcp://h:8786"}})
    with pytest.raises(ConfigError, match="partition"):
        resolve({**base, "engine": {"slurm": {"partition": "x"}}})  # the key is `queue`
    assert resolve(base).pipeline.engine.slurm is None               # null: not on Slurm


def test_workers_run_this_venv_in_the_drivers_working_directory(tmp_path):
    cfg = EngineConfig(slurm={"cores": 2, "memory": "8GB", "queue": "short", "account": "lab",
                              "job_extra_directives": ["--qos=low"]})
    kwargs = slurm_cluster_kwargs(cfg, cwd=str(tmp_path))
    assert kwargs["python"] == sys.executable
    assert kwargs["job_script_prologue"][0] == f"cd {tmp_path}"
    assert "export RAYON_NUM_THREADS=1" in kwargs["job_script_prologue"]
    assert (kwargs["processes"], kwargs["queue"], kwargs["account"]) == (2, "short", "lab")
    pytest.importorskip("dask_jobqueue")
    script = _import_slurm_cluster()(**kwargs).job_script()  # what sbatch would get; submits nothing
    for line in ("#SBATCH -p short", "#SBATCH -A lab", "#SBATCH --qos=low", "#SBATCH --cpus-per-task=2",
                 f"cd {tmp_path}", f"{sys.executable} -m distributed.cli.dask_worker"):
        assert line in script, line


def test_loading_slurm_support_keeps_ctrl_c_and_works_off_the_main_thread():
    # dask_jobqueue sets SIGINT to sys.exit when it loads, and that fails off the main thread
    pytest.importorskip("dask_jobqueue")
    for load in ("_import_slurm_cluster()",
                 "t = threading.Thread(target=_import_slurm_cluster); t.start(); t.join()"):
        code = ("import signal, sys, threading\n"
                "from winnow.pipeline.cluster import _import_slurm_cluster\n"
                f"{load}\n"
                "assert 'dask_jobqueue.runner' in sys.modules, 'the import failed'\n"
                "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGINT)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{load}: {done.stderr[-2000:]}"


# ---------------------------------------------------------------- on a local Slurm


@pytest.fixture(scope="module")
def local_slurm():
    """The one-node Slurm of scripts/local-slurm.sh, started for this module and stopped after it
    (left alone when it was already running)."""
    if not IN_CI:
        if shutil.which("sbatch") is None:
            pytest.skip("sbatch not found: apt-get install slurm-wlm munge (bash scripts/setup.sh --dev)")
        if os.geteuid() != 0:
            pytest.skip("scripts/local-slurm.sh start needs root")
    pytest.importorskip("dask_jobqueue", reason="pip install 'winnow[slurm]'") if not IN_CI else None
    env = {**os.environ, "WINNOW_SLURM_DIR": str(STATE)}
    was_running = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(STATE / "slurm.conf")   # sbatch/squeue/scancel of the driver find it
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if not was_running:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same config on the embedded LocalCluster."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_pipeline(resolve(config(out, None)))
    return out


def our_jobs() -> list[str]:
    done = subprocess.run(["squeue", "-h", "-n", "winnow-worker", "-t", "RUNNING", "-o", "%i"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_run_on_slurm_equals_local_cluster(local_slurm, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the workers' working directory (their logs land there)
    out = tmp_path / "out"
    run_pipeline(resolve(config(out, SLURM)))
    assert output_files(out) == output_files(reference)   # byte-identical kept and rejected shards
    assert len(list(out.glob("02-heuristics/train-*.parquet"))) > 5
    assert list((tmp_path / "winnow-slurm-logs").glob("winnow-worker-*.err"))  # it really ran as a job
    check_conservation(out)


def test_worker_job_cancelled_mid_stage_costs_only_its_tasks(local_slurm, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_pipeline(resolve(config(out, SLURM)))
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            failure.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    markers = out / "02-heuristics" / "_shards"
    deadline = time.monotonic() + 120
    while not list(markers.glob("*.json")) and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    jobs = our_jobs()
    assert runner.is_alive() and len(jobs) == 1, f"the run ended (or never started) before the cancel: {failure}"
    subprocess.run(["scancel", jobs[0]], check=True)
    cancelled_mid_run = runner.is_alive()
    runner.join(timeout=180)
    assert not runner.is_alive(), "the run did not finish after its worker job was cancelled"
    assert not failure, failure
    assert cancelled_mid_run
    logs = sorted((tmp_path / "winnow-slurm-logs").glob("winnow-worker-*.err"))
    assert len(logs) == 2, logs                 # the cancelled job and its replacement
    assert output_files(out) == output_files(reference)
    check_conservation(out)


def test_no_worker_job_starting_is_a_clear_error_naming_the_queue(local_slurm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the job is valid but may not begin for an hour: the driver must give up, not wait forever
    slurm = {**SLURM, "queue": "debug", "start_timeout_s": 3, "job_extra_directives": ["--begin=now+3600"]}
    t0 = time.monotonic()
    with pytest.raises(SlurmStartError, match=r"within 3 s on queue \(partition\) 'debug'.*squeue: \d+ PENDING"):
        run_pipeline(resolve(config(tmp_path / "out", slurm)))
    assert time.monotonic() - t0 < 60
    assert not subprocess.run(["squeue", "-h", "-n", "winnow-worker"], capture_output=True, text=True).stdout
