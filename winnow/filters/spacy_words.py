"""datatrove's spaCy word tokenizer, same tokens, several times faster.

datatrove's `SpaCyTokenizer.word_tokenize` runs the full pipeline (sentencizer included) inside a
`memory_zone`, which throws away every new vocabulary entry after each document, so each call
rebuilds the lexemes of its words; it then builds a Token object per word. Here:

- words come from the tokenizer alone (the sentencizer never changes tokens), in a pipeline whose
  new lexemes compute none of spaCy's ~20 lexical attributes (the tokenizer splits by string rules
  alone; the attributes were a third of its time);
- spaCy splits a text at whitespace and tokenizes each part on its own, and caches a part's tokens,
  but not after the first special case in a document (spaCy #1250: "it's", "(", "a.m." …), so most
  parts of a web page were tokenized anew each time. Here each distinct part is tokenized once and
  kept in a dict; the parts a document has not met yet are tokenized together, one per line. A
  special case can still match tokens across a space (spaCy's matcher runs over the whole document);
  where two neighbouring parts could start such a match, the document is tokenized whole, as before;
- the vocabulary and the dict stay warm and are bounded by rebuilding them every `reset_every`
  documents. Sentence spans (C4's filter) keep the full pipeline.
tests/test_heuristics.py checks the words against datatrove's tokenizer on the web sample, and
tests/test_stages.py the kept set and texts against datatrove's own executor.
"""

from __future__ import annotations

import re
import sys
import threading
from itertools import chain
from operator import itemgetter
from typing import Any

from datatrove.utils.word_tokenizers import SpaCyTokenizer


def import_spacy_without_torch() -> None:
    """Import spaCy so that its thinc backend does not load torch.

    thinc imports torch whenever it is installed (~220 MB resident in each worker: 313 vs 92 MB for
    `import spacy`), though the blank tokenizers the filters use never touch it. While spaCy loads,
    `torch` reads as missing; afterwards it imports normally for any stage that needs it. Where
    torch is already loaded this changes nothing.
    """
    if "spacy" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import spacy  # noqa: F401
    finally:
        del sys.modules["torch"]


class WarmSpacyTokenizer(SpaCyTokenizer):
    def __init__(self, language: str = "en", reset_every: int = 1000, max_parts: int = 200_000):
        super().__init__(language)
        self.reset_every = reset_every
        self.max_parts = max_parts
        self._documents = 0
        self._words_nlp: Any = None
        self._parts: dict[str, tuple[str, ...]] = {}   # a whitespace-free part of a text -> its words
        self._pairs: frozenset[tuple[str, str]] | None = None   # None: no part cache for this tokenizer

    def _nlp(self, text: str, document: bool = True) -> Any:
        """The pipeline with the sentencizer (`document`: false, for sentence spans) or the one that
        only splits words; both, and the part cache, rebuilt every `reset_every` documents."""
        # documents, not calls, count towards a rebuild: C4 asks for the sentences of single lines
        # too, and counting those rebuilt the vocabulary every ~70 documents
        if document:
            self._documents += 1
            if self._documents % self.reset_every == 0:
                self._tokenizer = None  # bound the vocabulary's growth
            if len(self._parts) > self.max_parts:
                self._words_nlp = None   # the words' vocabulary grows with the parts
            if self._words_nlp is None:
                import spacy

                self._words_nlp = spacy.blank(self.language)
                self._words_nlp.vocab.lex_attr_getters = {}   # the sentencizer's is_punct needs them
                self._parts = {}
                self._pairs = special_case_pairs(self._words_nlp.tokenizer)
            nlp = self._words_nlp
        else:
            nlp = self.tokenizer
        nlp.max_length = len(text) + 10
        return nlp

    def word_tokenize(self, text: str) -> list[str]:
        return self.words_and_part_sizes(text)[0]

    def words_and_part_sizes(self, text: str) -> tuple[list[str], list[int] | None]:
        """The words (as datatrove's `word_tokenize`), and how many come from each whitespace-separated
        part of the text (`text.split()`); None for the sizes where the document was tokenized whole."""
        nlp = self._nlp(text)
        if self._pairs is None or "IS_ALPHA" in text:
            return self._whole(nlp, text), None
        parts = text.split()
        cache = self._parts
        new = [p for p in dict.fromkeys(parts) if p not in cache]
        if new:
            self._tokenize_parts(nlp, new)
        entries = list(map(cache.__getitem__, parts))
        if not all(entries):
            return self._whole(nlp, text), None
        pairs = self._pairs
        if not pairs.isdisjoint(zip(map(itemgetter(-1), entries), map(itemgetter(0), entries[1:]), strict=False)):
            self._retokenize_joined(nlp, text, entries)   # a special case might match across a space
        return list(chain.from_iterable(entries)), list(map(len, entries))

    def _retokenize_joined(self, nlp: Any, text: str, entries: list[tuple[str, ...]]) -> None:
        """Replace the words of each run of parts whose neighbours could start a special case across
        a space by the words of that stretch of the text tokenized together (as the whole text would
        be: the matcher's choice among overlapping matches never reaches past such a run)."""
        from spacy.attrs import IDX, LENGTH

        pairs = self._pairs
        linked = [(entries[k][-1], entries[k + 1][0]) in pairs for k in range(len(entries) - 1)] + [False]
        bounds = [(m.start(), m.end()) for m in WHITESPACE_FREE.finditer(text)]
        k = 0
        while k < len(entries):
            if not linked[k]:
                k += 1
                continue
            last = k
            while linked[last]:
                last += 1
            start, end = bounds[k][0], bounds[last][1]
            stretch = text[start:end]
            nlp.max_length = len(stretch) + 10
            words: list[list[str]] = [[] for _ in range(k, last + 1)]
            part = 0
            for i, n in nlp.make_doc(stretch).to_array([IDX, LENGTH]).tolist():
                while start + i >= bounds[k + part][1]:
                    part += 1
                word = stretch[i:i + n].strip()
                if word:
                    words[part].append(word)
            entries[k:last + 1] = [tuple(w) for w in words]
            k = last + 1

    def _tokenize_parts(self, nlp: Any, parts: list[str]) -> None:
        """Tokenize parts one per line: a line break is a token, so no special case spans two parts."""
        from spacy.attrs import IDX, LENGTH

        joined = "\n".join(parts)
        nlp.max_length = len(joined) + 10
        spans = nlp.make_doc(joined).to_array([IDX, LENGTH]).tolist()
        k, end, words = 0, len(parts[0]), []
        for start, n in spans:
            while start >= end:   # past part k: store it, move to the part this token is in
                self._parts[parts[k]] = tuple(words)
                k, words = k + 1, []
                end += 1 + len(parts[k])
            word = joined[start:start + n].strip()   # datatrove's strip_strings: whitespace tokens go
            if word:
                words.append(word)
        self._parts[parts[k]] = tuple(words)
        for part in parts[k + 1:]:   # never: a part always has a token (words_and_part_sizes checks)
            self._parts[part] = ()

    def _whole(self, nlp: Any, text: str) -> list[str]:
        from spacy.attrs import IDX, LENGTH

        nlp.max_length = len(text) + 10
        try:
            doc = nlp.make_doc(text)
        except Exception:
            if "IS_ALPHA" not in text:  # the one string datatrove knows breaks spaCy
                raise
            text = text.replace("IS_ALPHA", "")
            doc = nlp.make_doc(text)
        words = (text[i:i + n].strip() for i, n in doc.to_array([IDX, LENGTH]).tolist())
        return [w for w in words if w]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        nlp = self._nlp(text, document=False)
        try:
            doc = nlp(text)
        except Exception:
            if "IS_ALPHA" not in text:
                raise
            doc = nlp(text.replace("IS_ALPHA", ""))
        return [(sent.start_char, sent.end_char) for sent in doc.sents]


