"""The Dask cluster a run works on: an existing scheduler, or an embedded LocalCluster that starts
only when a stage has work for it (a rerun whose every shard is up to date starts nothing).

No dashboard unless asked (`engine.dashboard: true` or an address): the scheduler's HTTP server then
binds a free port on 127.0.0.1, so a second run on the same machine never fights over port 8787.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from distributed.diagnostics.plugin import WorkerPlugin

from winnow.pipeline.config import EngineConfig

log = logging.getLogger(__name__)
DEFAULT_DASHBOARD = ":8787"
NO_DASHBOARD = "127.0.0.1:0"  # the scheduler always serves HTTP; a free loopback port warns nobody


def dashboard_address(cfg: EngineConfig) -> str | None:
    """The address the LocalCluster's dashboard should use, or None when none was asked for."""
    if cfg.dashboard is True:
        return DEFAULT_DASHBOARD
    return cfg.dashboard or None


@contextlib.contextmanager
def cluster_client(cfg: EngineConfig) -> Iterator[Any]:
    """A Dask client: on an existing scheduler when `cfg.scheduler` is set, else an embedded LocalCluster."""
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        with Client(cfg.scheduler) as client:
            use_arrow_pool(client, cfg.arrow_memory_pool)
            yield client
        return
    n_workers = cfg.n_workers or os.cpu_count() or 1
    wanted = dashboard_address(cfg)
    if wanted is not None:
        import importlib.util

        if importlib.util.find_spec("bokeh") is None:
            log.warning("engine.dashboard is set but bokeh is not installed (pip install 'winnow[dashboard]'): "
                        "the scheduler serves no dashboard pages")
    dashboard = wanted or NO_DASHBOARD
    # Rust thread pools (tokenizers' Rayon) default to every core in every worker: with one worker
    # process per core that oversubscribes, so each worker gets the threads it was given
    threads = str(cfg.threads_per_worker)
    env = {"RAYON_NUM_THREADS": threads, "RAYON_RS_NUM_CPUS": threads}
    if cfg.gpu_workers:
        # CPU workers must not see the GPU: with `device: auto` each would load its own model copy
        # onto it. Dask applies `env` in the worker process before it runs a task (so before CUDA
        # initialises there); add_gpu_workers gives the GPU workers their device back.
        env["CUDA_VISIBLE_DEVICES"] = ""
    with _arrow_pool_environ(cfg.arrow_memory_pool), \
            LocalCluster(n_workers=n_workers, threads_per_worker=cfg.threads_per_worker, processes=True,
                         memory_limit=cfg.memory_limit, dashboard_address=dashboard, env=env,
                         resources=cfg.resources, silence_logs=40) as cluster, \
            Client(cluster) as client:
        set_arrow_pool(cfg.arrow_memory_pool)
        if cfg.gpu_workers:
            add_gpu_workers(cluster, client, cfg.gpu_workers)
        yield client


def add_gpu_workers(cluster: Any, client: Any, n: int) -> None:
    """Start `n` more workers like the others but with one thread and the resource {GPU: 1}.

    LocalCluster gives every worker the same resources; a single-GPU machine wants CPU workers for
    the rule stages plus one worker that owns the GPU (tasks that ask for {"GPU": 1} run only
    there, one at a time). SpecCluster's worker_spec takes the extra, different spec.

    GPU worker i sees one device: the i-th of the driver's CUDA_VISIBLE_DEVICES when that is set
    (round robin when there are more workers than devices), else device i."""
    import copy

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = None if visible is None else [d.strip() for d in visible.split(",") if d.strip()]
    for i in range(n):
        spec = copy.deepcopy(cluster.new_spec)
        device = str(i) if devices is None else (devices[i % len(devices)] if devices else "")
        env = {**spec["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": device}  # CPU workers have ""
        spec["options"].update(nthreads=1, resources={"GPU": 1}, env=env)
        cluster.worker_spec[f"gpu-{i}"] = spec
    cluster.scale(len(cluster.worker_spec))  # same count: starts the specs not yet running
    client.wait_for_workers(len(cluster.worker_spec))


@contextlib.contextmanager
def _arrow_pool_environ(pool: str) -> Iterator[None]:
    """Arrow reads ARROW_DEFAULT_MEMORY_POOL once, when it loads; a spawned worker loads it while
    re-importing the driver's main module, before Dask's `env=` is applied, so the variable must be
    in the driver's environment when the workers start (and when a nanny restarts one)."""
    old = os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
    if pool != "default":
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = pool
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ARROW_DEFAULT_MEMORY_POOL", None)
        else:
            os.environ["ARROW_DEFAULT_MEMORY_POOL"] = old


class ArrowPoolPlugin(WorkerPlugin):
    """Worker plugin: Arrow allocates from `pool` on this worker (and on workers that join later)."""

    name = "winnow-arrow-pool"

    def __init__(self, pool: str) -> None:
        self.pool = pool

    def setup(self, worker: Any) -> None:
        set_arrow_pool(self.pool)


def set_arrow_pool(pool: str) -> None:
    if pool != "default":
        pa.set_memory_pool(getattr(pa, f"{pool}_memory_pool")())


def use_arrow_pool(client: Any, pool: str) -> None:
    """Set Arrow's allocator in the driver and on every worker of an existing cluster. mimalloc
    (pyarrow's default) keeps the pages of freed shards; the system allocator hands them back (Dask
    sets the workers' MALLOC_TRIM_THRESHOLD_): MinHash dedup's summed peak RSS fell ~25% (bench/LOG.md)."""
    if pool == "default":
        return
    set_arrow_pool(pool)
    client.register_plugin(ArrowPoolPlugin(pool))




class LazyClient:
    """Stands for the Dask client of `cluster_client(cfg)` and starts that cluster on first use.

    The engine decides shard by shard what is up to date from files alone; only a stage with work
    (a fit or a shard to run) touches the client. `on_start(client)` runs once when it starts (the
    CLI prints the dashboard link there)."""

    def __init__(self, cfg: EngineConfig, stack: contextlib.ExitStack, on_start: Any = None):
        self._cfg, self._stack, self._on_start = cfg, stack, on_start
        self._client: Any = None

    @property
    def started(self) -> bool:
        return self._client is not None

    def worker_count_hint(self) -> int | None:
        """How many workers the embedded cluster will have, known without starting it (None for an
        existing scheduler until connected): plans that depend on it stay the same either way."""
        if self._client is not None or self._cfg.scheduler:
            return None
        return (self._cfg.n_workers or os.cpu_count() or 1) + self._cfg.gpu_workers

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._client is None:
            self._client = self._stack.enter_context(cluster_client(self._cfg))
            if self._on_start is not None:
                self._on_start(self._client)
        return getattr(self._client, name)


@contextlib.contextmanager
def lazy_cluster_client(cfg: EngineConfig, on_start: Any = None) -> Iterator[LazyClient]:
    """`cluster_client(cfg)`, started when first used and closed on exit if it was."""
    with contextlib.ExitStack() as stack:
        yield LazyClient(cfg, stack, on_start)
