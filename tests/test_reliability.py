"""Resume holds under config changes, damaged outputs, new inputs and tampered fit state; writes are durable."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import check_conservation, run, web_files

from winnow.pipeline import manifest as manifest_module
from winnow.pipeline.manifest import read_manifests


def small_corpus(folder: Path, files: int = 3, docs: int = 40) -> str:
    """`files` JSONL files of real web documents, one shard each (a fixed shard size keeps the layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(web_files(1)[0]).read_text().splitlines()]
    for i in range(files):
        part = rows[i * docs:(i + 1) * docs]
        (folder / f"f{i}.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n"
                                                    for r in part))
    return str(folder / "*.jsonl")


def config(pattern: str, out: Path, collapse: bool) -> dict:
    return {"input": {"paths": [pattern], "shard_size_mb": 64}, "output": str(out),
            "stages": [{"normalize": {"collapse_spaces": collapse}}, {"heuristics": {}}]}


def outputs(out: Path) -> dict[str, bytes]:
    """Every kept and rejected Parquet file of a run, by path relative to the output folder."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))
            if "_fit" not in p.parts}


def stage_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name[:2].isdigit())


def test_run_killed_after_rewriting_outputs_under_another_config_is_redone(tmp_path, client, monkeypatch):
    """Config A completes a shard; a run with config B rewrites that shard's files and dies before its
    marker; rerunning A must not trust A's old marker for B's files."""
    from winnow.pipeline.config import resolve
    from winnow.pipeline.engine import run_shard
    from winnow.pipeline.registry import get_stage_class
    from winnow.pipeline.stage import ShardRef

    pattern = small_corpus(tmp_path / "in")
    run(config(pattern, tmp_path / "clean", collapse=False), client)
    run(config(pattern, tmp_path / "out", collapse=False), client)
    normalize_dir = stage_dirs(tmp_path / "out")[1]
    source = sorted(stage_dirs(tmp_path / "out")[0].glob("train-*.parquet"))[0]
    ref = ShardRef(name="part-" + source.stem.split("-")[1], path=str(source), fingerprint="b")
    stage_b = get_stage_class("normalize")(resolve(config(pattern, tmp_path / "x", collapse=True)).stages[0].params)

    def killed(*args, **kwargs):  # the process dies where the marker would be written
        raise SystemExit("killed before the marker")

    monkeypatch.setattr(manifest_module.ShardRecord, "save", killed)
    with pytest.raises(SystemExit):
        run_shard(stage_b, None, ref, str(normalize_dir), "config-b", "input-b")
    monkeypatch.undo()
    run(config(pattern, tmp_path / "out", collapse=False), client)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "clean")
    check_conservation(tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_rejected"])
def test_damaged_shard_is_redone_not_trusted(tmp_path, client, damage):
    pattern = small_corpus(tmp_path / "in")
    run(config(pattern, tmp_path / "clean", collapse=False), client)
    run(config(pattern, tmp_path / "out", collapse=False), client)
    normalize_dir = stage_dirs(tmp_path / "out")[1]
    kept = sorted(normalize_dir.glob("train-*.parquet"))[0]
    data = kept.read_bytes()
    if damage == "truncate":
        kept.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte changed inside the data pages
        kept.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        sorted((normalize_dir / "rejected").glob("*.parquet"))[0].unlink()
    run(config(pattern, tmp_path / "out", collapse=False), client)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "clean")
    manifest = json.loads((normalize_dir / "_manifest.json").read_text())
    assert manifest["skipped_shards"] == len(manifest["shards"]) - 1


def test_one_new_input_file_reruns_only_its_shard(tmp_path, client):
    pattern = small_corpus(tmp_path / "in", files=3)
    run({**config(pattern, tmp_path / "out", collapse=False),
         "stages": [{"normalize": {}}, {"exact_dedup": {}}, {"heuristics": {}}]}, client)
    small_corpus(tmp_path / "more", files=4)
    shutil.copy(tmp_path / "more" / "f3.jsonl", tmp_path / "in" / "f3.jsonl")
    run({**config(pattern, tmp_path / "out", collapse=False),
         "stages": [{"normalize": {}}, {"exact_dedup": {}}, {"heuristics": {}}]}, client)
    manifests = read_manifests(tmp_path / "out")
    skipped = {m["stage"]: (m["skipped_shards"], len(m["shards"])) for _, m in manifests}
    # ingest and exact dedup fit again over all four shards, but only the new shard's work changed
    assert skipped == {"ingest": (3, 4), "normalize": (3, 4), "exact_dedup": (3, 4), "heuristics": (3, 4)}, skipped
    check_conservation(tmp_path / "out")


class PlantedCode:
    """A pickle that runs code when loaded: what anyone who can write the output folder could leave."""

    def __init__(self, proof: str) -> None:
        self.proof = proof

    def __reduce__(self):
        return (os.mkdir, (self.proof,))


def test_fit_state_from_elsewhere_is_refitted_not_unpickled(tmp_path, client):
    pattern = small_corpus(tmp_path / "in")
    cfg = {"input": {"paths": [pattern]}, "output": str(tmp_path / "out"), "stages": [{"exact_dedup": {}}]}
    run(cfg, client)
    states = list((tmp_path / "out").rglob("_fit/state-*.pkl"))
    assert states
    proof = tmp_path / "code-ran"
    for state in states:
        state.write_bytes(pickle.dumps(PlantedCode(str(proof))))
    run(cfg, client)
    assert not proof.exists()
    check_conservation(tmp_path / "out")
    # and a state this machine signed is loaded, not refitted (the signature round-trips)
    from winnow.pipeline.engine import load_signed, save_signed

    save_signed({"a": 1}, tmp_path / "s.pkl")
    assert load_signed(tmp_path / "s.pkl") == {"a": 1}


def test_parquet_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    import pyarrow as pa

    from winnow.pipeline import shards

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(shards.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(shards.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    shards.write_parquet_atomic(pa.table({"x": [1, 2]}), tmp_path / "t.parquet")
    assert events[:2] == ["fsync", "replace"], events


def test_state_digest_is_the_same_in_every_process():
    code = ("from winnow.pipeline.engine import state_digest; import numpy as np; "
            "print(state_digest({'cols': frozenset(['alpha', 'beta', 'gamma', 'delta']), 'x': np.arange(3)}))")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    assert len(digests) == 1


def test_a_kill_while_a_model_trains_leaves_only_files_the_engine_sweeps(tmp_path):
    """fastText's training file and model are written under hidden temporary names: a SIGKILL in the
    middle leaves nothing a resumed run would take as output (the fault sweep found a `tmpXXXX.txt`
    left in a stage folder, which made the resumed output differ), and the engine's sweep removes it."""
    import signal
    import time

    from winnow.pipeline.engine import Engine
    from winnow.pipeline.shards import TEMP_GLOB

    stage_dir = tmp_path / "06-fasttext_quality"
    stage_dir.mkdir()
    code = ("import sys\n"
            "from winnow.pipeline.documents import read_documents\n"
            "from winnow.raters.fasttext_rater import train_fasttext\n"
            "texts = read_documents(sys.argv[2:], 3000)[1]\n"
            "train_fasttext(texts[::2] * 4, texts[1::2] * 4, sys.argv[1] + '/model.bin')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(stage_dir), *web_files(6)], start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while not list(stage_dir.iterdir()) and proc.poll() is None:   # the training file is written first
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in stage_dir.iterdir())
    assert left and all(p.match(TEMP_GLOB) for p in stage_dir.iterdir()), left
    Engine._remove_temp_files(stage_dir)
    assert not list(stage_dir.iterdir())
