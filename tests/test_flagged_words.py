"""The `flagged_words` stage: word lists the tests write, planted in real web text (English C4 and
German pages of the shared web sample), through the real engine; ratios, the language column,
phrases, CJK characters, and a list edit rerunning the stage."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import WEB, check_conservation, kept_rows, rejected_rows, run

from winnow.filters.flagged_words import WordList, words
from winnow.pipeline.registry import STAGES, register

if "flagged_words" not in STAGES:  # the registry line is the coordinator's to add; until then the test adds it
    register("flagged_words", "winnow.filters.flagged_words:FlaggedWordsStage")

STAGE = "01-flagged_words"
EN_LIST = "# a test list: one word or phrase a line\ncasino\njackpot  # comment after a word\nonline poker\n\n"
DE_LIST = "Spielbank\nGlücksspiel\n"


def real_documents(path: Path, lang: str, n: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("lang") == lang and 300 <= len(row["text"].split()) <= 1500:
                out.append(row["text"])
                if len(out) == n:
                    break
    assert len(out) == n
    return out


def plant(text: str, phrase: str, times: int) -> str:
    """`phrase` inserted `times` times, spread over `text`'s sentences."""
    parts = text.split(". ")
    step = max(1, len(parts) // times)
    for k in range(times):
        i = min(len(parts) - 1, k * step)
        parts[i] = f"{parts[i]} {phrase}"
    return ". ".join(parts)


def reference_ratio(text: str, flagged: int) -> float:
    return flagged / len(re.findall(r"[^\W_]+(?:['’][^\W_]+)*", text))


def test_word_list_ratio_counts_words_and_phrases():
    listed = WordList.parse(EN_LIST.splitlines())
    assert listed.single == {"casino", "jackpot"} and listed.phrases == {2: {("online", "poker")}}
    text = "The Casino opened. Online poker, online POKER and a jackpot; poker alone is not listed."
    assert listed.ratio(text) == pytest.approx(6 / 15)  # casino + 2 × online poker (2 words) + jackpot
    assert listed.ratio("") == 0.0
    assert words("don't x-rated") == ["don't", "x", "rated"]
    # Chinese and Japanese: one character, one word, in the list and in the text
    zh = WordList.parse(["赌场"])
    assert zh.ratio("欢迎来到赌场") == pytest.approx(2 / 6)
    assert zh.ratio("赌博和市场") == 0.0  # the characters apart are not the word


def write_inputs(tmp_path: Path, rows: list[list[dict]], lists: dict[str, str]) -> tuple[str, dict[str, str]]:
    folder = tmp_path / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(rows):
        (folder / f"f{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shard))
    paths = {}
    for lang, content in lists.items():
        paths[lang] = str(tmp_path / f"{lang}.txt")
        Path(paths[lang]).write_text(content, encoding="utf-8")
    return str(folder / "f*.jsonl"), paths


def corpus() -> list[list[dict]]:
    en = real_documents(WEB / "cc_samples" / "cc_fixture_docs-000.jsonl", "en", 4)
    de = real_documents(WEB / "html_extracted" / "trafilatura_pages-000.jsonl", "de", 2)
    return [
        [{"id": "en_spam", "text": plant(en[0], "casino jackpot", 10), "language": "en"},
         {"id": "en_once", "text": plant(en[1], "casino", 1), "language": "en"},
         {"id": "en_phrase", "text": plant(en[2], "online poker", 8), "language": None}],  # null: default list
        [{"id": "de_spam", "text": plant(de[0], "Glücksspiel in der Spielbank", 8), "language": "de"},
         {"id": "de_casino", "text": plant(de[1], "casino", 10), "language": "de"},  # not on the German list
         {"id": "fr_nolist", "text": plant(en[3], "casino", 30), "language": "fr"}],  # no French list: unchecked
    ]


def run_stage(tmp_path: Path, client, rows, lists, force: bool = False, **params) -> Path:
    paths_glob, list_paths = write_inputs(tmp_path, rows, lists)
    out = tmp_path / "out"
    run({"input": {"paths": [paths_glob]}, "output": str(out), "outputs": {"dataset": False},
         "stages": [{"flagged_words": {"lists": list_paths, **params}}]}, client, force=force)
    check_conservation(out)
    return out


def ratios(out: Path) -> dict:
    tables = [kept_rows(out / STAGE), rejected_rows(out / STAGE)]
    return {i: r for t in tables for i, r in zip(t.column("id").to_pylist(),
                                                  t.column("flagged_words_ratio").to_pylist(), strict=True)}


def test_rejects_documents_over_the_ratio_by_language(tmp_path, client):
    rows = corpus()
    out = run_stage(tmp_path, client, rows, {"en": EN_LIST, "de": DE_LIST})
    rejected = rejected_rows(out / STAGE)
    assert sorted(rejected.column("id").to_pylist()) == ["de_spam", "en_phrase", "en_spam"]
    assert set(rejected.column("reason").to_pylist()) == {"flagged_words"}
    assert sorted(kept_rows(out / STAGE).column("id").to_pylist()) == ["de_casino", "en_once", "fr_nolist"]
    text = {r["id"]: r["text"] for shard in rows for r in shard}
    got = ratios(out)
    assert got["en_spam"] == pytest.approx(reference_ratio(text["en_spam"], 20), rel=1e-5)
    assert got["en_once"] == pytest.approx(reference_ratio(text["en_once"], 1), rel=1e-5) and got["en_once"] < 0.01
    assert got["en_phrase"] == pytest.approx(reference_ratio(text["en_phrase"], 16), rel=1e-5)
    assert got["de_spam"] == pytest.approx(reference_ratio(text["de_spam"], 16), rel=1e-5)
    assert got["de_casino"] == 0.0 and got["fr_nolist"] is None
    m = json.loads((out / STAGE / "_manifest.json").read_text())
    assert m["list_sizes"] == {"en": 3, "de": 2} and m["reasons"] == {"flagged_words": 3}


def test_max_ratio_and_default_language(tmp_path, client):
    rows = [[{"id": r["id"], "text": r["text"]} for r in shard] for shard in corpus()]  # no language column
    out = run_stage(tmp_path, client, rows, {"de": DE_LIST}, default_language="de", max_ratio=0.5)
    assert rejected_rows(out / STAGE).num_rows == 0
    got = ratios(out)
    assert got["de_spam"] > 0.01 and got["en_spam"] == 0.0


def test_editing_a_list_reruns_the_stage(tmp_path, client):
    rows = corpus()
    out = run_stage(tmp_path, client, rows, {"en": EN_LIST, "de": DE_LIST})
    assert "de_casino" in kept_rows(out / STAGE).column("id").to_pylist()
    # the same config, a list that now holds "casino": no --force, yet the German page goes
    out = run_stage(tmp_path, client, rows, {"en": EN_LIST, "de": DE_LIST + "casino\n"})
    assert "de_casino" in rejected_rows(out / STAGE).column("id").to_pylist()


def test_a_missing_list_fails_before_any_shard(tmp_path, client):
    paths_glob, _ = write_inputs(tmp_path, corpus(), {})
    with pytest.raises(Exception, match="does not exist"):
        run({"input": {"paths": [paths_glob]}, "output": str(tmp_path / "out"), "outputs": {"dataset": False},
             "stages": [{"flagged_words": {"lists": {"en": str(tmp_path / "missing.txt")}}}]}, client)
