"""heuristics with a `language` column: per-language stop words and tokenizers, rules skipped where they
make no sense (and counted), `per_language` overrides; real pages from the labelled trafilatura set,
their main text from the extract stage's default and their language from lid.176."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import SHARED_DATA, check_conservation, run, web_files

from winnow.filters.extract import ExtractParams, extract_one
from winnow.filters.heuristics import HeuristicsParams, HeuristicsStage
from winnow.filters.language_id import default_model_path, identify

PAGES = SHARED_DATA / "html" / "trafilatura_eval"
# pages every English rule keeps when told their language, and Gopher's English stop words drop
EUROPEAN = {"hundeverein-kreisunna.de.html.gz": "de", "advents-shopping.de.weihnachtsmaerkte.html.gz": "de",
            "archiv.krimiblog.de.2895.html.gz": "de", "sauvonsluniversite.com.spip.html.gz": "fr",
            "bondyblog.fr.paris-8.html.gz": "fr", "unocero.com.marcas.html.gz": "es",
            "larepublica.net-hackers.html.gz": "es"}
CHINESE = "xinhuanet.com.c_1125597921.html.gz"


@pytest.fixture(scope="module")
def pages() -> pa.Table:
    """id, text, language of the pages above (extracted and identified here, as the pipeline would)."""
    urls = {item["file"]: url for url, item in json.loads((PAGES / "evaldata.json").read_text()).items()}
    names = [*EUROPEAN, CHINESE]
    setup = ExtractParams().setup()
    texts = [extract_one(setup, gzip.decompress((PAGES / n).read_bytes()).decode("utf-8"), urls[n]) for n in names]
    languages, _ = identify(texts, default_model_path())
    return pa.table({"id": names, "text": texts, "language": languages})


def test_european_pages_are_identified(pages):
    assert dict(zip(pages.column("id").to_pylist(), pages.column("language").to_pylist(), strict=True)) == \
        {**EUROPEAN, CHINESE: "zh"}


def test_german_french_spanish_pages_meet_their_own_stop_words(pages):
    european = pages.slice(0, len(EUROPEAN))
    # English rules (no language column): Gopher's eight English stop words drop every one of them
    kept, rejected, _ = HeuristicsStage().apply(european.drop_columns(["language"]), None)
    assert kept.num_rows == 0
    assert set(rejected.column("reason").to_pylist()) == {"gopher_quality:gopher_enough_stop_words"}
    # with their language: spaCy's German/French/Spanish stop words, and every other rule passes
    stage = HeuristicsStage()
    kept, rejected, _ = stage.apply(european, None)
    assert rejected.column("reason").to_pylist() == []
    assert kept.column("id").to_pylist() == list(EUROPEAN)
    assert stage.shard_stats(european, kept, rejected) == {}   # nothing skipped for de/fr/es
    # the German filter holds spaCy's German list, not Gopher's English words
    german_words = next(flt for key, flt, _ in stage.filters_for("de") if key == "gopher_quality").stop_words
    assert {"und", "der", "die"} <= german_words and "the" not in german_words


def test_chinese_page_skips_word_rules_and_the_manifest_counts_them(pages):
    chinese = pages.slice(len(EUROPEAN), 1)
    _, rejected, _ = HeuristicsStage().apply(chinese.drop_columns(["language"]), None)
    assert rejected.column("reason").to_pylist() == ["gopher_quality:gopher_short_doc"]   # a clause is a "word"
    stage = HeuristicsStage()
    kept, rejected, _ = stage.apply(chinese, None)
    assert kept.num_rows == 1
    stats = stage.shard_stats(chinese, kept, rejected)
    assert stats["skipped:gopher_quality:gopher_short_doc:zh"] == 1
    assert stats["skipped:gopher_quality:gopher_enough_stop_words:zh"] == 1
    assert stats["skipped:gopher_repetition:top_n_gram:zh"] == 1
    assert stats["skipped:c4_quality:no_terminal_punct:zh"] == 1
    assert stats["skipped:fineweb_quality:short_line_ratio:zh"] == 1
    # the rules that do not count words still apply: a page of one repeated line is dropped
    repeated = pa.table({"id": ["r"], "text": ["新华社北京电，今天的会议在人民大会堂举行。\n" * 20], "language": ["zh"]})
    assert HeuristicsStage().apply(repeated, None)[1].column("reason").to_pylist() == \
        ["gopher_repetition:dup_line_frac"]


def test_per_language_override_applies_to_its_language_only(pages):
    english = _english_rows(40)
    mixed = pa.concat_tables([pages.slice(0, len(EUROPEAN)), english])
    params = HeuristicsParams(gopher_quality={"min_doc_words": 50, "per_language": {"de": {"min_doc_words": 100_000}}})
    kept, rejected, _ = HeuristicsStage(params).apply(mixed, None)
    reasons = dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist(), strict=True))
    assert all(reasons.get(n) == "gopher_quality:gopher_short_doc" for n, lang in EUROPEAN.items() if lang == "de")
    assert all(n in kept.column("id").to_pylist() for n, lang in EUROPEAN.items() if lang != "de")
    # English rows: the same outcome as the filters without any language column
    plain_kept = HeuristicsStage(params).apply(english.drop_columns(["language"]), None)[0]
    english_ids = set(english.column("id").to_pylist())
    assert [i for i in kept.column("id").to_pylist() if i in english_ids] == plain_kept.column("id").to_pylist()
    # a language's own setting wins over a rule's skip: zh with C4's terminal punctuation switched back on
    zh_strict = HeuristicsParams(c4_quality={"per_language": {"zh": {"filter_no_terminal_punct": True}}})
    assert HeuristicsStage(zh_strict).apply(pages.slice(len(EUROPEAN), 1), None)[1].column("reason").to_pylist() \
        == ["c4_quality:too_few_sentences"]


def test_shared_words_match_datatrove_filters_in_every_language(pages):
    """German, French, Spanish and Chinese pages (their own tokenizers, stop words, skipped rules),
    with lines and paragraphs: the rules fed from one word list decide, edit and account as
    datatrove's own filters do (heuristics_rules.py)."""
    table = pa.concat_tables([pages, _english_rows(30)])
    for line_unit in ("line", "paragraph"):
        shared = HeuristicsStage(HeuristicsParams(line_unit=line_unit)).apply(table, None)
        own = HeuristicsStage(HeuristicsParams(line_unit=line_unit, shared_words=False)).apply(table, None)
        assert all(a.equals(b) for a, b in zip(shared, own, strict=True))
        assert shared[0].num_rows > len(EUROPEAN)


