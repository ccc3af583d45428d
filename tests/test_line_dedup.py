"""line_dedup through the real engine: exact expected texts on small corpora spread over several
shards (so counts that were per shard would fail), and real web text against a plain-Python
reference of the same rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
from conftest import check_conservation, kept_rows, rejected_rows, run, web_files

from winnow.filters.textnorm import TextNorm, normalize_texts
from winnow.pipeline.shards import kept_path

STAGE = "01-line_dedup"


def write_corpus(folder: Path, files: list[list[tuple[str, str]]]) -> str:
    """One JSONL file per inner list (one shard each); returns the glob of them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(files):
        (folder / f"f{i}.jsonl").write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in rows))
    return str(folder / "f*.jsonl")


def run_line_dedup(tmp_path: Path, client, files: list[list[tuple[str, str]]], **params) -> Path:
    out = tmp_path / "out"
    run({"input": {"paths": [write_corpus(tmp_path / "in", files)]}, "output": str(out),
         "outputs": {"dataset": False}, "stages": [{"line_dedup": params}]}, client)
    check_conservation(out)
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / STAGE / "_manifest.json").read_text())


def kept_by_id(out: Path, column: str = "text") -> dict:
    t = kept_rows(out / STAGE)
    return dict(zip(t.column("id").to_pylist(), t.column(column).to_pylist(), strict=True))


# Boilerplate lines shared across documents in different files (shards); "All rights reserved" is
# shared by two documents of one file; d1 repeats a line inside itself only (one document: kept).
SITE = [
    [("a1", "Accept all cookies\n\nThe heron waited in the shallow water for an hour.\nSubscribe to our newsletter\n"),
     ("a2", "Skip to main content\nOur bakery opens at seven and closes when the bread is gone.")],
    [("b1", "Skip to main content\nA storm moved east across the valley before dawn.\nAccept all cookies")],
    [("c1", "Subscribe to our newsletter\nThe library lends telescopes to anyone with a card.\nAll rights reserved"),
     ("c2", "Nobody else writes this sentence.\nAll rights reserved"),
     ("d1", "The same line twice, in one page.\nThe same line twice, in one page.")],
]


def test_removes_lines_seen_in_other_documents_from_all(tmp_path, client):
    out = run_line_dedup(tmp_path, client, SITE, keep_first=False, min_doc_chars=0)
    assert kept_by_id(out) == {
        "a1": "\nThe heron waited in the shallow water for an hour.\n",  # blank lines are never removed
        "a2": "Our bakery opens at seven and closes when the bread is gone.",
        "b1": "A storm moved east across the valley before dawn.",
        "c1": "The library lends telescopes to anyone with a card.",
        "c2": "Nobody else writes this sentence.",
        "d1": "The same line twice, in one page.\nThe same line twice, in one page.",
    }
    assert kept_by_id(out, "line_dedup_removed_units") == {"a1": 2, "a2": 1, "b1": 2, "c1": 2, "c2": 1, "d1": 0}
    assert kept_by_id(out, "line_dedup_removed_chars")["a1"] == len("Accept all cookies") + len(
        "Subscribe to our newsletter")
    m = manifest(out)
    assert len(m["shards"]) == 3
    assert m["frequent_units"] == 4
    assert m["totals"]["stats"]["units_removed"] == 8
    assert m["totals"]["rejected"] == 0


def test_keep_first_keeps_the_first_copy_in_input_order(tmp_path, client):
    out = run_line_dedup(tmp_path, client, SITE, min_doc_chars=0)
    assert kept_by_id(out) == {
        "a1": SITE[0][0][1],
        "a2": SITE[0][1][1],
        "b1": "A storm moved east across the valley before dawn.",
        "c1": "The library lends telescopes to anyone with a card.\nAll rights reserved",
        "c2": "Nobody else writes this sentence.",
        "d1": SITE[2][2][1],
    }
    assert kept_by_id(out, "line_dedup_removed_units") == {"a1": 0, "a2": 0, "b1": 2, "c1": 1, "c2": 1, "d1": 0}
    top = {u["text"]: (u["documents"], u["first"]) for u in manifest(out)["top_units"]}
    assert top["Accept all cookies"] == (2, "part-00000:0")
    assert top["All rights reserved"] == (2, "part-00002:0")