_per_thread = threading.local()


def warm_tokenizer(language: str = "en") -> WarmSpacyTokenizer:
    """This thread's one warm tokenizer for `language`. One per thread (its caches are not safe to share
    between threads), not one per stage object: every Dask task unpickles a fresh stage, and datatrove's
    `load_word_tokenizer` (an unbounded lru_cache keyed by the tokenizer object) keeps every tokenizer it
    is handed alive, so one per stage object grew a worker by its caches' size (~40 MB) at every shard:
    4.2 GB at 500k documents."""
    tokenizers = getattr(_per_thread, "tokenizers", None)
    if tokenizers is None:
        tokenizers = _per_thread.tokenizers = {}
    if language not in tokenizers:
        tokenizers[language] = WarmSpacyTokenizer(language)
    return tokenizers[language]


# a whitespace-separated part of a text, as str.split() and spaCy's tokenizer cut them (both use str.isspace)
WHITESPACE_FREE = re.compile(r"\S+")


def special_case_pairs(tokenizer: Any) -> frozenset[tuple[str, str]] | None:
    """Every two neighbouring tokens of a special case as its affix rules split it: spaCy's matcher
    looks for these token runs over a whole document, across spaces too, so two parts of a text
    tokenize as they do alone unless the last word of one and the first of the next are such a pair.
    None where parts cannot be tokenized alone: a tokenizer other than spaCy's rule-based one, or a
    special case holding whitespace."""
    from spacy.tokenizer import Tokenizer

    if type(tokenizer) is not Tokenizer or any(len(k) > 1 and any(c.isspace() for c in k)
                                                for k in tokenizer.rules):
        return None
    bare = Tokenizer(tokenizer.vocab, rules={}, prefix_search=tokenizer.prefix_search,
                     suffix_search=tokenizer.suffix_search, infix_finditer=tokenizer.infix_finditer,
                     token_match=tokenizer.token_match, url_match=tokenizer.url_match)
    pairs = set()
    for special in tokenizer.rules:
        words = [t.text for t in bare(special)]
        pairs.update(zip(words, words[1:], strict=False))
    return frozenset(pairs)
