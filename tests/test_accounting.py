"""Byte accounting (issue 20 §1): every byte a stage removes from the rows it keeps is counted by
reason, rejected rows hold the text they came in with, `winnow verify` checks bytes in = kept +
rejected + removed; hard-wrapped documentation survives the quickstart's heuristics as documents;
`dataset/` holds documents and `packed/` the packed rows."""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from conftest import REPO, kept_rows, run, web_files


def _bytes(values: list[str | None]) -> np.ndarray:
    return np.array([len((v or "").encode()) for v in values], np.int64)


def _by_id(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))


def test_normalize_rejects_the_text_it_was_given_and_counts_what_it_cut():
    from winnow.filters.normalize import NormalizeParams, NormalizeStage

    table = pa.table({"id": ["a", "b", "c"],
                      "text": ["Title  \r\n\n\n\nBody\u200b text. ", " \x00\u00a0\n\t", "ﬁne"]})
    kept, rejected, removed = NormalizeStage(NormalizeParams(form="NFKC")).apply(table, None)
    assert rejected.column("text").to_pylist() == [" \x00\u00a0\n\t"]      # as it came in, not ""
    before = _bytes([t for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist(),
                                       strict=True) if i != "b"])
    lost = before - _bytes(kept.column("text").to_pylist())
    assert kept.column("normalize_bytes_removed").to_pylist() == lost.tolist() == [9, 1]
    by_reason = {}
    for r in removed.to_pylist():
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["bytes"]
    assert by_reason == {"normalize:line_endings": 1, "normalize:control": 3, "normalize:trailing_spaces": 2,
                         "normalize:blank_lines": 2, "normalize:trim": 1, "normalize:unicode_form": 1}


def test_heuristics_declares_every_line_c4_removes():
    from winnow.filters.heuristics import HeuristicsParams, HeuristicsStage

    docs = [json.loads(line) for line in Path(web_files(1)[0]).read_text().splitlines()[:150]]
    table = pa.table({"id": [str(d.get("id", i)) for i, d in enumerate(docs)], "text": [d["text"] for d in docs]})
    kept, rejected, removed = HeuristicsStage(HeuristicsParams()).apply(table, None)
    original = _by_id(table)
    assert _by_id(rejected) == {i: original[i] for i in rejected.column("id").to_pylist()}
    lost = _bytes([original[i] for i in kept.column("id").to_pylist()]) - _bytes(kept.column("text").to_pylist())
    assert lost.sum() > 0, "C4 removed no line from 150 web pages: the test data changed"
    assert kept.column("heuristics_bytes_removed").to_pylist() == lost.tolist()
    assert int(np.sum(removed.column("bytes"))) == lost.sum()
    lines = removed.filter(pa.compute.equal(removed.column("reason"), "c4_quality:no_terminal_punct"))
    assert lines.num_rows
    for r in lines.to_pylist()[:50]:   # each piece is a whole line of the page it came from
        assert r["text"] in original[r["id"]].splitlines()


def _stdlib_docstrings(n: int) -> pa.Table:
    """Module, class and function docstrings of the standard library, hard-wrapped as written."""
    ids, texts = [], []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 400 and "\n" in doc:
                    ids.append(f"{path.stem}:{getattr(node, 'name', '')}:{len(ids)}")
                    texts.append(doc)
        if len(ids) >= n:
            break
    return pa.table({"id": ids[:n], "text": texts[:n]})


def test_quickstart_heuristics_keep_docstrings_whole():
    """The quickstart's own heuristics block on hard-wrapped docstrings: at least 90% of the
    documents it keeps keep at least 90% of their bytes (C4's per-line rules shred them)."""
    from winnow.filters.heuristics import HeuristicsParams, HeuristicsStage

    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    block = next(s["heuristics"] for s in config["stages"] if "heuristics" in s)
    table = _stdlib_docstrings(300)
    assert table.num_rows == 300
    kept = HeuristicsStage(HeuristicsParams(**block)).apply(table, None)[0]
    original = _by_id(table)
    before = _bytes([original[i] for i in kept.column("id").to_pylist()])
    share = _bytes(kept.column("text").to_pylist()) / before
    assert kept.num_rows >= 100, kept.num_rows
    assert (share >= 0.9).mean() >= 0.9, f"{(share >= 0.9).mean():.2f} of {kept.num_rows} kept docstrings keep 90%"


def test_paragraph_unit_drops_whole_paragraphs_and_keeps_the_rest_as_written():
    from winnow.filters.heuristics import HeuristicsParams, HeuristicsStage

    text = ("Read a configuration file and return the\nsections it defines, in the order\n"
            "they appear in the file.\n\nExamples\n--------\n    >>> read('x.ini')\n\n"
            "Raises an error when the file is\n    missing or cannot be parsed.")
    params = HeuristicsParams(gopher_quality=None, gopher_repetition=None, fineweb_quality=None,
                              c4_quality={"min_num_sentences": 1}, line_unit="paragraph")
    kept, _, removed = HeuristicsStage(params).apply(pa.table({"id": ["d"], "text": [text]}), None)
    assert kept.column("text").to_pylist() == [text.replace("Examples\n--------\n    >>> read('x.ini')\n\n", "")]
    assert removed.column("text").to_pylist()[0] == "Examples\n--------\n    >>> read('x.ini')"
    assert kept.column("heuristics_bytes_removed")[0].as_py() == len(text.encode()) - len(kept["text"][0].as_py())


def _config(out: Path, files: list[str], stages: list[dict], **outputs) -> dict:
    return {"input": {"paths": files, "shard_size_mb": 0.3}, "output": str(out), "outputs": outputs,
            "stages": stages}


