"""The heuristics stage's shared-words rules (filters/heuristics_rules.py) and word splitter
(filters/spacy_words.py) against datatrove's own filters and tokenizer: same words, same keep/drop,
same reasons, same edited text, same byte accounting, on real web text and on datatrove's own test
cases (tests/pipeline/filters/test_filters.py at datatrove a649de7, those that hold for 0.10.1)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import WEB
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.utils.word_tokenizers import SpaCyTokenizer

from winnow.filters.heuristics import FILTERS, HeuristicsParams, HeuristicsStage
from winnow.filters.heuristics_rules import TextView, is_ported, shared_rules
from winnow.filters.spacy_words import WarmSpacyTokenizer, import_spacy_without_torch

CLASSES = {"gopher_quality": GopherQualityFilter, "gopher_repetition": GopherRepetitionFilter,
           "c4_quality": C4QualityFilter, "fineweb_quality": FineWebQualityFilter}


def sample_rows(every: int) -> list[dict]:
    """Every `every`-th document of every web sample file (all three sources, long pages included)."""
    rows = []
    for path in sorted(WEB.rglob("*.jsonl")):
        lines = Path(path).read_text().splitlines()
        rows += [json.loads(line) for line in lines[::every]]
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return sample_rows(120)


def datatrove_outcome(filters: list[tuple[str, object]], text: str) -> tuple[bool, str]:
    """datatrove's filters in order on one document: (kept, reason) or (kept, its text after C4)."""
    doc = Document(text=text, id="0")
    for key, flt in filters:
        result = flt.filter(doc)
        ok, why = result if isinstance(result, tuple) else (result, None)
        if not ok:
            return False, f"{key}:{why or 'dropped'}"
    return True, doc.text


def test_the_port_follows_the_installed_datatrove():
    # a datatrove upgrade that changes a filter's source turns the port off (datatrove's `filter`
    # runs instead); this says so here rather than as a silent slowdown
    assert all(is_ported(key) for key in FILTERS)
    stage = HeuristicsStage()
    assert [rules is not None for _, _, _, rules in stage._built(None)] == [True] * 4

    class Stricter(GopherQualityFilter):   # a subclass may change any rule: not ported
        pass

    assert shared_rules("gopher_quality", Stricter()) is None
    assert shared_rules("gopher_quality", GopherQualityFilter()) is not None


def test_rules_match_datatrove_on_web_text(rows):
    """Same keep/drop, reason and C4-edited text as datatrove's own four filters, which split words
    with datatrove's own spaCy tokenizer, on ~110 real web pages."""
    import_spacy_without_torch()
    filters = [(key, CLASSES[key]()) for key in FILTERS]
    reference = [datatrove_outcome(filters, r["text"]) for r in rows]

    table = pa.table({"id": [str(i) for i in range(len(rows))], "text": [r["text"] for r in rows]})
    kept, rejected, _ = HeuristicsStage().apply(table, None)
    got: dict[str, tuple[bool, str]] = {}
    got.update((i, (True, t)) for i, t in zip(kept.column("id").to_pylist(), kept.column("text").to_pylist(),
                                               strict=True))
    got.update((i, (False, r)) for i, r in zip(rejected.column("id").to_pylist(),
                                                rejected.column("reason").to_pylist(), strict=True))
    assert [got[str(i)] for i in range(len(rows))] == reference
    reasons = {why.split(":")[0] for ok, why in reference if not ok}
    assert {"gopher_quality", "gopher_repetition", "c4_quality"} <= reasons
    assert sum(ok for ok, _ in reference) > 15
    assert any(ok and text != r["text"] for (ok, text), r in zip(reference, rows, strict=True))  # C4 edits


@pytest.mark.parametrize("line_unit", ["line", "paragraph"])
def test_shared_words_account_bytes_as_datatrove_filters_do(rows, line_unit):
    """The port and datatrove's own `filter` (shared_words: false) give the same kept text, reasons,
    cuts by rule and removed pieces, with lines and with paragraphs as the unit."""
    table = pa.table({"id": [str(i) for i in range(len(rows))], "text": [r["text"] for r in rows]})
    shared = HeuristicsStage(HeuristicsParams(line_unit=line_unit)).apply(table, None)
    own = HeuristicsStage(HeuristicsParams(line_unit=line_unit, shared_words=False)).apply(table, None)
    for a, b in zip(shared, own, strict=True):
        assert a.equals(b)
    removed = shared[2]
    assert removed.num_rows > 0 and {"c4_quality:no_terminal_punct", "c4_quality:too_few_words"} <= \
        set(removed.column("reason").to_pylist())