def test_english_rows_with_a_language_column_match_no_column():
    english = _english_rows(120)
    with_column = HeuristicsStage().apply(english, None)
    without = HeuristicsStage().apply(english.drop_columns(["language"]), None)
    assert with_column[0].column("text").to_pylist() == without[0].column("text").to_pylist()
    assert with_column[1].column("reason").to_pylist() == without[1].column("reason").to_pylist()
    assert 0 < with_column[0].num_rows < english.num_rows


def test_per_language_arguments_are_checked():
    assert "per_language" in HeuristicsParams.accepted_keys("gopher_quality")
    with pytest.raises(ValueError, match=r"gopher_quality.per_language.de: unknown argument\(s\) \['min_doc_word'\]"):
        HeuristicsParams(gopher_quality={"per_language": {"de": {"min_doc_word": 40}}})
    with pytest.raises(ValueError, match="a mapping of arguments"):
        HeuristicsParams(c4_quality={"per_language": {"fr": 3}})


def test_pipeline_manifest_lists_skipped_rules(tmp_path, client, pages):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pages.to_pylist()))
    out = tmp_path / "out"
    run({"input": {"paths": [str(tmp_path / "in.jsonl")]}, "output": str(out),
         "stages": [{"heuristics": {"gopher_quality": {"per_language": {"de": {"min_doc_words": 30}}}}}]}, client)
    check_conservation(out)
    manifest = json.loads((out / "01-heuristics" / "_manifest.json").read_text())
    stats = manifest["totals"]["stats"]
    assert stats["skipped:gopher_quality:gopher_enough_stop_words:zh"] == 1
    assert not [k for k in stats if k.endswith((":de", ":fr", ":es"))]
    assert manifest["totals"]["rejected"] == 0


def _english_rows(n: int) -> pa.Table:
    """The first `n` documents of the smallest web sample file, labelled English."""
    rows = [json.loads(line) for line in Path(web_files(1)[0]).read_text().splitlines()[:n]]
    return pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows], "language": ["en"] * n})
