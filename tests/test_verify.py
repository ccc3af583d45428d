"""`winnow verify`: a real run verifies clean; each kind of damage is found and names its file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import run, web_files

from winnow.cli import cli
from winnow.pipeline.manifest import MANIFEST, SHARDS_DIR
from winnow.pipeline.shards import kept_path, rejected_path, write_parquet_atomic
from winnow.pipeline.verify import verify, verify_run

STAGES = [{"normalize": {}}, {"exact_dedup": {}}, {"heuristics": {}}]


@pytest.fixture(scope="module")
def web_run(tmp_path_factory, client) -> Path:
    out = tmp_path_factory.mktemp("verify") / "web"
    run({"input": {"paths": web_files(1), "shard_size_mb": 0.05}, "output": str(out), "stages": STAGES}, client)
    return out


@pytest.fixture
def damaged(web_run, tmp_path) -> Path:
    """A private copy of the clean run to break (copy2 keeps mtimes, so markers stay older than manifests)."""
    return Path(shutil.copytree(web_run, tmp_path / "web"))


def manifest(stage_dir: Path) -> dict:
    return json.loads((stage_dir / MANIFEST).read_text())


def shard_with(stage_dir: Path, rows: int = 2) -> str:
    """A shard of `stage_dir` that kept at least `rows` rows."""
    return next(s["shard"] for s in manifest(stage_dir)["shards"] if s["rows_out"] >= rows)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def cli_verify(out: Path, *args: str):
    return CliRunner().invoke(cli, ["verify", str(out), *args])


def assert_found(out: Path, kind: str, path: str) -> list:
    """verify_run reports a `kind` problem naming `path`, and the CLI prints it and exits 1."""
    problems = verify_run(out)
    assert any(p.kind == kind and p.path == path for p in problems), problems
    shown = cli_verify(out)
    assert shown.exit_code == 1 and path in shown.output, shown.output
    return problems


def test_clean_run_verifies(web_run):
    result = verify(web_run)
    assert result.problems == [] and result.stages == 4
    total = sum(len(manifest(web_run / d)["shards"]) for d in ("00-ingest", "01-normalize", "02-exact_dedup",
                                                                  "03-heuristics"))
    assert result.shards == total > 4
    shown = cli_verify(web_run)
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip().endswith(f"verified 4 stages, {total} shards, {result.rows:,} rows: OK")
    as_json = json.loads(cli_verify(web_run, "--json").output)
    assert as_json["ok"] is True and as_json["problems"] == [] and as_json["shards"] == total


def test_flipped_byte_in_kept_file(damaged):
    stage = damaged / "02-exact_dedup"
    path = kept_path(stage, shard_with(stage))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_found(damaged, "checksum", f"02-exact_dedup/{path.name}")


def test_deleted_rejected_file(damaged):
    stage = damaged / "03-heuristics"
    path = rejected_path(stage, shard_with(stage))
    path.unlink()
    assert_found(damaged, "missing", f"03-heuristics/rejected/{path.name}")


def test_deleted_marker(damaged):
    stage = damaged / "01-normalize"
    shard = shard_with(stage)
    (stage / SHARDS_DIR / f"{shard}.json").unlink()
    problems = assert_found(damaged, "missing", f"01-normalize/{SHARDS_DIR}/{shard}.json")
    # its files now have no marker vouching for them
    assert any(p.kind == "stray" and p.path == f"01-normalize/{kept_path(stage, shard).name}" for p in problems)


def test_edited_marker_count(damaged):
    stage = damaged / "03-heuristics"
    shard = shard_with(stage)
    edit_json(stage / SHARDS_DIR / f"{shard}.json", lambda d: d.update(kept=d["kept"] - 1))
    problems = assert_found(damaged, "conservation", f"03-heuristics/{SHARDS_DIR}/{shard}.json")
    assert any(p.kind == "manifest" and "kept" in p.what for p in problems)


def test_edited_manifest_total(damaged):
    edit_json(damaged / "02-exact_dedup" / MANIFEST, lambda d: d["totals"].update(rows_in=d["totals"]["rows_in"] + 1))
    problems = assert_found(damaged, "totals", f"02-exact_dedup/{MANIFEST}")
    assert any("totals.rows_in" in p.what for p in problems)


def test_duplicate_id_that_only_the_id_check_sees(damaged):
    """A kept file rewritten with one row's id repeated, its marker and manifest entry updated to the new
    checksum: every count and hash agrees, so only the id check can catch it."""
    stage = damaged / "01-normalize"
    shard = shard_with(stage)
    path = kept_path(stage, shard)
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    ids[1] = ids[0]
    fingerprint = write_parquet_atomic(table.set_column(table.schema.get_field_index("id"), "id",
                                                        pa.array(ids, table.schema.field("id").type)), path)
    edit_json(stage / SHARDS_DIR / f"{shard}.json", lambda d: d.update(output_fingerprint=fingerprint))
    edit_json(stage / MANIFEST, lambda m: next(s for s in m["shards"] if s["shard"] == shard)
              .update(output_fingerprint=fingerprint))
    problems = assert_found(damaged, "duplicate_id", f"01-normalize/{path.name}")
    assert {p.kind for p in problems} == {"duplicate_id"}, problems
    assert repr(ids[0]) in problems[0].what


def test_leftover_temp_file(damaged):
    stage = damaged / "03-heuristics"
    name = kept_path(stage, shard_with(stage)).name
    shutil.copy(stage / name, stage / f".{name}.tmp-4242")
    problems = assert_found(damaged, "leftover", f"03-heuristics/.{name}.tmp-4242")
    assert {p.kind for p in problems} == {"leftover"}


def test_stray_kept_file(damaged):
    stage = damaged / "02-exact_dedup"
    shutil.copy(kept_path(stage, shard_with(stage)), stage / "train-99999.parquet")
    assert_found(damaged, "stray", "02-exact_dedup/train-99999.parquet")


def test_rows_in_that_do_not_chain(damaged):
    """rows_in changed consistently (marker, manifest entry and totals, conservation kept via `added`):
    only the comparison with the previous stage's kept rows catches it."""
    stage = damaged / "02-exact_dedup"
    shard = shard_with(stage)

    def change(d: dict) -> None:
        d.update(rows_in=d["rows_in"] + 1, added=d["added"] - 1)

    edit_json(stage / SHARDS_DIR / f"{shard}.json", change)

    def change_manifest(m: dict) -> None:
        change(next(s for s in m["shards"] if s["shard"] == shard))
        change(m["totals"])

    edit_json(stage / MANIFEST, change_manifest)
    problems = assert_found(damaged, "chain", f"02-exact_dedup/{SHARDS_DIR}/{shard}.json")
    assert {p.kind for p in problems} == {"chain"}, problems