def test_words_match_datatrove_tokenizer(rows):
    """The part-cached splitter gives datatrove's words, including where a special case (":)",
    "a.m.", "and/or" …) could match across a space and a stretch of text is tokenized together,
    and its per-part counts add up to the words of each line."""
    import_spacy_without_torch()
    reference = SpaCyTokenizer("en")
    tok = WarmSpacyTokenizer("en", max_parts=2_000)   # small: the cache is rebuilt during the test
    crafted = ["Meet at 10a.m . then :- ) and / or go > < back ) - end : ( x",
               "It 's what I 'd do : 1 . (: ' s ) -\nnext ' em\tline :) ok",
               "A line\u2028another\x1cthird\x85fourth and/or :-)"]
    texts = [r["text"] for r in rows] + crafted
    joined_stretches = 0
    for text in texts:
        words, sizes = tok.words_and_part_sizes(text)
        assert words == reference.word_tokenize(text)
        assert sizes is not None and len(sizes) == len(text.split()) and sum(sizes) == len(words)
        entries = [tok._parts[p] for p in text.split()]
        joined_stretches += any((a[-1], b[0]) in tok._pairs for a, b in zip(entries, entries[1:], strict=False))
    assert joined_stretches >= 3
    view = TextView(crafted[2])
    assert view.line_word_counts(tok) == [len(reference.word_tokenize(line)) for line in crafted[2].splitlines()]


def test_c4_output_word_count_is_that_of_its_text(rows):
    """FineWeb's word count of C4's output comes from the lines C4 kept (re-tokenizing only lines
    whose citations it removed): it equals datatrove's word count of that text."""
    import_spacy_without_torch()
    reference = SpaCyTokenizer("en")
    tok = WarmSpacyTokenizer("en")
    c4 = shared_rules("c4_quality", C4QualityFilter(language=tok))
    checked = edited = 0
    for r in rows + [{"text": "First line has a citation[1] in it.\nSecond line[edit] too, and more words.\n"
                              "Short\nThird line is fine. Fourth sentence here! Fifth one?\n"}]:
        view = TextView(r["text"])
        if c4(view, []) is not True or id(tok) not in view._word_counts:
            continue
        checked += 1
        edited += view.text != r["text"]
        assert view.word_count(tok) == len(reference.word_tokenize(view.text))
    assert checked > 15 and edited > 15


def test_sentence_splits_do_not_count_as_documents():
    """The spaCy pipelines are rebuilt every `reset_every` documents; C4's sentence split of each kept
    line used to count as one, rebuilding the vocabulary (and its warm cache) every ~70 web pages."""
    import_spacy_without_torch()
    tok = WarmSpacyTokenizer("en", reset_every=5)
    tok.word_tokenize("One document here.")
    sentences = tok.tokenizer
    for _ in range(12):
        tok.span_tokenize("A line of a kept paragraph. And its second sentence.")
    tok.word_tokenize("A second document.")
    assert tok.tokenizer is sentences


# datatrove's own test cases: (filter, arguments, text, reason or True)
FRODO = ("I wish it need not have happened in my time,' said Frodo. 'So do I,' said Gandalf, 'and so do all who "
         "live to see such times. But that is not for them to decide. All we have to decide is what to do with "
         "the time that is given us.'")
GOOD_C4 = ("This is a well-written paragraph with several sentences.\nThe content continues with more good "
           "information here.\nAnother important point is being made in this line.\nWe can see that this "
           "document has quality content.\nFinally, the conclusion wraps everything up nicely.\nAn additional "
           "sentence to ensure we pass the threshold.")
GOOD_FINEWEB = ("This is a well-written paragraph that ends with proper punctuation.\nThe content here is "
                "substantial and has meaningful information.\nQuality filtering ensures that only the best "
                "documents pass through.\nEach line here is long enough and ends with a terminal punctuation "
                "mark.\nThis document should pass all the quality checks applied by the filter.")
C4_TAIL = "\nAnother sentence follows this one.\nMore content to fill out the document.\n" \
          "Even more content is needed to pass.\nThe final sentence of the document."