def test_counts_are_global_across_shards(tmp_path, client):
    """Each document sits in its own file: every count inside one shard is 1."""
    files = [[("x", "Share this page on social media\nFirst page about the harbour and its old cranes.")],
             [("y", "Share this page on social media\nSecond page about a mountain pass closed by snow.\n"
                    "Printed from the archive")],
             [("z", "Share this page on social media\nThird page about the orchard and its late pears.\n"
                    "Printed from the archive")]]
    out = run_line_dedup(tmp_path, client, files, min_count=2, keep_first=False, min_doc_chars=0)
    assert kept_by_id(out) == {  # 3 documents > min_count 2: removed; the 2-document line stays
        "x": "First page about the harbour and its old cranes.",
        "y": "Second page about a mountain pass closed by snow.\nPrinted from the archive",
        "z": "Third page about the orchard and its late pears.\nPrinted from the archive",
    }
    assert [u["documents"] for u in manifest(out)["top_units"]] == [3]


def test_paragraph_mode_removes_whole_paragraphs_and_keeps_separators(tmp_path, client):
    footer = "This article may be shared with credit.\nAll photos by the newsroom staff."
    files = [[("p1", f"Rivers in spring carry snowmelt from the high valleys.\n\n{footer}\n\n"
                     "Closing words about the first river story.")],
             [("p2", f"{footer}\n  \n\nMountains hold the cold long after the valleys warm.\n"
                     "This article may be shared with credit.")]]
    out = run_line_dedup(tmp_path, client, files, unit="paragraph", keep_first=False)
    assert kept_by_id(out) == {
        "p1": "Rivers in spring carry snowmelt from the high valleys.\n\nClosing words about the first river story.",
        # the footer's first line is part of a different paragraph here: not a repeated unit
        "p2": "Mountains hold the cold long after the valleys warm.\nThis article may be shared with credit.",
    }
    assert kept_by_id(out, "line_dedup_removed_chars") == {"p1": len(footer), "p2": len(footer)}
    assert manifest(out)["top_units"][0]["text"] == footer


def test_lines_that_differ_in_case_numbers_punctuation_or_accents_are_one_unit(tmp_path, client):
    files = [[("n1", "Cookie Settings: Accept ALL (2 options)\nA page about the lighthouse keeper.\n2019")],
             [("n2", "cookie settings -- accept all [3 options]!\nA page about the ferry timetable.\n2019")],
             [("n3", "Cookie settings: accépt all (15 options)\nA page about the salt marsh birds.\n"
                     "Cookie settings: reject all\n2019")]]
    out = run_line_dedup(tmp_path, client, files, keep_first=False, min_doc_chars=0)
    assert kept_by_id(out) == {
        # "2019" is a number only: never counted under the default min_unit_chars
        "n1": "A page about the lighthouse keeper.\n2019",
        "n2": "A page about the ferry timetable.\n2019",
        "n3": "A page about the salt marsh birds.\nCookie settings: reject all\n2019",
    }
    assert manifest(out)["top_units"][0]["normalized"] == "cookie settings accept all 0 options"


