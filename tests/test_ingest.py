"""Ingest on bad input: every input line ends up kept or in rejected/ with its file, line and reason."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import check_conservation, run

from winnow.pipeline.errors import InputError
from winnow.pipeline.shards import kept_path, rejected_path

BAD_LINES = [
    b'{"id": "a", "text": "good doc one"}',
    b'{"id": "b", "text": "unterminated',
    b'{"id": "c", "text": "caf\xe9 au lait"}',
    b'{"id": "d", "text": "   "}',
    b'{"id": "e", "text": 123}',
    b'{"id": "f", "body": "no text field"}',
    b'{"id": "a", "text": "another doc reusing id a"}',
    b"",
    b"[1, 2, 3]",
    b'{"text": "a doc without an id"}',
    b'{"id": 7, "text": "numeric id", "extra": {"k": 1}}',
]
EXPECTED_REASONS = {2: "invalid_json", 3: "invalid_utf8", 4: "empty_text", 5: "text_not_string", 6: "missing_text",
                    7: "duplicate_id", 8: "blank_line", 9: "not_an_object", 12: "text_too_long"}


def make_bad_corpus(root):
    root.mkdir(parents=True, exist_ok=True)
    huge = b'{"id": "huge", "text": "' + b"words " * (50 * 2**20 // 6) + b'"}'
    (root / "bad.jsonl").write_bytes(b"\n".join(BAD_LINES + [huge]) + b"\n")
    return root


def ingest(tmp_path, client, **input_cfg):
    out = tmp_path / "out"
    result = run({"input": input_cfg, "output": str(out), "outputs": {"dataset": False}}, client)
    return out, result


def all_rows(stage_dir, rejected=False):
    files = sorted((stage_dir / "rejected").glob("*.parquet")) if rejected else sorted(stage_dir.glob("train-*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


def test_bad_input_is_quarantined_not_lost(tmp_path, client):
    corpus = make_bad_corpus(tmp_path / "in")
    out, _ = ingest(tmp_path, client, paths=[str(corpus / "bad.jsonl")])
    check_conservation(out)
    kept, rejected = all_rows(out / "00-ingest"), all_rows(out / "00-ingest", rejected=True)
    assert kept.num_rows + rejected.num_rows == len(BAD_LINES) + 1
    got = dict(zip(rejected.column("source_line").to_pylist(), rejected.column("reason").to_pylist(), strict=True))
    assert got == EXPECTED_REASONS
    assert set(rejected.column("source_file").to_pylist()) == {str(corpus / "bad.jsonl")}
    raw = dict(zip(rejected.column("source_line").to_pylist(), rejected.column("raw").to_pylist(), strict=True))
    assert raw[3] == BAD_LINES[2]                       # invalid bytes kept exactly
    assert len(raw[12]) > 50_000_000                    # the 50 MB document is not lost either
    assert "first" not in got and kept.column("id").to_pylist() == ["a", f"{corpus / 'bad.jsonl'}:10", "7"]
    assert kept.column("extra").to_pylist() == [None, None, {"k": 1}]  # other columns carried through


def test_strict_mode_stops_at_first_bad_line(tmp_path, client):
    corpus = make_bad_corpus(tmp_path / "in")
    with pytest.raises(InputError) as e:
        ingest(tmp_path, client, paths=[str(corpus / "bad.jsonl")], strict=True)
    assert e.value.file == str(corpus / "bad.jsonl") and e.value.line == 2 and e.value.reason == "invalid_json"


def test_replace_invalid_utf8_keeps_the_line(tmp_path, client):
    corpus = make_bad_corpus(tmp_path / "in")
    out, _ = ingest(tmp_path, client, paths=[str(corpus / "bad.jsonl")], utf8_errors="replace")
    kept = all_rows(out / "00-ingest")
    assert "caf\ufffd au lait" in kept.column("text").to_pylist()


def test_big_file_is_split_and_line_numbers_stay_exact(tmp_path, client):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"document number {i} " + "x" * (i % 50)}) for i in range(3000)]
    lines[1234] = "{broken"
    path.write_text("\n".join(lines) + "\n")
    out, result = ingest(tmp_path, client, paths=[str(path)], shard_size_mb=0.02)
    assert len(result.stages[0].records) > 4            # one file, several shards: every worker gets work
    check_conservation(out)
    kept = all_rows(out / "00-ingest")
    ids = kept.column("id").to_pylist()
    texts = kept.column("text").to_pylist()
    for doc_id, text in zip(ids, texts, strict=True):
        line = int(doc_id.rsplit(":", 1)[1])
        assert text.startswith(f"document number {line - 1} ")
    rejected = all_rows(out / "00-ingest", rejected=True)
    assert rejected.column("source_line").to_pylist() == [1235]


def test_compressed_parquet_hf_and_txt_inputs_with_mixed_schemas(tmp_path, client):
    import datasets

    root = tmp_path / "in"
    root.mkdir()
    with gzip.open(root / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "g1", "text": "gzip doc", "score": 1, "tags": ["x"]}) + "\n")
    (root / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        (json.dumps({"id": "z1", "text": "zstd doc", "score": 0.5, "tags": "y", "lang": "en"}) + "\n").encode()))
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["parquet doc", ""]}), root / "c.parquet")
    datasets.Dataset.from_dict({"id": ["h1"], "text": ["hf doc"]}).save_to_disk(str(tmp_path / "hf"))
    (root / "txt").mkdir()
    (root / "txt" / "one.txt").write_text("a plain text file")
    out, _ = ingest(tmp_path, client, paths=[str(root / "*.jsonl.*"), str(root / "c.parquet"), str(tmp_path / "hf"),
                                              str(root / "txt")])
    check_conservation(out)
    kept = all_rows(out / "00-ingest")
    assert sorted(kept.column("id").to_pylist()) == sorted(["g1", "z1", "p1", "h1", str(root / "txt" / "one.txt")])
    assert kept.schema.field("score").type == pa.float64()           # int and float unify
    assert kept.schema.field("tags").type == pa.string()             # list vs string: stored as JSON text
    assert all_rows(out / "00-ingest", rejected=True).column("reason").to_pylist() == ["empty_text"]
    # the stage folder loads with datasets as it is
    ds = datasets.load_dataset("parquet", data_dir=str(out / "00-ingest"), split="train")
    assert ds.num_rows == 5


def test_missing_input_names_the_pattern(tmp_path, client):
    with pytest.raises(InputError) as e:
        ingest(tmp_path, client, paths=[str(tmp_path / "nothing-*.jsonl")])
    assert e.value.file.endswith("nothing-*.jsonl")
    assert kept_path(tmp_path, "part-00001").name == "train-00001.parquet"
    assert rejected_path(tmp_path, "part-00001").parent.name == "rejected"


def test_text_and_id_fields_are_mapped(tmp_path, client):
    path = tmp_path / "custom.jsonl"
    path.write_text('{"doc_key": "k1", "body": "first body", "text": "an input column named text"}\n'
                    '{"doc_key": "k2", "body": "second body"}\n')
    out, _ = ingest(tmp_path, client, paths=[str(path)], text_field="body", id_field="doc_key")
    kept = all_rows(out / "00-ingest")
    assert kept.column("id").to_pylist() == ["k1", "k2"]
    assert kept.column("text").to_pylist() == ["first body", "second body"]
    assert kept.column("input_text").to_pylist() == ["an input column named text", None]  # kept, renamed


def rejected_by_line(out) -> dict[int, dict]:
    return {r["source_line"]: r for r in all_rows(out / "00-ingest", rejected=True).to_pylist()}


def test_rejected_records_keep_their_own_id_and_a_reason_that_reads_right(tmp_path, client):
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b'{"id": "n1", "text": null}\n'
                     b'{"id": 5, "text": 42}\n'
                     b'{"id": "e1", "text": "  "}\n'
                     b'{"id": "m1", "body": "no text"}\n'
                     b'{"text": null}\n'
                     b'{"id": "l1", "text": ["a", "list"]}\n'
                     b'{"id": "ok", "text": "kept"}\n')
    out, _ = ingest(tmp_path, client, paths=[str(path)])
    got = {line: (r["id"], r["reason"], r["detail"]) for line, r in rejected_by_line(out).items()}
    assert got == {
        1: ("n1", "null_text", "'text' is null"),
        2: ("5", "text_not_string", "'text' is an integer (42), not a string"),
        3: ("e1", "empty_text", "'text' is empty or whitespace"),
        4: ("m1", "missing_text", "no 'text' field"),
        5: (f"{path}:5", "null_text", "'text' is null"),            # no id of its own: where it was
        6: ("l1", "text_not_string", "'text' is a list, not a string"),
    }


def test_parquet_rows_rejected_keep_their_id_and_their_whole_row(tmp_path, client):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"doc_key": ["p1", "p2", "p3"], "body": [None, "kept", "  "], "n": [1, 2, 3]}), path)
    out, _ = ingest(tmp_path, client, paths=[str(path)], text_field="body", id_field="doc_key")
    got = rejected_by_line(out)
    assert {line: (r["id"], r["reason"]) for line, r in got.items()} == {1: ("p1", "null_text"), 3: ("p3", "empty_text")}
    # raw is the row as it was read, text field included (not a copy with the text taken out)
    assert json.loads(got[3]["raw"]) == {"doc_key": "p3", "body": "  ", "n": 3}


def test_duplicate_id_keeps_the_original_bytes_of_its_line(tmp_path, client):
    path = tmp_path / "dups.jsonl"
    copy = b'{ "text" : "caf\\u00e9 again",   "id":"a", "n": 1.50 }'   # spacing, escapes and order of its own
    path.write_bytes(b'{"id": "a", "text": "first"}\n' + copy + b"\r\n")
    out, _ = ingest(tmp_path, client, paths=[str(path)])
    row = rejected_by_line(out)[2]
    assert (row["reason"], row["id"], row["raw"]) == ("duplicate_id", "a", copy)


def test_duplicate_id_in_parquet_keeps_the_row_as_read(tmp_path, client):
    path = tmp_path / "dups.parquet"
    pq.write_table(pa.table({"doc_key": ["a", "a"], "body": ["first", "second"]}), path)
    out, _ = ingest(tmp_path, client, paths=[str(path)], text_field="body", id_field="doc_key")
    row = rejected_by_line(out)[2]
    assert row["reason"] == "duplicate_id" and json.loads(row["raw"]) == {"doc_key": "a", "body": "second"}
