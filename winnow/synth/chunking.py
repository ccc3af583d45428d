"""Cut a document into rephrasing chunks of at most `max_tokens` tokens, at natural boundaries.

WRAP rewrites pieces of about 300 tokens because longer inputs lose content in the rewrite. A
chunk is built from whole paragraphs; a paragraph that is too long is cut between sentences, and
only a sentence longer than the limit on its own is cut between words. Consecutive units are
packed greedily, so chunks are as long as the limit allows.

Tokens are counted without any model's tokenizer (`count_tokens`: words and punctuation marks, in
the manner of GPT-2's pre-tokeniser), so the same document gives the same chunks whichever model
rewrites it and the chunks can key a cache shared across backends. English BPE tokenizers give
within ~20% of this count.
"""

from __future__ import annotations

import re
from itertools import pairwise

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PARAGRAPH = re.compile(r"\n\s*\n")
# the whitespace after a sentence end, or after one closing quote/bracket that follows it (kept in the sentence)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"')\]])\s+")


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))


def _units(text: str, max_tokens: int) -> list[tuple[str, int, str]]:
    """(unit, tokens, separator before the next unit): paragraphs, or sentences/word runs of long ones."""
    units = []
    for para in _PARAGRAPH.split(text):
        para = para.strip()
        if not para:
            continue
        n = count_tokens(para)
        if n <= max_tokens:
            units.append((para, n, "\n\n"))
            continue
        sentences = [s for s in _SENTENCE_END.split(para) if s.strip()]
        for k, sentence in enumerate(sentences):
            sep = "\n\n" if k == len(sentences) - 1 else " "
            n = count_tokens(sentence)
            if n <= max_tokens:
                units.append((sentence.strip(), n, sep))
                continue
            starts = [m.start() for m in _TOKEN.finditer(sentence)]   # cut between tokens, max_tokens each
            cuts = [*starts[::max_tokens], len(sentence)]
            for a, b in pairwise(cuts):
                piece = sentence[a:b].strip()
                units.append((piece, count_tokens(piece), " "))
    return units


def split_chunks(text: str, max_tokens: int = 300) -> list[str]:
    """`text` as consecutive chunks of at most `max_tokens` tokens (see the module docstring)."""
    chunks: list[str] = []
    parts: list[str] = []
    size = 0
    for unit, n, sep in _units(text, max_tokens):
        if parts and size + n > max_tokens:
            chunks.append("".join(parts).strip())
            parts, size = [], 0
        parts.append(unit + sep)
        size += n
    if parts:
        chunks.append("".join(parts).strip())
    return chunks