def test_stopped_run_is_unfinished_unless_partial(damaged):
    (damaged / "03-heuristics" / MANIFEST).unlink()
    (damaged / "_run.json").unlink()
    problems = assert_found(damaged, "unfinished", f"03-heuristics/{MANIFEST}")
    assert "stopped during this stage" in problems[0].what
    partial = verify(damaged, partial=True)
    assert partial.problems == [] and any("stopped" in n for n in partial.notes)
    assert cli_verify(damaged, "--partial").exit_code == 0
    # a manifest missing in the middle of a run is never a stop
    (damaged / "01-normalize" / MANIFEST).unlink()
    assert any(p.kind == "unfinished" and p.path == f"01-normalize/{MANIFEST}"
               for p in verify_run(damaged, partial=True))


def test_run_outputs_out_of_date(damaged):
    edit_json(damaged / "_run.json", lambda d: d["final_fingerprints"].reverse())
    edit_json(damaged / "dataset" / "_winnow_source.json", lambda d: d.update(key="0" * 24))
    assert_found(damaged, "run", "_run.json")
    assert_found(damaged, "dataset", "dataset/_winnow_source.json")


def test_packed_run_and_token_files(tmp_path, client):
    out = tmp_path / "tok"
    run({"input": {"paths": web_files(1), "shard_size_mb": 0.1}, "output": str(out),
         "stages": [{"normalize": {}}, {"tokenize": {"vocab_size": 512, "train_docs": 500}},
                    {"pack": {"seq_len": 128, "strategy": "best_fit"}}]}, client)
    result = verify(out)
    assert result.problems == [] and result.stages == 4
    assert any("03-pack" in n and "id" in n for n in result.notes)   # packed rows have no id column
    tokens = out / "tokens" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    assert_found(out, "tokens", "tokens/tokens.bin")
    idx = out / "megatron" / "text_document.idx"
    idx.write_bytes(b"NOTMEGATRON" + idx.read_bytes()[11:])
    assert_found(out, "megatron", "megatron/text_document.idx")
    edit_json(out / "02-tokenize" / "tokenizer.json", lambda d: d["model"]["vocab"].update({"zzzz-extra": 99999}))
    assert_found(out, "tokenizer", "02-tokenize/tokenizer.json")
