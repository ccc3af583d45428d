"""End to end on real web text: conservation, resume that does no work, a SIGKILL mid-stage, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from click.testing import CliRunner
from conftest import REPO, check_conservation, run, web_files

from winnow.pipeline.manifest import read_manifests

STAGES = [{"normalize": {}}, {"exact_dedup": {}}, {"heuristics": {}}]


def config(out: Path, files: list[str], shard_mb: float = 32.0) -> dict:
    return {"input": {"paths": files, "shard_size_mb": shard_mb}, "output": str(out), "stages": STAGES}


def final_shards(out: Path) -> dict[str, bytes]:
    stage = json.loads((out / "_run.json").read_text())["final_stage"]
    return {p.name: p.read_bytes() for p in sorted((out / stage).glob("train-*.parquet"))}


def test_web_subset_end_to_end_and_rerun_does_no_work(tmp_path, client):
    import datasets

    out = tmp_path / "web"
    files = web_files(3)
    result = run(config(out, files), client)
    manifests = check_conservation(out)
    assert [m["stage"] for m in manifests] == ["ingest", "normalize", "exact_dedup", "heuristics"]
    heur = manifests[-1]
    assert 0 < heur["totals"]["kept"] < heur["totals"]["rows_in"]
    assert any(r.startswith("gopher_quality:") for r in heur["reasons"])
    first = final_shards(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    accounts = {p: p.read_bytes() for p in out.glob("*/_manifest.json")}
    run_seconds = json.loads((out / "_run.json").read_text())["wall_seconds"]

    again = run(config(out, files), client)
    assert all(s.skipped == len(s.records) for s in again.stages)       # every shard skipped
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes
    assert final_shards(out) == first
    # the manifests and the run's wall time still describe the run that made the outputs: a rerun that
    # redoes nothing does not put its own ~0 s in the funnel and the report's timings
    assert {p: p.read_bytes() for p in out.glob("*/_manifest.json")} == accounts
    assert json.loads((out / "_run.json").read_text())["wall_seconds"] == run_seconds

    ds = datasets.load_dataset("parquet", data_dir=str(result.final_dir), split="train")
    assert ds.num_rows == heur["totals"]["kept"] and {"id", "text"} <= set(ds.column_names)
    assert datasets.load_from_disk(str(out / "dataset")).num_rows == ds.num_rows
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["stages"][2]["heuristics"]["order"]

    from winnow.cli import cli

    shown = CliRunner().invoke(cli, ["stats", str(out)])
    assert shown.exit_code == 0 and "03-heuristics" in shown.output and "gopher_quality:" in shown.output


def test_changed_params_redo_only_that_stage(tmp_path, client):
    out = tmp_path / "web"
    files = web_files(1)
    run(config(out, files), client)
    cfg = config(out, files)
    cfg["stages"] = STAGES[:2] + [{"heuristics": {"c4_quality": None}}]
    again = run(cfg, client)
    assert [s.skipped == len(s.records) for s in again.stages] == [True, True, True, False]
    check_conservation(out)
    assert "c4_quality" not in " ".join(read_manifests(out)[-1][1]["reasons"])


def test_sigkill_during_heuristics_then_resume_is_byte_identical(tmp_path, client):
    files = web_files(2)[-1:] + web_files(4)[-1:]
    reference = tmp_path / "reference"
    run(config(reference, files, shard_mb=0.25), client)

    killed = tmp_path / "killed"
    cfg_path = tmp_path / "killed.yaml"
    cfg = config(killed, files, shard_mb=0.25)
    cfg["engine"] = {"n_workers": 2, "progress": False}
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "winnow", "run", str(cfg_path), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    markers = killed / "03-heuristics" / "_shards"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if markers.exists() and len(list(markers.glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)                 # the driver, the scheduler and every worker
    proc.wait()
    total = len(list((killed / "02-exact_dedup").glob("train-*.parquet")))
    done_at_kill = len(list(markers.glob("*.json")))
    assert 0 < done_at_kill < total, (done_at_kill, total)
    assert not (killed / "03-heuristics" / "_manifest.json").exists()

    resumed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert b" shards, " not in resumed.stderr                 # --quiet: no progress lines
    heur = read_manifests(killed)[-1][1]
    assert heur["skipped_shards"] >= done_at_kill       # finished shards were not redone
    check_conservation(killed)
    assert final_shards(killed) == final_shards(reference)
    assert not list(killed.rglob(".*.tmp-*"))             # no temporary file left behind


def test_shipped_configs_run_in_full(tmp_path, client, monkeypatch):
    """configs/web.yaml and web-quality.yaml on all of ../shared/data/web, and the embedded
    quickstart, as users run them."""
    from winnow.pipeline.config import load_config
    from winnow.pipeline.run import run_pipeline

    monkeypatch.chdir(REPO)                                 # config paths are relative to the repo root
    for name in ("web", "web-quality", "quickstart"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml", [f"output={tmp_path / name}", "engine.progress=false"])
        result = run_pipeline(cfg, client=client)
        manifests = check_conservation(tmp_path / name)
        assert manifests[-1]["totals"]["kept"] > 0 and result.final_dir.name == f"0{len(manifests) - 1}-{manifests[-1]['stage']}"
        if name.startswith("web"):
            assert manifests[0]["totals"]["rows_in"] == 13_255
        if name == "web-quality":  # fastText keeps the top 30% of what the rule stages left
            assert abs(manifests[-1]["totals"]["rows_out"] / manifests[-1]["totals"]["rows_in"] - 0.3) <= 0.01
        if name == "quickstart":
            check_quickstart(tmp_path / name, result, manifests)


def test_crawl_config_accounts_for_every_response_record(tmp_path, client, monkeypatch):
    """configs/crawl.yaml as a user runs it, on the two real wget WARCs: every response record is a row
    (kept or rejected by a stage), every other record is counted by type, and what survives carries the
    crawl columns, a language and main text without its HTML."""
    from collections import Counter

    from warcio.archiveiterator import ArchiveIterator

    from winnow.pipeline.config import load_config
    from winnow.pipeline.run import run_pipeline

    records = Counter()
    for warc in sorted((REPO.parent / "shared" / "data" / "warc").glob("*.warc.gz")):
        with open(warc, "rb") as f:
            records.update(r.rec_type for r in ArchiveIterator(f))
    monkeypatch.chdir(REPO)
    out = tmp_path / "crawl"
    cfg = load_config(REPO / "configs" / "crawl.yaml", [f"output={out}", "engine.progress=false"])
    result = run_pipeline(cfg, client=client)
    manifests = check_conservation(out)
    assert [m["stage"] for m in manifests] == ["ingest", "extract", "language_id", "url_filter", "normalize",
                                               "exact_dedup", "minhash_dedup", "heuristics"]
    assert manifests[0]["totals"]["rows_in"] == records["response"] > 0
    stats = manifests[0]["totals"]["stats"]
    assert {k: v for k, v in records.items() if k != "response"} == {
        k.removeprefix("warc_").removesuffix("_records"): v for k, v in stats.items() if k.startswith("warc_")}
    final = pa.concat_tables(pq.read_table(p) for p in sorted(result.final_dir.glob("train-*.parquet")))
    assert final.num_rows > 0 and "html" not in final.column_names
    assert {"url", "warc_file", "warc_offset", "language", "language_score"} <= set(final.column_names)
    assert all(len(t) >= 200 for t in final.column("text").to_pylist())


def check_quickstart(out, result, manifests) -> None:
    """The embedded default shows the product: dedup at three levels, a classifier trained on rows of
    the pool itself (the standard library's docstrings), the DataRater meta-learned against those rows,
    tokens packed, and the report written."""
    import numpy as np

    from winnow.pipeline.documents import in_heldout_slice

    stages = [m["stage"] for m in manifests]
    for stage in ("exact_dedup", "minhash_dedup", "line_dedup", "heuristics", "fasttext_quality", "datarater",
                  "tokenize", "pack"):
        assert stage in stages
    by_stage = dict(zip(stages, manifests, strict=True))
    for stage in ("exact_dedup", "minhash_dedup", "line_dedup", "heuristics", "fasttext_quality", "datarater"):
        assert by_stage[stage]["totals"]["rejected"] > 0, stage
    # the DataRater meta-trained with its CPU defaults against the stdlib rows, with its uniform-weight control
    rater = by_stage["datarater"]
    assert rater["meta"]["steps"] == 100 and rater["meta"]["outer"] == "target" and rater["meta"]["outer_documents"] > 20
    assert rater["uniform_control"]["steps"][1] == 100
    from winnow.cli.run import write_report

    report = write_report(out)        # what `winnow run` does with outputs.report: true
    assert report == out / "report.html" and report.stat().st_size > 10_000
    assert (out / "tokens").is_dir() and (out / "megatron").is_dir()
    # positives: the pool's stdlib rows outside the held-out slice, as many as that
    ft_dir = out / f"{stages.index('fasttext_quality'):02d}-fasttext_quality"
    inputs = pa.concat_tables([pq.read_table(f, columns=["id", "package"]) for f in sorted(
        (out / f"{stages.index('fasttext_quality') - 1:02d}-heuristics").glob("train-*.parquet"))])
    stdlib = [i for i, pkg in zip(inputs.column("id").to_pylist(), inputs.column("package").to_pylist(),
                                  strict=True) if pkg == "python"]
    assert by_stage["fasttext_quality"]["positives"] == sum(not in_heldout_slice(i, 0.2) for i in stdlib) > 20
    scored = pa.concat_tables([pq.read_table(f, columns=["id", "package", "fasttext_score"])
                               for f in [*ft_dir.glob("train-*.parquet"), *ft_dir.glob("rejected/*.parquet")]])
    is_std = np.array(scored.column("package").to_pylist()) == "python"
    held = np.array([in_heldout_slice(i, 0.2) for i in scored.column("id").to_pylist()])
    score = np.asarray(scored.column("fasttext_score"))

    def auc(rows: np.ndarray) -> float:   # stdlib docstrings ranked above the other documents
        return float((score[rows][:, None] > score[~is_std][None, :]).mean())

    assert auc(is_std & ~held) > 0.9 and auc(is_std & held) > 0.6, (auc(is_std & ~held), auc(is_std & held))


def test_progress_lines_when_output_is_not_a_terminal(tmp_path):
    """Piped output gets plain progress lines per stage (shards, rows/s, ETA), not a live bar."""
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump({**config(tmp_path / "out", web_files(1), shard_mb=0.1),
                                        "engine": {"n_workers": 1}}))
    done = subprocess.run([sys.executable, "-m", "winnow", "run", str(cfg_path)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = [ln for ln in done.stderr.decode().splitlines() if " shards, " in ln]
    for stage in ("00-ingest", "01-normalize", "03-heuristics"):
        last = [ln for ln in lines if ln.startswith(f"{stage}: ")][-1]
        n = last.split(": ", 1)[1].split(" ", 1)[0]
        assert n.split("/")[0] == n.split("/")[1] and "rows/s" in last and "ETA" in last, last
    assert "\x1b[" not in done.stderr.decode()  # no terminal control codes in a log file
