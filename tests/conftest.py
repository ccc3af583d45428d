"""Shared fixtures: a real Dask LocalCluster with worker processes, and the shared sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WEB = SHARED_DATA / "web"

assert os.environ.get("HF_HUB_OFFLINE") == "1", "run the tests with HF_HUB_OFFLINE=1 set before Python starts"


@pytest.fixture(scope="session")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      silence_logs=40) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def one_thread():
    """Tiny proxy models: one torch thread is several times faster than many on a shared 2-core machine,
    and the result does not depend on the core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def web_files(n: int) -> list[str]:
    """The first `n` web sample files, smallest first (keeps tests fast and deterministic)."""
    files = sorted(WEB.rglob("*.jsonl"), key=lambda p: (p.stat().st_size, str(p)))
    return [str(p) for p in files[:n]]


def run(config: dict, client, force: bool = False):
    from winnow.pipeline.config import resolve
    from winnow.pipeline.run import run_pipeline

    config = {"engine": {"progress": False}, **config}
    return run_pipeline(resolve(config), force=force, client=client)


def kept_rows(stage_dir: Path) -> pa.Table:
    """Every kept row of one stage folder, shards in order."""
    return pa.concat_tables(pq.read_table(p) for p in sorted(Path(stage_dir).glob("train-*.parquet")))


def rejected_rows(stage_dir: Path) -> pa.Table:
    """Every rejected row of one stage folder, shards in order."""
    return pa.concat_tables(pq.read_table(p) for p in sorted((Path(stage_dir) / "rejected").glob("*.parquet")))


def check_conservation(out_dir: Path) -> list[dict]:
    """Every stage and shard: rows in (+ added) = kept + rejected, in the manifest and on disk;
    each stage's input is the previous stage's kept output."""
    from winnow.pipeline.manifest import read_manifests
    from winnow.pipeline.shards import kept_path, rejected_path

    manifests = read_manifests(out_dir)
    assert manifests, f"no manifests under {out_dir}"
    previous_kept = None
    for dirname, m in manifests:
        stage_dir = out_dir / dirname
        for shard in m["shards"]:
            assert shard["rows_in"] + shard["added"] == shard["kept"] + shard["rejected"], (dirname, shard)
            kept_file = kept_path(stage_dir, shard["shard"])
            rows_out = shard["rows_out"]
            assert pq.read_metadata(kept_file).num_rows == rows_out if rows_out else not kept_file.exists()
            rejected = pq.read_table(rejected_path(stage_dir, shard["shard"]))
            assert rejected.num_rows == shard["rejected"]
            if rejected.num_rows:
                assert set(rejected.column("stage").to_pylist()) == {m["stage"]}
                assert None not in rejected.column("reason").to_pylist()
        totals = m["totals"]
        if previous_kept is not None:
            assert totals["rows_in"] == previous_kept, dirname
        previous_kept = totals["rows_out"]
    return [m for _, m in manifests]
