"""Word n-gram overlap (pipeline/ngrams.py) on real text: copies found through re-casing, re-punctuation
and re-wrapping; short shared phrases not flagged; short items matched whole; item numbers reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED_DATA

from winnow.pipeline.documents import read_documents
from winnow.pipeline.ngrams import NGRAM, NgramIndex, ngram_hashes, normalize, text_ngrams, word_hashes, words


@pytest.fixture(scope="module")
def wiki():
    ids, texts = read_documents(str(SHARED_DATA / "reference/wikipedia/*.jsonl"), 60)
    return ids, texts


def rewrap(text_words: list[str], width: int) -> str:
    """Words re-cased and hard-wrapped every `width` words, as a quoting mail reader would."""
    lines = [" ".join(text_words[i:i + width]) for i in range(0, len(text_words), width)]
    return "\n> ".join(line.upper() for line in lines)


def test_normalisation_folds_case_punctuation_width_and_whitespace():
    assert normalize("Hello,  WORLD!\n\t—It’s\u00a0ﬁne") == "hello world it s fine"     # NFKC: ligature, nbsp
    assert normalize("ＦＵＬＬ－ｗｉｄｔｈ") == "full width"
    assert normalize("snake_case and e-mail") == "snake case and e mail"
    assert words("") == [] and len(ngram_hashes(word_hashes(words("one two")), NGRAM)) == 0
    # order matters: a permutation of the same words is a different n-gram
    a = word_hashes(list("abcdefghijklm"))
    assert ngram_hashes(a, NGRAM)[0] != ngram_hashes(a[::-1], NGRAM)[0]
    assert len(text_ngrams(" ".join(map(str, range(20))))) == 20 - NGRAM + 1


def test_a_rewrapped_recased_copy_matches_and_a_short_phrase_does_not(wiki):
    ids, texts = wiki
    index = NgramIndex.build(texts)
    assert index.n_items == len(texts) and len(index) > 1000
    host = read_documents(str(SHARED_DATA / "reference/speeches/*.jsonl"), 1)[1][0].split()[:200]
    target = 7
    source = texts[target].split()
    assert len(source) > 60
    # 20 words from the middle of document 7, quoted, upper-cased and wrapped every 6 words, inside a speech
    quoted = host[:100] + [rewrap(source[30:50], 6)] + host[100:]
    assert index.matches(" ".join(quoted)) == {target}
    # the same passage cut to 12 words (one short of an n-gram) in the same place: nothing matches
    phrase = host[:100] + source[30:42] + host[100:]
    assert index.matches(" ".join(phrase)) == set()
    # the host itself shares nothing with the Wikipedia articles
    flags, matched = index.overlaps([" ".join(host), " ".join(quoted), texts[3]])
    assert flags.tolist() == [False, True, True] and matched[1] == {target} and 3 in matched[2]
    assert flags.dtype == np.bool_


def test_items_are_indexed_on_their_own_and_short_items_whole():
    """Benchmark-style items: HellaSwag contexts; one shorter than 13 words is matched whole when it has
    at least `min_words`, skipped and counted when shorter."""
    lines = (SHARED_DATA / "eval/hellaswag/hellaswag_val-000.jsonl").read_text().splitlines()[:40]
    items = [json.loads(line)["ctx"] for line in lines]
    long_items = [i for i, t in enumerate(items) if len(words(t)) >= NGRAM]
    short = "the quick brown fox jumps over the lazy dog"                 # 9 words
    tiny = "a man is sitting"                                             # 4 words
    index = NgramIndex.build(items + [short, tiny], min_words=8)
    assert index.skipped == [len(items) + 1] and index.n_items == len(items) + 2
    # HellaSwag contexts of one video share sentences: take two items that match only themselves
    own = [i for i in long_items if index.matches(items[i]) == {i}]
    assert len(own) >= 10
    a, b = own[2], own[5]
    doc = f"Intro text here. {items[a].upper()} Some filler words in between. {items[b]} The end."
    assert index.matches(doc) == {a, b}
    assert index.matches("Yesterday THE QUICK, brown fox -- jumps over the lazy dog; again.") == {len(items)}
    assert index.matches("the quick brown fox jumps over the lazy cat") == set()      # one word differs
    assert index.matches(f"{tiny} on a bench") == set()                               # too short: skipped
    strict = NgramIndex.build(items + [short], min_words=None)                        # 13-grams only
    assert strict.skipped == [i for i in range(len(items)) if i not in long_items] + [len(items)]
    assert strict.matches(short) == set() and strict.matches(doc) == {a, b}
