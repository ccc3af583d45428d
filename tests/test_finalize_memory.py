"""Pack's finalize (tokens/, megatron/) holds one packed shard at a time on the driver, not the run."""

from __future__ import annotations

import multiprocessing
import tracemalloc
import weakref
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from winnow.pipeline.config import OutputsConfig
from winnow.pipeline.stage import RunOutputs
from winnow.tokenize.pack import PackParams, PackStage
from winnow.tokenize.writers import read_megatron, write_megatron


def test_megatron_streams_one_document_at_a_time(tmp_path):
    alive: list[weakref.ref] = []

    def documents():
        for i in range(50):
            doc = np.arange(i + 1, dtype=np.uint16)
            alive.append(weakref.ref(doc))
            yield doc
            del doc
            assert sum(r() is not None for r in alive) <= 2  # this one and the writer's loop variable

    write_megatron(documents(), tmp_path / "m" / "text_document")
    assert [len(d) for d in read_megatron(tmp_path / "m" / "text_document")] == list(range(1, 51))


def packed_run(folder: Path, n_files: int) -> Path:
    """A pack stage folder of `n_files` equal shards, packed by the stage itself (200 documents each)."""
    stage, rng = PackStage(PackParams(seq_len=512)), np.random.default_rng(0)
    final = folder / "01-pack"
    final.mkdir(parents=True)
    for f in range(n_files):
        docs = [rng.integers(1, 4000, rng.integers(50, 400)).astype(np.uint16) for _ in range(200)]
        table = pa.table({"id": [f"f{f}-{i}" for i in range(200)],
                          "input_ids": pa.array([d.tolist() for d in docs], pa.list_(pa.uint16()))})
        kept, _ = stage.apply(table, 0)
        pq.write_table(kept, final / f"train-{f:05d}.parquet")
    return final


def finalize_peak(folder: Path, n_files: int) -> int:
    final = packed_run(folder, n_files)
    options = OutputsConfig(dataset=False, token_files=True, megatron=True)
    tracemalloc.start()
    try:
        PackStage(PackParams(seq_len=512)).finalize(RunOutputs(folder, final, [str(n_files)], options))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def small_and_large_peaks(folder: Path) -> tuple[int, int]:
    finalize_peak(folder / "warm", 1)  # first call: imports and caches, not the run
    return finalize_peak(folder / "small", 2), finalize_peak(folder / "large", 16)


def test_finalize_memory_does_not_follow_the_run(tmp_path):
    # measured in a fresh interpreter: tracemalloc counts every thread's allocations, and in the suite a
    # live Dask client's threads allocate meanwhile, more the longer finalize runs (CI saw 189 kB vs 432 kB)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        small, large = pool.submit(small_and_large_peaks, tmp_path).result()
    # before: every document's tokens (~90 kB a shard here) and a tuple per segment, all at once
    assert large < small * 1.5, (small, large)
