"""`winnow run`: a resolved config → the chain of stages on the engine → final outputs.

Final outputs, beside the stage folders:
- `config.resolved.yaml`: the config after defaults and `--set`, as it ran;
- `dataset/`: the final documents (`id`, `text`, every column stages added) as a `datasets`
  save_to_disk folder: the rows of the last stage whose rows are documents (`Stage.emits_documents`;
  when the run ends by packing, the stage before pack);
- `_run.json`: which stage folder is final, its fingerprints, which stage `dataset/` holds, and the
  wall time;
- whatever the last stage's `finalize` writes (pack: `packed/`, `tokens/`, `megatron/`);
An `output:` URL on an object store (`s3://bucket/run`) is worked in a local scratch copy
(storage.RemoteOutput): on start the copy is made to hold exactly the shards the store's markers
vouch for; each shard's objects are put as its task ends, marker last; each stage's side files and
manifest when it ends; the run-level files at the end, `_run.json` last.
- (`report.html` when `outputs.report` is set: the CLI writes it, winnow/cli/run.py, since the report
  sits above the engine.)
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winnow.pipeline.cluster import dashboard_address, lazy_cluster_client
from winnow.pipeline.config import ResolvedConfig, stable_hash
from winnow.pipeline.engine import Engine, StageResult, kept_files
from winnow.pipeline.ingest import IngestStage
from winnow.pipeline.registry import get_stage_class
from winnow.pipeline.remote_output import RemoteOutput
from winnow.pipeline.shards import write_bytes_atomic
from winnow.pipeline.stage import RunOutputs
from winnow.pipeline.storage import StoragePlugin, configure, is_url, local_path, scratch_for


@dataclass
class RunResult:
    out_dir: Path
    stages: list[StageResult]
    final_dir: Path
    seconds: float
    documents_dir: Path | None = None   # the stage `dataset/` was made from (final_dir unless it packs)
    remote: RemoteOutput | None = None   # the output on an object store (out_dir is its local copy)

    @property
    def location(self) -> str:
        """Where the output lives: its URL, or the local folder."""
        return self.remote.url if self.remote is not None else str(self.out_dir)


def build_stages(config: ResolvedConfig) -> list[tuple[str, Any, dict]]:
    """(folder name, stage instance, params as plain data) for ingest and every configured stage."""
    chain = [("00-ingest", IngestStage(config.pipeline.input), config.pipeline.input.model_dump(mode="json"))]
    for spec in config.stages:
        chain.append((spec.dirname, get_stage_class(spec.name)(spec.params), spec.params.model_dump(mode="json")))
    return chain


def run_pipeline(config: ResolvedConfig, force: bool = False, client: Any = None,
                 console: Any = None) -> RunResult:
    """Run a whole config; reuses `client` when given, else starts the configured cluster."""
    t0 = time.perf_counter()
    options = config.pipeline.storage_options
    configure(options)
    remote = None
    if is_url(config.pipeline.output):
        remote = RemoteOutput(config.pipeline.output, str(scratch_for(config.pipeline.output)), options)
        remote.check_reachable()   # a missing bucket or refused credentials: fail before any work
    out = Path(remote.local if remote else local_path(config.pipeline.output))
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(config.to_yaml().encode(), out / "config.resolved.yaml")
    eng_cfg = config.pipeline.engine
    if client is None:
        def announce(started: Any) -> None:
            if options:   # workers open remote inputs with the run's storage_options (also those that restart)
                started.register_plugin(StoragePlugin(options))
            if console is not None and eng_cfg.progress and dashboard_address(eng_cfg) and not eng_cfg.scheduler:
                console.print(f"Dask dashboard: {started.dashboard_link}")

        with lazy_cluster_client(eng_cfg, on_start=announce) as own:
            return run_pipeline(config, force=force, client=own, console=console)
    if options and not hasattr(client, "worker_count_hint"):   # a caller's client (a LazyClient registers on start)
        client.register_plugin(StoragePlugin(options))
    engine = Engine(client, out, seed=config.pipeline.seed, force=force, retries=eng_cfg.retries,
                    progress=eng_cfg.progress and console is not None, console=console,
                    write_removed=config.pipeline.outputs.removed, remote=remote)
    chain = build_stages(config)
    if remote is not None:
        remote.put("config.resolved.yaml")
        if not force:
            remote.hydrate([dirname for dirname, _, _ in chain])
    results = engine.run(chain)
    final_dir = out / results[-1].dirname
    fingerprints = [r.output_fingerprint for r in results[-1].records]
    documents = next(r for r, (_, stage, _) in zip(reversed(results), reversed(chain), strict=True)
                     if stage.emits_documents or r is results[0])
    document_fingerprints = [r.output_fingerprint for r in documents.records]
    if config.pipeline.outputs.dataset:
        write_dataset(out / documents.dirname, out / "dataset", document_fingerprints, force)
    # stage-specific run outputs (pack: tokens/, megatron/) come from the last stage's own hook,
    # so this module knows no stage but ingest, which every run starts with
    chain[-1][1].finalize(RunOutputs(out, final_dir, fingerprints, config.pipeline.outputs, force))
    seconds = time.perf_counter() - t0
    summary = {"final_stage": results[-1].dirname, "stages": [r.dirname for r in results],
               "final_fingerprints": [r.output_fingerprint for r in results[-1].records],
               "dataset_stage": documents.dirname, "dataset_fingerprints": document_fingerprints,
               "wall_seconds": round(seconds, 3)}
    previous = _read_json(out / "_run.json")
    if not any(r.redone for r in results) and {**previous, "wall_seconds": summary["wall_seconds"]} == summary:
        # a rerun that redid nothing: the record keeps the wall time of the run that made the outputs
        summary["wall_seconds"] = previous.get("wall_seconds", summary["wall_seconds"])
    write_bytes_atomic(json.dumps(summary, indent=1).encode(), out / "_run.json")
    if remote is not None:
        remote.publish_tree()
    return RunResult(out, results, final_dir, seconds, out / documents.dirname, remote)


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def write_dataset(stage_dir: Path, target: Path, fingerprints: list[str], force: bool) -> None:
    """A stage's kept shards as a `datasets.load_from_disk` folder (`dataset/`, pack's `packed/`);
    skipped when its inputs are unchanged."""
    marker = target / "_winnow_source.json"
    key = stable_hash(fingerprints)
    if not force and marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return
    import datasets

    files = kept_files(stage_dir)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".dataset-") as tmp:
        datasets.disable_progress_bars()
        if files:
            ds = datasets.Dataset.from_parquet(files, cache_dir=str(Path(tmp) / "cache"))
        else:  # every row was rejected: an empty dataset, not a crash at the end of the run
            ds = datasets.Dataset.from_dict({"id": [], "text": []},
                                            features=datasets.Features({"id": datasets.Value("string"),
                                                                        "text": datasets.Value("string")}))
        staging = Path(tmp) / "dataset"
        ds.save_to_disk(str(staging), **({} if files else {"num_shards": 1}))  # an empty one still needs a shard
        (staging / "_winnow_source.json").write_text(json.dumps({"key": key, "stage": stage_dir.name}))
        del ds
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)