def test_documents_left_too_short_are_rejected(tmp_path, client):
    nav = "Home\nAbout us\nContact"
    files = [[("long", f"{nav}\nA long article about tides, moons and the sailors who learned to read them.")],
             [("short", f"{nav}\nSee you soon."),
              ("empty", nav),
              ("tiny", "Tiny page, nothing repeated.")],  # lost nothing: never rejected by this stage
             [("plain", "One more page with no boilerplate at all, written for the test.")]]  # no state
    out = run_line_dedup(tmp_path, client, files, keep_first=False)
    assert kept_by_id(out) == {"long": "A long article about tides, moons and the sailors who learned to read them.",
                               "tiny": "Tiny page, nothing repeated.",
                               "plain": "One more page with no boilerplate at all, written for the test."}
    rejected = rejected_rows(out / STAGE)
    rows = {r["id"]: r for r in rejected.to_pylist()}
    assert set(rows) == {"short", "empty"}
    assert {r["reason"] for r in rows.values()} == {"too_short_after_line_dedup"}
    assert {r["stage"] for r in rows.values()} == {"line_dedup"}
    assert rows["short"]["text"] == f"{nav}\nSee you soon."  # rejected rows keep their original text
    assert rows["short"]["line_dedup_removed_units"] == 3
    assert rows["empty"]["line_dedup_removed_chars"] == len(nav) - 2
    schemas = {str(pq.read_schema(p)) for p in (out / STAGE).glob("train-*.parquet")}
    assert len(schemas) == 1  # a shard without frequent units has the same columns
    assert manifest(out)["reasons"] == {"too_short_after_line_dedup": 2}


def reference_line_dedup(docs: list[tuple[str, str]], min_doc_chars: int = 50) -> tuple[dict, set]:
    """The rule in plain Python, one document at a time: (kept id -> text, rejected ids)."""
    norm = TextNorm()
    keys = []
    for _, text in docs:
        lines = text.split("\n")
        normed = normalize_texts(lines, norm).to_pylist()
        keys.append([n if n and len(re.sub(r"[\s\d]", "", n)) >= 2 else None for n in normed])
    first: dict[str, int] = {}
    holders: dict[str, set[int]] = {}
    for d, ks in enumerate(keys):
        for k in ks:
            if k is not None:
                first.setdefault(k, d)
                holders.setdefault(k, set()).add(d)
    kept, rejected = {}, set()
    for d, (doc_id, text) in enumerate(docs):
        lines = text.split("\n")
        left = [line for line, k in zip(lines, keys[d], strict=True)
                if k is None or len(holders[k]) == 1 or first[k] == d]
        if len(left) == len(lines):
            kept[doc_id] = text
        elif len("\n".join(left).strip()) < min_doc_chars:
            rejected.add(doc_id)
        else:
            kept[doc_id] = "\n".join(left)
    return kept, rejected


def test_real_web_pages_lose_repeated_boilerplate(tmp_path, client):
    files = web_files(3)
    out = tmp_path / "out"
    run({"input": {"paths": files}, "output": str(out), "outputs": {"dataset": False},
         "stages": [{"line_dedup": {}}]}, client)
    check_conservation(out)
    ingested = kept_rows(out / "00-ingest")
    docs = list(zip(ingested.column("id").to_pylist(), ingested.column("text").to_pylist(), strict=True))
    expected_kept, expected_rejected = reference_line_dedup(docs)
    assert kept_by_id(out) == expected_kept
    assert set(rejected_rows(out / STAGE).column("id").to_pylist()) == expected_rejected
    m = manifest(out)
    stats = m["totals"]["stats"]
    assert stats["units_removed"] > 100 and stats["documents_changed"] > 10
    top = m["top_units"]
    assert len(top) == 20 and top[0]["documents"] > 10
    assert [u["documents"] for u in top] == sorted((u["documents"] for u in top), reverse=True)
    texts = dict(docs)
    shard_ids = {}
    for name in {u["first"].split(":")[0] for u in top}:
        shard_ids[name] = pq.read_table(kept_path(out / "00-ingest", name), columns=["id"]).column("id")
    for u in top:  # each shown text is a line of its first document and normalises to its key
        name, row = u["first"].split(":")
        first_doc = texts[shard_ids[name][int(row)].as_py()]
        assert u["text"] in [line.strip() for line in first_doc.split("\n")]
        assert normalize_texts([u["text"]], TextNorm())[0].as_py() == u["normalized"]
