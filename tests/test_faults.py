"""Faults injected into real runs: a Dask worker killed mid-shard (on a LocalCluster and on a cluster
started with the `dask scheduler` / `dask worker` commands), the whole run SIGKILLed at chosen points,
a full disk and a read-only output folder. The output must end identical to an undisturbed run.
`bench/faults.py` runs the same with ≥ 20 seeded random kills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import check_conservation, run, web_files

from winnow.pipeline.errors import StorageError
from winnow.pipeline.faults import ENV, fired, id_counts, lost_and_duplicated, output_files, run_cli


def chain(inputs: list[str], out: Path, tokens: bool = False) -> dict:
    stages = [{"normalize": {}}, {"minhash_dedup": {}}, {"heuristics": {}}]
    if tokens:
        stages += [{"tokenize": {"vocab_size": 1024, "train_docs": 500}}, {"pack": {"seq_len": 256}}]
    return {"input": {"paths": inputs, "shard_size_mb": 0.25}, "output": str(out), "stages": stages}


def write_plan(folder: Path, plan: dict) -> str:
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    Path(f"{path}.fired").unlink(missing_ok=True)
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, client):
    """An undisturbed run of the chain (with tokens), and its files."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run(chain(web_files(1), out, tokens=True), client)
    return out


def same_as(reference: Path, out: Path) -> None:
    assert output_files(out) == output_files(reference)
    assert lost_and_duplicated(id_counts(reference), id_counts(out)) == (0, 0)
    check_conservation(out)


def run_on_local_cluster_with_a_kill(tmp_path: Path, plan: dict, n_workers: int) -> None:
    """The chain on a LocalCluster of `n_workers` worker processes while `plan` kills one; checks it fired."""
    from distributed import Client, LocalCluster

    path = write_plan(tmp_path, plan)
    os.environ[ENV] = path  # the workers inherit it when they start
    try:
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address="127.0.0.1:0", silence_logs=50) as cluster, Client(cluster) as c:
            run(chain(web_files(1), tmp_path / "out", tokens=True), c)
    finally:
        os.environ.pop(ENV)
    assert Path(f"{path}.fired").exists()  # a worker did die mid-shard


def test_worker_killed_mid_shard_on_local_cluster(tmp_path, reference):
    run_on_local_cluster_with_a_kill(tmp_path, {"point": "after_kept", "stage": "minhash_dedup",
                                                "shard": "part-00001", "action": "kill_worker"}, n_workers=2)
    same_as(reference, tmp_path / "out")


def test_the_only_worker_killed_while_it_holds_the_fit_state(tmp_path, reference):
    """The fit state a stage shares with every shard (tokenize's tokenizer) lives on the workers; when
    the only worker dies (a one-job Slurm allocation cancelled), its replacement must get the state
    again rather than the remaining shards failing on a lost dependency."""
    run_on_local_cluster_with_a_kill(tmp_path, {"point": "before_apply", "stage": "tokenize",
                                                "shard": "part-00001", "action": "kill_worker"}, n_workers=1)
    same_as(reference, tmp_path / "out")


def test_worker_killed_on_a_dask_scheduler_and_worker_cluster(tmp_path, reference):
    plan = write_plan(tmp_path, {"point": "before_marker", "stage": "heuristics", "action": "kill_worker"})
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, ENV: plan}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--scheduler-file", str(scheduler_file),
                               "--port", "0", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if scheduler_file.exists():
                break
            time.sleep(0.1)
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", "--scheduler-file", str(scheduler_file),
                                       "--nworkers", "2", "--nthreads", "1", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(scheduler_file.read_text())["address"]
        config = {**chain(web_files(1), tmp_path / "out", tokens=True),
                  "engine": {"scheduler": address, "progress": False}}
        from distributed import Client

        with Client(address) as c:
            c.wait_for_workers(2, timeout=60)
        from winnow.pipeline.config import resolve
        from winnow.pipeline.run import run_pipeline

        run_pipeline(resolve(config))  # the engine connects to the running scheduler itself
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)
    assert Path(f"{plan}.fired").exists()
    same_as(reference, tmp_path / "out")


@pytest.mark.parametrize("plan", [
    {"point": "after_fit", "stage": "minhash_dedup"},                       # global fit done, no shard yet
    {"point": "after_kept", "stage": "pack", "shard": "part-00001"},        # kept written, rejected not
])
def test_run_sigkilled_at_a_point_resumes_to_identical_output(tmp_path, reference, plan):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**chain(web_files(1), tmp_path / "out", tokens=True),
                                      "engine": {"n_workers": 2}}))
    assert run_cli(config, {**plan, "action": "kill_run"}) == -9 and fired(config)
    assert run_cli(config) == 0
    same_as(reference, tmp_path / "out")


def mounted_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_disk_full_and_read_only_output_fail_clearly_then_resume(tmp_path, client):
    """A run whose output fills its disk stops with an error naming the file it could not write;
    with room again it resumes to the undisturbed output. A read-only output folder says so too."""
    disk = tmp_path / "disk"
    if not mounted_tmpfs(disk, "256k"):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN) here")
    try:
        cfg = chain(web_files(1), disk / "out")
        with pytest.raises(Exception) as failure:
            run(cfg, client)
        text = str(failure.value)
        assert "No space left on device" in text and str(disk / "out") in text, text
        leftovers = [p for p in disk.rglob(".*.tmp-*")]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        run(cfg, client)
        run(chain(web_files(1), tmp_path / "clean"), client)
        assert output_files(disk / "out") == output_files(tmp_path / "clean"), leftovers
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(StorageError, match="Read-only file system"):
            run(cfg, client, force=True)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
