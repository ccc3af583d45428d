"""The scorer interface every model-based rater implements, and what they share.

A scorer turns texts into one float each (`score(texts) -> np.ndarray`), batched by length so a
batch's padding stays small, on CUDA in bf16 under `torch.inference_mode` when a GPU is present
(`device: auto`), else on the CPU with the threads it was given. It counts the model FLOPs it
spends (`flops`), which scoring stages write into their manifest and `winnow eval` adds to the
curation's cost. Models are loaded once per worker process (`cached`): Dask ships the scorer's
settings to workers, never the model.

    scorer = FastTextScorer("out/web-quality/03-fasttext_quality/model.bin")
    scores = scorer.score(texts)     # (n,) float64; scorer.flops grows by what it cost
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from winnow.pipeline.retained_heap import retained_heap

_CACHE: dict[tuple, Any] = {}  # per process: (kind, path, device) -> loaded model


def cached(key: tuple, load: Callable[[], Any]) -> Any:
    """The model under `key`, loaded by `load()` the first time this process asks for it."""
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


def file_key(path: str) -> tuple:
    """A cache key for a model file or folder that changes when it is rewritten (a retrained model
    at the same path must not be served from a long-lived worker's cache)."""
    path = os.path.abspath(path)
    stats = [os.stat(os.path.join(path, f)) for f in sorted(os.listdir(path))] if os.path.isdir(path) \
        else [os.stat(path)]
    return (path, *[(s.st_size, s.st_mtime_ns) for s in stats])


def resolve_device(device: str) -> str:
    """`auto` is CUDA when torch sees a GPU, else CPU; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def inference(device: str, threads: int | None = None) -> Iterator[None]:
    """No autograd; bf16 autocast on CUDA (scores do not need fp32 matmuls there); on the CPU,
    `threads` torch threads when given (a Dask worker otherwise has OMP_NUM_THREADS=1) and freed
    activations kept in the heap: in a Dask worker glibc otherwise mmaps and unmaps every batch's
    (MiniLM over 400 pages, one thread: system time 7.5 s of 36 s, 0.4 s with the heap retained)."""
    import torch

    if threads and not device.startswith("cuda"):
        torch.set_num_threads(threads)
    with torch.inference_mode():
        if device.startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            with retained_heap():
                yield


def length_batches(lengths: np.ndarray | list[int], max_tokens: int, max_rows: int = 512) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, longest first: each batch holds at most
    `max_tokens` padded tokens (rows x its longest row) and `max_rows` rows."""
    lengths = np.asarray(lengths, np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, max_tokens // longest))
        batches.append(order[start:start + rows])
        start += rows
    return batches


class Scorer:
    """Base class: `score(texts)` returns one float per text; `flops` is the total spent so far.

    `higher_is_better` tells a filter which end of the scale is quality (perplexity: the low end).
    """

    higher_is_better: bool = True

    def __init__(self, threads: int | None = None) -> None:
        self.flops = 0.0
        self.threads = threads

    def score(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError
