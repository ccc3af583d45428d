"""`decontaminate` on the real HellaSwag, PIQA and GSM8K files beside the repository, with their items
planted in real web text: pasted verbatim, re-cased, re-punctuated or hard-wrapped over quoted lines,
each is found and named; a short shared phrase is not; `remove` cuts exactly the matching words and
declares every byte; the manifest says which items leaked; a run through the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA, check_conservation, kept_rows, rejected_rows, run, web_files

from winnow.filters.decontaminate import (
    COLUMN,
    DecontaminateParams,
    DecontaminateStage,
    index_size,
    read_benchmark,
    word_spans,
)
from winnow.pipeline.documents import read_documents
from winnow.pipeline.errors import ConfigError
from winnow.pipeline.ngrams import words

EVAL = SHARED_DATA / "eval"
HELLASWAG = {"name": "hellaswag", "paths": [str(EVAL / "hellaswag/*.jsonl")], "fields": ["ctx", "endings"]}
PIQA = {"name": "piqa", "paths": [str(EVAL / "piqa/valid.jsonl")], "fields": ["goal", "sol1", "sol2"]}
GSM8K = {"name": "gsm8k", "paths": [str(EVAL / "gsm8k/test.jsonl")], "fields": ["question", "answer"]}


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fitted():
    stage = DecontaminateStage(DecontaminateParams(benchmarks=[HELLASWAG, PIQA, GSM8K]))
    return stage, stage.fit([], None)


@pytest.fixture(scope="module")
def hosts() -> list[str]:
    """Real web pages (Usenet posts and crawled pages) of at least 200 words, to paste items into."""
    _, texts = read_documents(web_files(2), 400)
    long = [t for t in texts if len(t.split()) >= 200]
    assert len(long) >= 8
    return long[:8]


def paste(host: str, piece: str) -> tuple[str, int]:
    """`piece` inserted as its own paragraph after the host's first paragraph break past 300 characters;
    returns the text and where the piece starts."""
    cut = host.find("\n", 300)
    cut = cut if cut > 0 else len(host) // 2
    before = host[:cut] + "\n\n"
    return before + piece + "\n\n" + host[cut:], len(before)


def apply(stage: DecontaminateStage, state, texts: list[str]):
    table = pa.table({"id": [f"doc{i}" for i in range(len(texts))], "text": texts})
    return stage.apply(table, state)


def test_pasted_items_are_found_through_case_punctuation_and_line_breaks(fitted, hosts):
    stage, state = fitted
    hella = records(EVAL / "hellaswag/hellaswag_val-000.jsonl")
    piqa = records(EVAL / "piqa/valid.jsonl")
    gsm = records(EVAL / "gsm8k/test.jsonl")
    # HellaSwag contexts of one video share sentences: plant one whose text matches only its own item
    h = next(i for i, r in enumerate(hella) if len(words(r["ctx"])) >= 20
             and state.labels(state.index.matches(r["ctx"])) == [f"hellaswag:{i}"])
    story = f"{hella[h]['ctx']} {hella[h]['endings'][hella[h]['label']]}"
    recased = f"{piqa[0]['goal']} {piqa[0]['sol1']}".upper()
    repunctuated = re.sub(r"[.,?]", lambda m: {".": " --", ",": ";", "?": "?!"}[m.group()], gsm[5]["question"])
    repunctuated = "«" + repunctuated.replace("'", "").replace("$", "USD ") + "»"
    wrapped = gsm[9]["question"].split()
    wrapped = "\n> ".join(" ".join(wrapped[i:i + 5]) for i in range(0, len(wrapped), 5))
    assert repunctuated != gsm[5]["question"] and "\n" in wrapped
    planted = [paste(hosts[0], story)[0], paste(hosts[1], recased)[0], paste(hosts[2], repunctuated)[0],
               paste(hosts[3], "> " + wrapped)[0]]
    # near misses: six words of a question, a HellaSwag context cut one word short of an n-gram (its
    # item is longer than 13 words, so it is not matched whole), and the hosts themselves
    six = " ".join(gsm[5]["question"].split()[2:8])
    ctx_words = hella[h]["ctx"].split()
    misses = [paste(hosts[4], six)[0], paste(hosts[5], " ".join(ctx_words[:12]))[0], *hosts]
    kept, rejected, removed = apply(stage, state, planted + misses)
    assert rejected.column("id").to_pylist() == ["doc0", "doc1", "doc2", "doc3"]
    assert set(rejected.column("reason").to_pylist()) == {"contaminated"}
    assert rejected.column(COLUMN).to_pylist() == [[f"hellaswag:{h}"], ["piqa:0"], ["gsm8k:5"], ["gsm8k:9"]]
    assert rejected.column("text").to_pylist() == planted          # rejected rows hold the text they came with
    assert kept.num_rows == len(misses) and removed.num_rows == 0
    assert kept.column(COLUMN).to_pylist() == [[]] * len(misses)
    assert stage.shard_stats(None, kept, rejected) == {"documents:hellaswag": 1.0, "documents:piqa": 1.0,
                                                       "documents:gsm8k": 2.0, "documents": 4.0}


def test_short_values_are_matched_whole_or_skipped_and_counted(fitted, hosts):
    """A PIQA value of 8-12 words is matched whole; one under 8 words is skipped: a PIQA item whose
    three values are all that short is counted as skipped, and its text flags nothing."""
    stage, state = fitted
    piqa = records(EVAL / "piqa/valid.jsonl")
    lengths = [[len(words(r[f])) for f in ("goal", "sol1", "sol2")] for r in piqa]
    counts = state.counts["piqa"]
    assert counts["items"] == len(piqa) == 1838
    assert counts["texts_skipped"] == sum(n < 8 for ls in lengths for n in ls) > 0
    assert counts["items_skipped"] == sum(all(n < 8 for n in ls) for ls in lengths) > 0
    assert counts["items_indexed"] + counts["items_skipped"] == counts["items"]
    whole = next(i for i, ls in enumerate(lengths) if 9 <= ls[0] <= 12
                 and state.labels(state.index.matches(piqa[i]["goal"])) == [f"piqa:{i}"])
    tiny = next(i for i, ls in enumerate(lengths) if 4 <= ls[0] < 8 and all(n < 8 for n in ls))
    one_short = " ".join(piqa[whole]["goal"].split()[:-1])   # the same value less its last word
    texts = [paste(hosts[0], piqa[whole]["goal"])[0], paste(hosts[1], piqa[tiny]["goal"])[0],
             paste(hosts[2], one_short)[0]]
    _, rejected, _ = apply(stage, state, texts)
    assert rejected.column(COLUMN).to_pylist() == [[f"piqa:{whole}"]]
    for name, bench in state.counts.items():
        assert bench["ngrams"] > 0 and bench["items_indexed"] > 0, name
    assert sum(b["ngrams"] for b in state.counts.values()) == len(state.index)


def test_remove_cuts_exactly_the_matching_words_and_declares_every_byte(fitted, hosts):
    _, state = fitted
    stage = DecontaminateStage(DecontaminateParams(benchmarks=[HELLASWAG, PIQA, GSM8K], action="remove"))
    gsm = records(EVAL / "gsm8k/test.jsonl")
    piqa = records(EVAL / "piqa/valid.jsonl")
    question = gsm[0]["question"]                    # "Janet’s ducks lay 16 eggs ... farmers' market?"
    text, at = paste(hosts[0], question)
    sol = piqa[0]["sol1"]
    both, at_q = paste(hosts[1], question)
    both += "\n\nAnd then: " + sol.upper() + " That was all."
    at_s = both.index(sol.upper())
    first, last = re.search(r"[^\W_]", question).start(), len(question) - 1   # the item ends with "?"
    assert question[last] == "?"
    kept, rejected, removed = apply(stage, state, [text, both, hosts[2]])
    assert rejected.num_rows == 0 and kept.num_rows == 3
    new = kept.column("text").to_pylist()
    assert new[0] == text[:at + first] + text[at + last:]       # the words go; the "?" and the host stay
    assert new[1] == both[:at_q] + "?" + both[at_q + len(question):at_s] + "." + both[at_s + len(sol):]
    assert new[2] == hosts[2]
    cut_q, cut_s = question[first:last], sol.upper()[:-1]
    assert removed.to_pylist() == [
        {"id": "doc0", "reason": "decontaminate:gsm8k", "bytes": len(cut_q.encode()), "text": cut_q},
        {"id": "doc1", "reason": "decontaminate:gsm8k", "bytes": len(cut_q.encode()), "text": cut_q},
        {"id": "doc1", "reason": "decontaminate:piqa", "bytes": len(cut_s.encode()), "text": cut_s}]
    lost = [len(a.encode()) - len(b.encode()) for a, b in zip([text, both, hosts[2]], new, strict=True)]
    assert kept.column("decontaminate_bytes_removed").to_pylist() == lost == [
        len(cut_q.encode()), len(cut_q.encode()) + len(cut_s.encode()), 0]
    assert kept.column(COLUMN).to_pylist() == [["gsm8k:0"], ["piqa:0", "gsm8k:0"], []]
    # what is left holds no indexed n-gram
    assert not any(state.index.matches(t) for t in new)


def test_remove_drops_a_document_whose_words_cannot_be_located(fitted, hosts):
    """NFD text: NFKC composes 'e' + U+0301 into one letter, so the letter runs of the original do not
    give the matcher's words; the span cannot be cut exactly, so the document is dropped."""
    _, state = fitted
    stage = DecontaminateStage(DecontaminateParams(benchmarks=[GSM8K], action="remove"))
    question = records(EVAL / "gsm8k/test.jsonl")[3]["question"]
    nfd = "Cafe\u0301 notes. " + paste(hosts[0], question)[0]
    assert word_spans(nfd) is None and word_spans(hosts[0]) is not None
    gsm_state = stage.fit([], None)
    kept, rejected, removed = apply(stage, gsm_state, [nfd, hosts[1]])
    assert rejected.column("reason").to_pylist() == ["contaminated"] and rejected.column("text")[0].as_py() == nfd
    assert kept.num_rows == 1 and removed.num_rows == 0
    assert stage.shard_stats(None, kept, rejected)["unaligned"] == 1.0


def test_benchmarks_read_from_parquet_and_datasets_folders_and_errors_name_what(tmp_path):
    import datasets

    rows = records(EVAL / "gsm8k/test.jsonl")[:50]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gsm.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "gsm_hf"))
    jsonl = tmp_path / "gsm.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = [read_benchmark(DecontaminateParams(benchmarks=[{**GSM8K, "paths": [p]}]).benchmarks[0])
            for p in (str(jsonl), str(tmp_path / "gsm.parquet"), str(tmp_path / "gsm_hf"))]
    assert [b.texts for b in read[1:]] == [read[0].texts] * 2 and len(read[0].texts) == 100
    assert read[0].places[3] == f"{jsonl}:4"

    def error(bench: dict) -> str:
        stage = DecontaminateStage(DecontaminateParams(benchmarks=[bench]))
        with pytest.raises(ConfigError) as e:
            stage.fit([], None)
        return str(e.value)

    msg = error({**GSM8K, "paths": [str(jsonl)], "fields": ["question", "solution"]})
    assert "'gsm8k'" in msg and str(jsonl) in msg and "'solution'" in msg and "line 1" in msg
    msg = error({**GSM8K, "paths": [str(tmp_path / "nothing-*.jsonl")]})
    assert "'gsm8k'" in msg and "nothing-*.jsonl" in msg
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": 18}) + "\n")
    msg = error({**GSM8K, "paths": [str(bad)]})
    assert "'answer'" in msg and "int" in msg and str(bad) in msg
    with pytest.raises(ValueError, match="given twice"):
        DecontaminateParams(benchmarks=[GSM8K, GSM8K])


def test_a_run_drops_what_leaked_and_the_manifest_says_which_items(tmp_path, client):
    """Through the engine: the index is fitted once and broadcast; the manifest names per benchmark the
    items indexed and skipped and which leaked, each with its text and a matching document's id;
    `remove` cuts through the engine's byte accounting; `contaminated_by` loads in `datasets`."""
    import datasets

    from winnow.pipeline.verify import verify_run

    gsm = records(EVAL / "gsm8k/test.jsonl")
    _, hosts = read_documents(web_files(1), 40)
    hosts = [t for t in hosts if len(t.split()) >= 100]
    planted = [{"id": "leak-q7", "text": paste(hosts[0], gsm[7]["question"].lower())[0]},
               {"id": "leak-a7", "text": paste(hosts[1], gsm[7]["answer"])[0]},
               {"id": "leak-q12", "text": paste(hosts[2], gsm[12]["question"])[0]},
               {"id": "near-q12", "text": paste(hosts[3], " ".join(gsm[12]["question"].split()[:6]))[0]}]
    (tmp_path / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in planted))
    benchmarks = [GSM8K, PIQA]
    for action in ("drop", "remove"):
        out = tmp_path / action
        run({"input": {"paths": [str(tmp_path / "planted.jsonl"), *web_files(1)]}, "output": str(out),
             "outputs": {"removed": True},
             "stages": [{"decontaminate": {"benchmarks": benchmarks, "action": action}}]}, client)
        check_conservation(out)
        assert verify_run(out) == []
        m = json.loads((out / "01-decontaminate" / "_manifest.json").read_text())
        g = m["benchmarks"]["gsm8k"]
        assert g["items"] == len(gsm) and g["items_skipped"] == 0 and g["items_leaked"] == 2
        assert g["leaked_items"] == [7, 12]
        assert [(e["item"], e["document"], e["documents"]) for e in g["examples"]] == [
            (7, "leak-q7", 2), (12, "leak-q12", 1)]
        assert g["examples"][0]["text"].startswith(gsm[7]["question"][:60])
        assert g["examples"][0]["where"].endswith("test.jsonl:8")
        assert m["benchmarks"]["piqa"]["items_leaked"] == 0 and m["benchmarks"]["piqa"]["items_skipped"] > 0
        assert m["index"]["ngrams"] == g["ngrams"] + m["benchmarks"]["piqa"]["ngrams"]
        assert 8e6 <= m["index"]["bytes_per_million_ngrams"] <= 16e6     # exact hashes: ~12 B per n-gram
        assert m["totals"]["stats"]["documents:gsm8k"] == 3
        if action == "drop":
            rejected = rejected_rows(out / "01-decontaminate")
            assert sorted(rejected.column("id").to_pylist()) == ["leak-a7", "leak-q12", "leak-q7"]
            assert set(rejected.column("reason").to_pylist()) == {"contaminated"}
            assert "near-q12" in kept_rows(out / "01-decontaminate").column("id").to_pylist()
        else:
            kept = kept_rows(out / "01-decontaminate")
            assert m["totals"]["rejected"] == 0 and set(m["removed_reasons"]) == {"decontaminate:gsm8k"}
            assert m["totals"]["bytes_removed"] == sum(kept.column("decontaminate_bytes_removed").to_pylist()) > 0
            by_id = dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist(), strict=True))
            assert gsm[12]["question"][:-1] not in by_id["leak-q12"] and by_id["near-q12"] == planted[3]["text"]
        loaded = datasets.load_dataset("parquet", data_dir=str(out / "01-decontaminate"), split="train")
        labels = dict(zip(loaded["id"], loaded[COLUMN], strict=True))
        assert labels["near-q12"] == [] and (action == "drop" or labels["leak-q7"] == ["gsm8k:7"])
    assert np.isfinite(index_size(DecontaminateStage(DecontaminateParams(benchmarks=benchmarks)).fit([], None))[
        "bytes_per_million_ngrams"])