DATATROVE_CASES = [
    ("gopher_repetition", {}, "I am your father.\n" * 4, "dup_line_frac"),
    ("gopher_repetition", {}, "I am your father.\n\n" * 4, "dup_para_frac"),
    ("gopher_repetition", {}, "I am groot.\n\nYou are a wizard.\n\nI am your father.\n\n" + f"{'x' * 30}.\n\n" * 2,
     "dup_para_char_frac"),
    ("gopher_repetition", {}, "I am groot.\nYou are a wizard.\nI am your father.\n" + f"{'x' * 40}.\n" * 2,
     "dup_line_char_frac"),
    ("gopher_repetition", {}, "I am Frank, I am Frank, I am Frank", "top_2_gram"),
    ("gopher_repetition", {}, "I am Frank, you are Jhon. I am Frank. I am Frank you are Jhon", "top_3_gram"),
    ("gopher_repetition", {}, "I am a solo traveller " * 4 + FRODO, "duplicated_5_n_grams"),
    ("gopher_repetition", {}, "", "empty"),
    ("gopher_quality", {"min_doc_words": 10, "max_doc_words": 1000}, "I am too small...", "gopher_short_doc"),
    ("gopher_quality", {"min_doc_words": 10, "max_doc_words": 1000}, "I am " * 20, "gopher_below_avg_threshold"),
    ("gopher_quality", {"min_doc_words": 10, "max_doc_words": 1000}, "interconnection " * 20,
     "gopher_above_avg_threshold"),
    ("gopher_quality", {"min_doc_words": 10, "max_doc_words": 1000}, "# comment " * 20, "gopher_too_many_hashes"),
    ("gopher_quality", {"min_doc_words": 10, "max_doc_words": 1000}, "... comment " * 20,
     "gopher_too_many_ellipsis"),
    ("gopher_quality", {"min_doc_words": 10, "max_doc_words": 1000},
     "the ./!*?<><> apple <?////> orange  ++ interconnection !<>??? have" * 20, "gopher_below_alpha_threshold"),
    ("gopher_quality", {"min_doc_words": 10, "max_doc_words": 1000}, FRODO, True),
    ("c4_quality", {}, GOOD_C4, True),
    ("c4_quality", {}, "This is a sentence with lorem ipsum dolor sit amet.\nAnother sentence with proper "
     "punctuation.\nMore content to fill out the document.\nEven more content is needed to pass the check.\n"
     "The final sentence of the document.", "lorem_ipsum"),
    ("c4_quality", {}, "This is some code with a { bracket." + C4_TAIL, "curly_bracket"),
    ("c4_quality", {}, "Just one sentence.", "too_few_sentences"),
    ("c4_quality", {"min_num_sentences": -1, "min_words_per_line": -1},
     "This site uses cookies for tracking.\nAnother valid line here today.", True),
    ("c4_quality", {"split_paragraph": False}, GOOD_C4, True),
    ("fineweb_quality", {}, "", "empty"),
    ("fineweb_quality", {"line_punct_thr": 0.5}, "No punctuation here\nAnother line without any\nStill nothing",
     "line_punct_ratio"),
    ("fineweb_quality", {"short_line_thr": 0.5, "short_line_length": 30, "line_punct_thr": 0.0},
     "hi.\nbye.\nok.\nno.\nyes.", "short_line_ratio"),
    ("fineweb_quality", {}, GOOD_FINEWEB, True),
    ("fineweb_quality", {"new_line_ratio": 0.1}, "\n".join(["a"] * 50), "line_punct_ratio"),
]


@pytest.mark.parametrize("key,kwargs,text,expected", DATATROVE_CASES)
def test_datatrove_own_cases(key, kwargs, text, expected):
    """Each of datatrove's cases gives its expected result through datatrove's filter and through
    the port (with winnow's word splitter), and the same edited text."""
    import_spacy_without_torch()
    theirs = CLASSES[key](**kwargs)
    doc = Document(text=text, id="0")
    result = theirs.filter(doc)
    mine = CLASSES[key](**kwargs, language=WarmSpacyTokenizer("en"))
    view, outcomes = TextView(text), []
    assert shared_rules(key, mine)(view, outcomes) == result
    assert (result if result is True else result[1]) == expected
    assert view.text == doc.text
    if key == "c4_quality" and result is True and kwargs.get("split_paragraph", True):
        assert len(outcomes) == len(text.splitlines())


def test_datatrove_errors_stay_errors():
    """Where datatrove's Gopher filter divides by zero words (min_doc_words off, an empty page), so
    does the port: an error, not a decision datatrove would not make."""
    import_spacy_without_torch()
    flt = GopherQualityFilter(min_doc_words=None, language=WarmSpacyTokenizer("en"))
    with pytest.raises(ZeroDivisionError), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # numpy's mean of no words, before the division
        GopherQualityFilter(min_doc_words=None).filter(Document(text="   \n  \n", id="0"))
    with pytest.raises(ZeroDivisionError):
        shared_rules("gopher_quality", flt)(TextView("   \n  \n"), [])


def test_a_worker_keeps_one_tokenizer_however_many_shards_it_runs(rows):
    """Each Dask task unpickles a fresh stage; the tokenizers those stages use must not pile up (datatrove's
    load_word_tokenizer cache keeps alive every tokenizer object it is handed: a worker grew ~40 MB a
    shard, to 4.2 GB over a 500k-document run)."""
    import gc
    import pickle

    def alive() -> int:
        gc.collect()
        # type(o), not isinstance: isinstance reads __class__, and some live objects (torch's deprecated
        # reduce_op, when torch was imported by an earlier test) warn on that, which the suite makes an error
        return sum(type(o) is WarmSpacyTokenizer and o.language == "en" for o in gc.get_objects())

    blob = pickle.dumps(HeuristicsStage(HeuristicsParams()))
    table = pa.table({"id": [r["id"] for r in rows[:4]], "text": [r["text"] for r in rows[:4]]})
    pickle.loads(blob).apply(table, None)   # the first may create this thread's tokenizer
    before = alive()
    for _ in range(4):
        pickle.loads(blob).apply(table, None)
    assert alive() == before
