"""Planted corruption for checking a rater: clean passages, a share of them corrupted in known ways.

A rater that cannot tell these apart has learned nothing useful; one that can may still have learned
something else, so this is a floor, not a proof. Used by tests/test_datarater*.py and bench/datarater.py.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np

SOURCES = ["wikipedia/wikitext2_valid_test_articles-000.jsonl", "wikipedia/llamafactory_wiki_demo-000.jsonl",
           "gutenberg_books/gitenberg_books-000.jsonl", "gutenberg_books/gitenberg_books-001.jsonl",
           "gutenberg_books/gitenberg_books-002.jsonl", "speeches/us_presidential_speeches-000.jsonl"]


def reference_passages(reference: Path, n: int, chars: int = 700, per_doc: int = 4, seed: int = 0) -> list[str]:
    """`n` passages of about `chars` characters (cut at whitespace), at most `per_doc` per reference
    document, drawn from Wikipedia, Gutenberg and presidential speeches."""
    passages = []
    for name in SOURCES:
        with open(Path(reference) / name) as f:
            for line in f:
                text = json.loads(line)["text"]
                for k in range(min(per_doc, len(text) // chars)):
                    piece = text[k * chars:(k + 1) * chars + 200]
                    cut = piece.rfind(" ", 0, chars)
                    passages.append(piece[piece.find(" ") + 1:cut if cut > 0 else chars].strip())
    random.Random(seed).shuffle(passages)
    return passages[:n]


def shuffle_words(text: str, rng: random.Random) -> str:
    """The words in a random order, whitespace kept where it was. (Too subtle for a CPU-sized rater:
    even trained supervised on this pool, a 1-layer rater reached AUC 0.58 clean vs word-shuffled.)"""
    parts = re.split(r"(\s+)", text)
    words = parts[0::2]
    rng.shuffle(words)
    parts[0::2] = words
    return "".join(parts)


def shuffle_tokens(text: str, rng: random.Random) -> str:
    """The text cut into subword-sized pieces (1-4 characters) put back in a random order."""
    pieces, start = [], 0
    while start < len(text):
        width = rng.randint(1, 4)
        pieces.append(text[start:start + width])
        start += width
    rng.shuffle(pieces)
    return "".join(pieces)


def random_characters(text: str, rng: random.Random, rate: float = 0.3) -> str:
    """A `rate` fraction of characters replaced by random code points from U+0021..U+00FF."""
    return "".join(chr(rng.randint(0x21, 0xFF)) if rng.random() < rate else c for c in text)


def mojibake(text: str) -> str:
    """UTF-8 bytes read under the wrong code page. Latin-1/cp1252 leave ASCII unchanged and our passages
    are >99% ASCII, so the bytes are read as EBCDIC (cp500): every character changes, consistently."""
    return text.encode("utf-8").decode("cp500")


def word_soup(text: str, vocabulary: list[str], rng: random.Random) -> str:
    """As many words as `text` has, each drawn uniformly from `vocabulary` (the clean passages' distinct
    words): every word is real, the order and the frequencies are not."""
    return " ".join(rng.choice(vocabulary) for _ in text.split())


def random_tokens(text: str, pieces: list[str], rng: random.Random) -> str:
    """About as many characters as `text`, made of `pieces` (a tokenizer's vocabulary, decoded) drawn
    uniformly: nothing in it is predictable from what came before."""
    out, size = [], 0
    while size < len(text):
        piece = rng.choice(pieces)
        out.append(piece)
        size += len(piece)
    return "".join(out)


def junk_pool(reference: Path, n: int, kind: str, junk_frac: float = 0.1, seed: int = 0,
              pieces: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(texts, is_clean): clean reference passages with a `junk_frac` share replaced by `word_soup` (kind
    "soup", words from the clean passages' vocabulary) or `random_tokens` (kind "tokens", from `pieces`)."""
    rng = random.Random(seed)
    texts = reference_passages(reference, n, seed=seed)
    vocabulary = sorted({w for t in texts for w in t.split()})
    junk = set(rng.sample(range(n), int(junk_frac * n)))
    for i in sorted(junk):
        if kind == "soup":
            texts[i] = word_soup(texts[i], vocabulary, rng)
        elif kind == "tokens":
            if not pieces:
                raise ValueError("random tokens need the pieces to draw from")
            texts[i] = random_tokens(texts[i], pieces, rng)
        else:
            raise ValueError(f"unknown junk kind {kind!r}: soup or tokens")
    return texts, np.array([i not in junk for i in range(n)])


def planted_pool(reference: Path, n: int, corrupt_frac: float = 0.3, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, is_clean (n,) bool, kind per text): a `corrupt_frac` of passages corrupted, kinds in turn."""
    rng = random.Random(seed)
    texts = reference_passages(reference, n, seed=seed)
    kinds = ["clean"] * n
    corrupt = rng.sample(range(n), int(corrupt_frac * n))
    for j, i in enumerate(corrupt):
        kind = ("shuffled", "random_chars", "mojibake")[j % 3]
        kinds[i] = kind
        texts[i] = (shuffle_tokens(texts[i], rng) if kind == "shuffled" else
                    random_characters(texts[i], rng) if kind == "random_chars" else mojibake(texts[i]))
    return texts, np.array([k == "clean" for k in kinds]), kinds


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney U)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
