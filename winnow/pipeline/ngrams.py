"""Word n-gram overlap between documents and a set of protected texts (held-out sets, benchmark items).

One module for every "must not be trained on" check, so `winnow eval`'s held-out decontamination and
the `decontaminate` stage match text the same way:
- text is normalised (Unicode NFKC, lower case, punctuation and symbols turned into spaces,
  whitespace collapsed), so re-casing, re-punctuating and re-wrapping a copy does not hide it;
- each word is hashed with xxh3-64 and a window of `n` words becomes one uint64 (a polynomial in
  the word hashes, wrapping mod 2**64; vectorised, no per-n-gram Python call);
- `NgramIndex.build` indexes texts (items): every n-gram of an item with at least `n` words, and an
  item shorter than `n` but with at least `min_words` words whole (matched as a run of exactly its
  words); shorter items are skipped and counted;
- `NgramIndex.matches` / `overlaps` tell which documents share at least one n-gram with the index
  and which items they matched.
The index keeps sorted uint64 arrays (8 bytes per n-gram plus a 4-byte item number): compact enough
to ship to workers as it is.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import xxhash

NGRAM = 13            # GPT-3 / DCLM / datatrove's NGramsDecont
MIN_ITEM_WORDS = 8    # an item shorter than NGRAM but this long is matched whole
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)   # odd: multiplication mod 2**64 loses no bits
_NOT_WORD = re.compile(r"[^\w\s]|_")


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation and symbols as spaces, whitespace collapsed to one space."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def words(text: str) -> list[str]:
    return normalize(text).split()


def word_hashes(tokens: Sequence[str]) -> np.ndarray:
    """xxh3-64 of each normalised word, as uint64."""
    return np.fromiter((xxhash.xxh3_64_intdigest(w.encode("utf-8", "surrogatepass")) for w in tokens),
                       np.uint64, len(tokens))


def ngram_hashes(hashed_words: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per window of `n` consecutive words (empty when there are fewer than `n`)."""
    count = len(hashed_words) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    out = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):      # Horner: ((w0 * M + w1) * M + w2) ...
            out = out * _MULTIPLIER + hashed_words[j:j + count]
    return out


def text_ngrams(text: str, n: int = NGRAM) -> np.ndarray:
    """The distinct n-gram hashes of a text, sorted."""
    return np.unique(ngram_hashes(word_hashes(words(text)), n))


@dataclass
class NgramIndex:
    """Hashed n-grams of indexed items: per run length, sorted hashes and the item each came from."""

    n: int = NGRAM
    min_words: int | None = MIN_ITEM_WORDS
    hashes: dict[int, np.ndarray] = field(default_factory=dict)   # run length -> sorted uint64
    items: dict[int, np.ndarray] = field(default_factory=dict)    # run length -> int32 item of each hash
    n_items: int = 0
    skipped: list[int] = field(default_factory=list)              # items too short to index

    @classmethod
    def build(cls, texts: Iterable[str], n: int = NGRAM, min_words: int | None = MIN_ITEM_WORDS) -> NgramIndex:
        """Index `texts` (item i = the i-th text). Items of `min_words` <= words < `n` are indexed whole;
        `min_words=None` skips every item shorter than `n`."""
        parts: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        index = cls(n=n, min_words=min_words)
        for item, text in enumerate(texts):
            hashed = word_hashes(words(text))
            if len(hashed) >= n:
                length = n
            elif min_words is not None and len(hashed) >= min_words:
                length = len(hashed)
            else:
                index.skipped.append(item)
                index.n_items = item + 1
                continue
            grams = np.unique(ngram_hashes(hashed, length))
            hs, its = parts.setdefault(length, ([], []))
            hs.append(grams)
            its.append(np.full(len(grams), item, np.int32))
            index.n_items = item + 1
        for length, (hs, its) in parts.items():
            h, i = np.concatenate(hs), np.concatenate(its)
            order = np.argsort(h, kind="stable")
            index.hashes[length], index.items[length] = h[order], i[order]
        return index

    def __len__(self) -> int:
        return int(sum(len(h) for h in self.hashes.values()))

    def positions(self, grams: np.ndarray, length: int) -> np.ndarray:
        """Per hash in `grams`, the position of its first copy in `hashes[length]`, -1 where it is not
        indexed (a binary search in the sorted hashes)."""
        index = self.hashes.get(length)
        if index is None or not len(index) or not len(grams):
            return np.full(len(grams), -1, np.int64)
        pos = np.minimum(np.searchsorted(index, grams), len(index) - 1)
        return np.where(index[pos] == grams, pos, -1)

    def matches(self, text: str) -> set[int]:
        """The items `text` shares at least one indexed run with (empty: none)."""
        return self.matches_words(word_hashes(words(text))) if self.hashes else set()

    def matches_words(self, hashed: np.ndarray) -> set[int]:
        """`matches` for a text already split and hashed (`word_hashes(words(text))`): one pass, many indexes."""
        found: set[int] = set()
        for length, index in self.hashes.items():
            grams = np.unique(ngram_hashes(hashed, length))
            if not len(grams):
                continue
            lo = np.searchsorted(index, grams, "left")
            hi = np.searchsorted(index, grams, "right")
            for a, b in zip(lo[hi > lo], hi[hi > lo], strict=True):
                found.update(self.items[length][a:b].tolist())
        return found

    def overlaps(self, texts: Iterable[str]) -> tuple[np.ndarray, list[set[int]]]:
        """For each text: whether it shares >= 1 indexed run (bool array) and the items it matched."""
        matched = [self.matches(t) for t in texts]
        return np.array([bool(m) for m in matched], bool), matched
