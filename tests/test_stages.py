"""normalize, exact_dedup and heuristics, each checked against an independent reference."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from conftest import check_conservation, rejected_rows, run, web_files

from winnow.filters.heuristics import HeuristicsStage
from winnow.filters.normalize import NormalizeStage


def test_normalize_rules():
    stage = NormalizeStage()
    table = pa.table({"id": ["a", "b", "c"],
                      "text": ["Cafe\u0301\r\nline\u00a0two  \t\n\n\n\nend\u200b\x07", "  \u200b \n ", "    indented code"]})
    kept, rejected, _ = stage.apply(table, None)
    assert kept.column("text").to_pylist() == ["Caf\u00e9\nline two\n\nend", "indented code"]
    assert rejected.column("id").to_pylist() == ["b"]
    assert rejected.column("reason").to_pylist() == ["empty_after_normalize"]
    assert rejected.column("stage").to_pylist() == ["normalize"]


def test_exact_dedup_is_global_and_keeps_the_first_copy(tmp_path, client):
    docs = [[("a1", "Same text here."), ("a2", "unique A")],
            [("b1", "same   TEXT here."), ("b2", "unique B"), ("b3", "unique A")],
            [("c1", "Same text here.")]]
    for i, rows in enumerate(docs):
        (tmp_path / f"f{i}.jsonl").write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in rows))
    out = tmp_path / "out"
    run({"input": {"paths": [str(tmp_path / "f*.jsonl")]}, "output": str(out), "stages": [{"exact_dedup": {}}]},
        client)
    check_conservation(out)
    rejected = rejected_rows(out / "01-exact_dedup")
    got = sorted(zip(rejected.column("id").to_pylist(), rejected.column("dup_of").to_pylist(),
                     rejected.column("dup_cluster_size").to_pylist(), strict=True))
    assert got == [("b1", "a1", 3), ("b3", "a2", 2), ("c1", "a1", 3)]
    assert set(rejected.column("reason").to_pylist()) == {"exact_duplicate"}


def test_heuristics_match_datatrove_pipeline(tmp_path):
    """Our stage must keep exactly the documents (and texts) that datatrove's own executor keeps."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    source = web_files(1)[0]
    rows = [json.loads(line) for line in Path(source).read_text().rstrip("\n").split("\n")][:300]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n"
                                                        for r in rows))
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(tmp_path / "in")), GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(),
        FineWebQualityFilter(), JsonlWriter(str(tmp_path / "dt"), compression=None)],
        tasks=1, workers=1, logging_dir=str(tmp_path / "logs")).run()
    reference = {}
    for path in (tmp_path / "dt").glob("*.jsonl"):
        for line in path.read_text().rstrip("\n").split("\n"):
            doc = json.loads(line)
            reference[doc["id"]] = doc["text"]

    table = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})
    kept, rejected, _ = HeuristicsStage().apply(table, None)
    assert dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist(), strict=True)) == reference
    assert kept.num_rows + rejected.num_rows == len(rows)
    assert 0 < kept.num_rows < len(rows)
    reasons = set(rejected.column("reason").to_pylist())
    assert all(":" in r and r.split(":")[0] in {"gopher_quality", "gopher_repetition", "c4_quality",
                                                "fineweb_quality"} for r in reasons)
    # rejected rows keep their original text, even when C4 rewrote it before a later filter dropped it
    originals = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    for doc_id, text in zip(rejected.column("id").to_pylist(), rejected.column("text").to_pylist(), strict=True):
        assert originals[doc_id] == text


CURLY_DOC = """The river rose slowly through the night while the town slept under a heavy sky.
By morning the bridge was gone and the farmers on the east bank had no road to the market.
A ferry was organised by the mayor, who borrowed two fishing boats from the coast.
Children were sent to the school on the hill, where the teachers kept them busy with songs.
The water began to fall on the third day, leaving mud and broken fences across every field.
Engineers from the capital arrived a week later with plans for a stronger crossing.
Their first drawing used a template like {span} for the length of each new section.
"""


def test_each_heuristic_reason_is_triggered():
    stage = HeuristicsStage()
    table = pa.table({"id": ["short", "curly"],
                      "text": ["Too short.", CURLY_DOC]})
    _, rejected, _ = stage.apply(table, None)
    assert dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist(), strict=True)) == {
        "short": "gopher_quality:gopher_short_doc", "curly": "c4_quality:curly_bracket"}