def test_every_stage_conserves_bytes_and_verify_checks_it(tmp_path, client):
    from winnow.pipeline.manifest import read_manifests
    from winnow.pipeline.verify import verify_run

    out = tmp_path / "out"
    stages = [{"normalize": {}}, {"exact_dedup": {}}, {"line_dedup": {"min_count": 2}},
              {"heuristics": {"gopher_quality": {"min_doc_words": 20}}}]
    run(_config(out, web_files(2), stages, removed=True), client)
    manifests = dict(read_manifests(out))
    for dirname, m in manifests.items():
        t = m["totals"]
        assert t["bytes_in"] + t["bytes_added"] == t["bytes_kept"] + t["bytes_rejected"] + t["bytes_removed"], dirname
        assert sum(m["removed_reasons"].values()) == t["bytes_removed"]
        assert t["peak_rss"] == max(s["peak_rss"] for s in m["shards"]) > 10_000_000   # a Python worker: > 10 MB
        assert m["driver_peak_rss"] > 10_000_000
    for dirname, column in (("01-normalize", "normalize_bytes_removed"), ("03-line_dedup", "line_dedup_bytes_removed"),
                            ("04-heuristics", "heuristics_bytes_removed")):
        m = manifests[dirname]
        assert m["totals"]["bytes_removed"] > 0, dirname
        assert int(np.sum(kept_rows(out / dirname).column(column))) == m["totals"]["bytes_removed"]
        files = sorted((out / dirname / "removed").glob("part-*.parquet"))
        assert len(files) == len(m["shards"])
        assert sum(int(np.sum(pq.read_table(f).column("bytes"))) for f in files) == m["totals"]["bytes_removed"]
    assert "c4_quality:no_terminal_punct" in manifests["04-heuristics"]["removed_reasons"]
    assert "line_dedup:duplicate_line" in manifests["03-line_dedup"]["removed_reasons"]
    assert not (out / "02-exact_dedup" / "removed").exists()   # it edits no text
    assert verify_run(out) == []

    # a planted violation: 100 bytes more kept in a marker and its manifest, every total consistent
    stage = out / "04-heuristics"
    marker = stage / "_shards" / "part-00000.json"
    record = json.loads(marker.read_text())
    record["bytes_kept"] += 100
    marker.write_text(json.dumps(record))
    manifest = json.loads((stage / "_manifest.json").read_text())
    manifest["shards"][0]["bytes_kept"] += 100
    manifest["totals"]["bytes_kept"] += 100
    (stage / "_manifest.json").write_text(json.dumps(manifest))
    problems = verify_run(out)
    assert [(p.kind, p.path) for p in problems] == [("conservation", "04-heuristics/_shards/part-00000.json")]
    assert "byte conservation broken" in problems[0].what

    # a removed file is trusted like kept and rejected ones: a changed one is found and redone
    removed = out / "01-normalize" / "removed" / "part-00000.parquet"
    pq.write_table(pq.read_table(removed).slice(1), removed)
    assert any(p.kind == "checksum" and p.path == "01-normalize/removed/part-00000.parquet" for p in verify_run(out))
    run(_config(out, web_files(2), stages, removed=True), client, force=False)
    assert verify_run(out) == []   # the shard was redone (and the planted marker with it, downstream)


def test_dataset_holds_documents_and_packed_rows_their_own_folder(tmp_path, client):
    import datasets

    from winnow.pipeline.verify import verify_run

    out = tmp_path / "out"
    result = run(_config(out, web_files(1), [{"tokenize": {"vocab_size": 300}}, {"pack": {"seq_len": 128}}]),
                 client)
    documents = datasets.load_from_disk(str(out / "dataset"))
    assert "text" in documents.column_names and len(documents) == kept_rows(out / "01-tokenize").num_rows
    packed = datasets.load_from_disk(str(out / "packed"))
    assert "input_ids" in packed.column_names and len(packed) == kept_rows(out / "02-pack").num_rows
    assert json.loads((out / "_run.json").read_text())["dataset_stage"] == "01-tokenize"
    assert result.documents_dir == out / "01-tokenize"
    assert verify_run(out) == []


def test_sft_prompt_joined_by_tokenize_is_declared(tmp_path, client):
    """tokenize with `prompt_field` makes `text` = prompt + response: the bytes the prompt adds are a
    declared (negative) cut, so the byte rule holds and verify passes."""
    from winnow.pipeline.manifest import read_manifests
    from winnow.pipeline.verify import verify_run

    src = tmp_path / "sft.jsonl"
    lines = (REPO.parent / "shared/data/sft/gsm8k/train.jsonl").read_text().splitlines()[:60]
    src.write_text("\n".join(json.dumps({"id": f"q{i}", "question": r["question"], "text": r["answer"]})
                             for i, r in enumerate(map(json.loads, lines))) + "\n")
    out = tmp_path / "out"
    run({"input": {"paths": [str(src)]}, "output": str(out),
         "stages": [{"tokenize": {"vocab_size": 300, "prompt_field": "question"}}]}, client)
    m = dict(read_manifests(out))["01-tokenize"]
    prompts = sum(len(json.loads(line)["question"].encode()) for line in lines)
    assert m["removed_reasons"]["tokenize:prompt_joined"] <= -prompts      # the prompt and its separator
    t = m["totals"]
    assert t["bytes_in"] == t["bytes_kept"] + t["bytes_rejected"] + t["bytes_removed"]
    assert verify_run(out) == []
