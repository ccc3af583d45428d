"""The Dask cluster a run works on: an existing scheduler, worker jobs on Slurm (`engine.slurm`), or
an embedded LocalCluster; the last two start only when a stage has work for them (a rerun whose every
shard is up to date starts nothing).

On Slurm the scheduler runs in the driver (where `winnow run` started) and each worker job runs this
venv's python in the driver's working directory. A job that ends under the run (scancel, walltime,
node failure) loses only its tasks: the scheduler reruns them elsewhere and `JobKeeper` submits a
replacement job, so the output is the same as an undisturbed run's.

No dashboard unless asked (`engine.dashboard: true` or an address): the scheduler's HTTP server then
binds a free port on 127.0.0.1, so a second run on the same machine never fights over port 8787.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import dask
import pyarrow as pa
from distributed.diagnostics.plugin import WorkerPlugin

from winnow.pipeline.config import EngineConfig
from winnow.pipeline.errors import WinnowError

log = logging.getLogger(__name__)
DEFAULT_DASHBOARD = ":8787"
NO_DASHBOARD = "127.0.0.1:0"  # the scheduler always serves HTTP; a free loopback port warns nobody
SLURM_LOGS = "winnow-slurm-logs"  # worker jobs' stdout/stderr, under the driver's working directory


class SlurmStartError(WinnowError):
    """No Slurm worker job started in time (a full or wrong queue, an account without access)."""


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
    if cfg.slurm is not None:
        with slurm_client(cfg) as client:
            yield client
        return
    n_workers = cfg.n_workers or os.cpu_count() or 1
    dashboard = _dashboard_or_none(cfg)
    env = worker_env(cfg)
    if cfg.gpu_workers:
        # CPU workers must not see the GPU: with `device: auto` each would load its own model copy
        # onto it. Dask applies `env` in the worker process before it runs a task (so before CUDA
        # initialises there); add_gpu_workers gives the GPU workers their device back.
        env["CUDA_VISIBLE_DEVICES"] = ""
    # each nanny copies the config it was built under into its worker process (restarts included)
    with _arrow_pool_environ(cfg.arrow_memory_pool), dask.config.set(worker_config(cfg)), \
            LocalCluster(n_workers=n_workers, threads_per_worker=cfg.threads_per_worker, processes=True,
                         memory_limit=cfg.memory_limit, dashboard_address=dashboard, env=env,
                         resources=cfg.resources, silence_logs=40) as cluster, \
            Client(cluster) as client:
        set_arrow_pool(cfg.arrow_memory_pool)
        if cfg.gpu_workers:
            add_gpu_workers(cluster, client, cfg.gpu_workers)
        yield client


def _dashboard_or_none(cfg: EngineConfig) -> str:
    """The scheduler's HTTP address: the dashboard asked for, else a free loopback port."""
    wanted = dashboard_address(cfg)
    if wanted is not None:
        import importlib.util

        if importlib.util.find_spec("bokeh") is None:
            log.warning("engine.dashboard is set but bokeh is not installed (pip install 'winnow[dashboard]'): "
                        "the scheduler serves no dashboard pages")
    return wanted or NO_DASHBOARD


def worker_env(cfg: EngineConfig) -> dict[str, str]:
    """Environment every CPU worker gets. Rust thread pools (tokenizers' Rayon) default to every core
    in every worker: with one worker process per core that oversubscribes, so each worker gets the
    threads it was given. A Slurm worker reads `worker_config` from here too (Dask maps
    DASK_DISTRIBUTED__X__Y to distributed.x.y when it loads)."""
    threads = str(cfg.threads_per_worker)
    env = {"RAYON_NUM_THREADS": threads, "RAYON_RS_NUM_CPUS": threads}
    for key, value in worker_config(cfg).items():
        env["DASK_" + key.upper().replace(".", "__").replace("-", "_")] = str(value)
    return env


