"""datatrove's English spaCy tokenizer, same tokens, about twice as fast.

datatrove's `SpaCyTokenizer.word_tokenize` runs the full pipeline (sentencizer included) inside a
`memory_zone`, which throws away every new vocabulary entry after each document, so each call
rebuilds the lexemes of its words; it then builds a Token object per word. Here, words come from
the tokenizer alone (`make_doc`; the sentencizer never changes tokens) and are cut from the text
by offset; the vocabulary cache stays warm and is bounded by rebuilding the pipeline every
`reset_every` documents. Sentence spans (C4's filter) keep the full pipeline.
tests/test_stages.py checks the kept set and texts against datatrove's own executor.
"""

from __future__ import annotations

import sys

from datatrove.utils.word_tokenizers import SpaCyTokenizer, strip_strings


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
    def __init__(self, language: str = "en", reset_every: int = 1000):
        super().__init__(language)
        self.reset_every = reset_every
        self._calls = 0

    def _nlp(self, text: str):
        self._calls += 1
        if self._calls % self.reset_every == 0:
            self._tokenizer = None  # bound the vocabulary's growth
        nlp = self.tokenizer
        nlp.max_length = len(text) + 10
        return nlp

    def word_tokenize(self, text: str) -> list[str]:
        from spacy.attrs import IDX, LENGTH

        nlp = self._nlp(text)
        try:
            doc = nlp.make_doc(text)
        except Exception:
            if "IS_ALPHA" not in text:  # the one string datatrove knows breaks spaCy
                raise
            text = text.replace("IS_ALPHA", "")
            doc = nlp.make_doc(text)
        offsets = doc.to_array([IDX, LENGTH]).tolist()
        return strip_strings([text[i:i + n] for i, n in offsets])

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        nlp = self._nlp(text)
        try:
            doc = nlp(text)
        except Exception:
            if "IS_ALPHA" not in text:
                raise
            doc = nlp(text.replace("IS_ALPHA", ""))
        return [(sent.start_char, sent.end_char) for sent in doc.sents]
