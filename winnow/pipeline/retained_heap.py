"""Keep freed memory in the process heap while an allocation-heavy loop (torch, numpy) runs on the CPU.

A Dask worker starts with `MALLOC_TRIM_THRESHOLD_=65536` (distributed's nanny `pre-spawn-environ`), and a
fixed trim threshold also turns off glibc's adaptive mmap threshold: every tensor over 128 KiB is then
mmapped, unmapped when freed, and each of its pages faults in again on the next step. The DataRater's
meta-training frees and reallocates its activations (logits of 16-32 rows x 128 tokens x the vocabulary)
thousands of times: in a worker about half of its CPU time was system time (bench/LOG.md, issue 25).
Generation with transformers does the same per new token (attention scores, MLP activations, logits over
the vocabulary): SmolLM2-135M took 8.6x more page faults and 10x more system time per token in a worker.
The tokenizer's encoder builds numpy id buffers of several MB per batch: 3.3x the page faults per shard.
(Arrow's own buffers come from its mimalloc pool, which this setting does not touch.)

`retained_heap()` serves every allocation from the heap and keeps what is freed there (no trim, no mmap)
for the duration, then restores the settings the process started with and hands the memory back
(`malloc_trim`), so the rest of the worker keeps returning freed shard memory as before. glibc only;
elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
# glibc's defaults where the environment sets nothing (the adaptive mmap threshold starts at 128 KiB)
DEFAULTS = {M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 128 * 1024),
            M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 128 * 1024),
            M_MMAP_MAX: ("MALLOC_MMAP_MAX_", 65536)}
RETAINED = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}   # never trim the heap top, never mmap a block

_lock = threading.Lock()
_users = 0   # nested or concurrent users in this process: the last one out restores


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _restore(libc: ctypes.CDLL) -> None:
    for param, (env, default) in DEFAULTS.items():
        try:
            value = int(os.environ.get(env, default))
        except ValueError:
            value = default
        libc.mallopt(param, value)
    libc.malloc_trim(0)


@contextmanager
def retained_heap() -> Iterator[bool]:
    """Within the block, freed memory stays in the heap (no trim, no mmap); yields whether that took effect."""
    global _users
    libc = _libc()
    if libc is None:
        yield False
        return
    with _lock:
        if _users == 0:
            applied = all(libc.mallopt(param, value) == 1 for param, value in RETAINED.items())
        else:
            applied = True
        _users += 1
    try:
        yield applied
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _restore(libc)