def worker_config(cfg: EngineConfig) -> dict[str, Any]:
    """Dask settings for the cluster winnow starts (scheduler, nannies, workers), each keeping the GIL
    and the cores for tasks:
    - every server's event-loop watchdog ("tick") wakes every 20 ms by default to time its own loop.
      Each wake takes the GIL and a core from a task: a 2-thread torch generation in a worker ran ~5%
      slower than alone (bench/LOG.md, session 16). Once a second still catches a loop blocked past
      the 3 s warning limit;
    - without a dashboard nobody reads a worker's statistical profile, and taking it costs: every
      10 ms a thread takes the GIL from the task and walks its stack (on a 60-frame Python stack, ~5%
      of a core and a wait for the task; bench/LOG.md)."""
    settings: dict[str, Any] = {"distributed.admin.tick.interval": "1s"}
    if not dashboard_address(cfg):
        settings["distributed.worker.profile.enabled"] = False
    return settings


def slurm_processes(cfg: EngineConfig) -> int:
    """Worker processes per Slurm job: the job's cores in workers of `threads_per_worker` threads."""
    assert cfg.slurm is not None
    return max(1, cfg.slurm.cores // cfg.threads_per_worker)


def slurm_cluster_kwargs(cfg: EngineConfig, cwd: str | None = None) -> dict[str, Any]:
    """SLURMCluster's arguments for `cfg.slurm`: workers run this interpreter (the venv winnow is
    installed in) in the driver's working directory, with the workers' environment exported in the
    job script itself (some sites submit with SBATCH_EXPORT=NONE)."""
    slurm = cfg.slurm
    assert slurm is not None
    cwd = cwd or os.getcwd()
    env = worker_env(cfg)
    if cfg.arrow_memory_pool != "default":
        env["ARROW_DEFAULT_MEMORY_POOL"] = cfg.arrow_memory_pool  # read when Arrow loads (see below)
    prologue = [f"cd {shlex.quote(cwd)}"] + [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    # engine.resources: every worker advertises them (a GPU job's workers: {GPU: 1} with a --gres directive)
    resources = ",".join(f"{k}={v:g}" for k, v in (cfg.resources or {}).items())
    return dict(cores=slurm.cores, processes=slurm_processes(cfg), memory=slurm.memory, walltime=slurm.walltime,
                queue=slurm.queue, account=slurm.account, job_extra_directives=list(slurm.job_extra_directives),
                job_script_prologue=prologue, python=sys.executable, job_name="winnow-worker",
                worker_extra_args=["--resources", resources] if resources else [],
                log_directory=os.path.join(cwd, SLURM_LOGS), silence_logs=40,
                scheduler_options={"dashboard_address": _dashboard_or_none(cfg)})


@contextlib.contextmanager
def slurm_client(cfg: EngineConfig) -> Iterator[Any]:
    """`cfg.slurm.jobs` worker jobs through dask-jobqueue's SLURMCluster, kept at that count while the
    run lasts; returns once the first worker has joined, or raises SlurmStartError naming the queue."""
    from distributed import Client

    SLURMCluster = _import_slurm_cluster()
    slurm = cfg.slurm
    assert slurm is not None
    with _arrow_pool_environ(cfg.arrow_memory_pool), SLURMCluster(**slurm_cluster_kwargs(cfg)) as cluster, \
            Client(cluster) as client:
        cluster.scale(jobs=slurm.jobs)
        keeper = JobKeeper(cluster, slurm.jobs)
        keeper.start()
        try:
            try:
                client.wait_for_workers(1, timeout=slurm.start_timeout_s)
            except TimeoutError as e:
                queue = f"queue (partition) {slurm.queue!r}" if slurm.queue else "the default queue (partition)"
                raise SlurmStartError(
                    f"no Slurm worker job started within {slurm.start_timeout_s:g} s on {queue}"
                    f"{f' with account {slurm.account!r}' if slurm.account else ''}: {_job_states(cluster)}; "
                    f"job logs in {os.path.join(os.getcwd(), SLURM_LOGS)}") from e
            set_arrow_pool(cfg.arrow_memory_pool)
            yield client
        finally:
            keeper.stop()


def _import_slurm_cluster() -> Any:
    """dask_jobqueue's SLURMCluster, imported without its side effect: dask_jobqueue.runner sets
    SIGINT to `sys.exit` when it loads (0.9), which would turn the driver's Ctrl-C into SystemExit and
    fails outright when the import happens off the main thread (a run started in a thread)."""
    import signal
    import threading

    before = signal.getsignal(signal.SIGINT)
    on_main = threading.current_thread() is threading.main_thread()
    install = signal.signal
    if not on_main:
        signal.signal = lambda *args: None  # type: ignore[assignment]  # only while it loads
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as e:
        raise WinnowError("engine.slurm needs dask-jobqueue: pip install 'winnow[slurm]'") from e
    finally:
        signal.signal = install
        if on_main:
            install(signal.SIGINT, before)
    return SLURMCluster


def _job_states(cluster: Any) -> str:
    """What squeue says about the cluster's jobs, for an error message."""
    ids = [j.job_id for j in list(cluster.workers.values()) if getattr(j, "job_id", None)]
    if not ids:
        return "no job was submitted"
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], capture_output=True,
                             text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"jobs {', '.join(ids)} (squeue failed: {e})"
    return f"squeue: {'; '.join(out.splitlines())}" if out else f"jobs {', '.join(ids)} no longer in squeue"


class JobKeeper:
    """Keeps a jobqueue cluster at `jobs` running jobs: a job whose workers had all joined and then
    all left for `grace_s` (scancel, walltime, a failed node) is cancelled for good and replaced under a
    new name. A job still queued (never joined) is left waiting; a worker process its nanny restarts
    is back well within the grace. Runs on the cluster's event loop every `every_s` seconds.

    New names, not the lost job's: SpecCluster itself closes a lost single-process job
    `lost-worker-timeout` after it left, by name, and would close a replacement that reused it."""

    def __init__(self, cluster: Any, jobs: int, grace_s: float = 8.0, every_s: float = 2.0):
        self.cluster, self.jobs, self.grace_s, self.every_s = cluster, jobs, grace_s, every_s
        self.joined: set[str] = set()              # jobs whose workers have connected
        self.missing_since: dict[str, float] = {}  # joined jobs with no worker connected, since when
        self.replaced = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.cluster.loop.add_callback(self._begin)

    def stop(self) -> None:
        if self._task is not None:
            self.cluster.loop.add_callback(self._task.cancel)

    async def _begin(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.check()
            except Exception:  # a failed check must not end the watch; the next one tries again
                log.exception("checking the Slurm worker jobs failed")

    def _members(self, name: str) -> set[str]:
        spec = self.cluster.worker_spec.get(name, {})
        return {f"{name}{suffix}" for suffix in spec.get("group", [""])}

    async def check(self, now: float | None = None) -> int:
        """One look at the jobs; returns how many it replaced."""
        now = time.monotonic() if now is None else now
        cluster = self.cluster
        connected = {str(ws.name) for ws in cluster.scheduler.workers.values()}
        lost = []
        for name in list(cluster.workers):
            if name not in cluster.worker_spec:
                continue  # being scaled away
            if self._members(name) & connected:
                self.joined.add(name)
                self.missing_since.pop(name, None)
            elif name in self.joined and now - self.missing_since.setdefault(name, now) >= self.grace_s:
                lost.append(name)
        for name in lost:
            # the replacement's spec first: new_worker_spec skips names in use, so it gets a new one
            cluster.worker_spec.update(cluster.new_worker_spec())
            job = cluster.workers.pop(name)
            del cluster.worker_spec[name]
            self.joined.discard(name)
            self.missing_since.pop(name, None)
            log.warning("Slurm job %s (%s) lost its workers: submitting a replacement", job.job_id, name)
            with contextlib.suppress(Exception):
                await job.close()  # scancel: a job whose workers vanished may still hold its allocation
        if lost or set(cluster.worker_spec) - set(cluster.workers):
            cluster.scale(jobs=self.jobs)  # starts the specs with no job (the replacements)
        self.replaced += len(lost)
        return len(lost)


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
        existing scheduler until connected): plans that depend on it stay the same either way. On
        Slurm: jobs × worker processes per job, before and after the start."""
        if self._cfg.slurm is not None:  # planned, not joined: jobs may still be queued after the start
            return self._cfg.slurm.jobs * slurm_processes(self._cfg)
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
