"""Token ids of many documents at once, byte-identical to `Tokenizer.encode_batch_fast(texts,
add_special_tokens=False)`, several times faster for GPT-2-style byte-level BPE tokenizers.

Why it is faster: `tokenizers` spends most of its time pre-tokenizing (the GPT-2 regex on Oniguruma,
one NormalizedString and one String per piece), not in BPE. A BPE token never crosses a pre-token,
so a document's ids are the concatenation of its pre-tokens' ids, each encoded alone. Here the
pre-tokens come from the same regex on Python's `regex` module (C, 5x faster), each distinct
pre-token is encoded once by the real tokenizer and kept in a per-process cache, and the ids of a
batch are gathered with numpy into one buffer: no Python object per token.

When it is exact, and what it checks:
- the tokenizer must be the shape the argument covers (`supports`): no normalizer, a lone
  ByteLevel pre-tokenizer with the GPT-2 regex and no prefix space, BPE without dropout, no
  truncation or padding, added tokens matched as plain strings. Anything else uses
  `encode_batch_fast` itself.
- added tokens are split out of the raw text first, leftmost-longest, as `tokenizers` does; each
  becomes one pre-token whose encoding is its id.
- the two regex engines must classify every character alike (letter, number, whitespace, other).
  They do not always: `regex` knows newer Unicode than Oniguruma (17,480 code points differ for
  regex 2026.12 and tokenizers 0.23, e.g. U+0558). Every character a batch holds is checked once per
  encoder against `tokenizers`' own pre-tokenizer; a text holding one that differs is encoded whole
  by `tokenizers`.

One encoder per thread: its cache is not locked.
"""

from __future__ import annotations

import json
from itertools import chain, repeat

import numpy as np
import pyarrow as pa
import regex

# tokenizers' ByteLevel pre-tokenizer pattern (pre_tokenizers/byte_level.rs)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# a string whose split exercises every branch of the pattern: checked once, so a tokenizers release
# that changes its pattern turns the fast path off instead of changing ids
SELF_CHECK = "I'm can't we'll they're you've he'd it's  x\t\n\n  y 12 3.5e-7 ab,c !!? «ok» \u00a0z  \n"
WORDS_PER_SEQUENCE = 4096
MAX_CACHED_WORDS = 400_000   # ~60 MB per worker; the cache restarts empty when full
_ASCII = "".join(map(chr, range(128)))


def supports(config: dict) -> bool:
    """Whether `encode` may take the fast path for a tokenizer with this tokenizer.json content."""
    pre, model = config.get("pre_tokenizer") or {}, config.get("model") or {}
    added_plain = all(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized"))
                      for t in config.get("added_tokens") or [])
    return (config.get("normalizer") is None and config.get("truncation") is None
            and config.get("padding") is None
            and (config.get("post_processor") or {"type": "ByteLevel"}).get("type") == "ByteLevel"
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and model.get("type") == "BPE" and not model.get("dropout") and added_plain)


class WordEncoder:
    """`encode(texts)` = (all ids of all texts in one uint32 array, ids per text): see the module docstring."""

    def __init__(self, tokenizer, json_text: str):
        self.tok = tokenizer
        config = json.loads(json_text)
        self._pattern = regex.compile(GPT2_PATTERN)
        added = sorted((t["content"] for t in config.get("added_tokens") or []), key=len, reverse=True)
        self._added = regex.compile("|".join(map(regex.escape, added))) if added else None
        self._pre = tokenizer.pre_tokenizer
        # the separator joining pieces to encode: any added token is split out before pre-tokenizing
        self._sep_text = added[-1] if added else None
        self._sep = tokenizer.token_to_id(added[-1]) if added else None
        self._checked: set[str] = set()
        self._differs: set[str] = set()
        self.fast = (supports(config) and not getattr(tokenizer, "encode_special_tokens", False)
                     and self._same_split(SELF_CHECK))
        if self.fast:
            self._check_chars(_ASCII)
            # only non-ASCII text is scanned for differing characters later: an ASCII one turns the path off
            self.fast = not self._differs
        self._reset_cache()

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not self.fast:
            return self._encode_batch_fast(texts)
        whole = self._texts_with_differing_chars(texts)
        # a text holding a character the engines class differently is one piece: encoded whole by tokenizers
        pieces = [[text] if i in whole else self._pieces(text) for i, text in enumerate(texts)]
        n_words = np.fromiter(map(len, pieces), np.int64, len(pieces))
        words = pa.array(list(chain.from_iterable(pieces)), pa.large_string()).dictionary_encode()
        slots = self._slots(words.dictionary.to_pylist())[words.indices.to_numpy()]
        word_lens, word_starts = self._lens[slots], self._starts[slots]
        total = int(word_lens.sum())
        # token k of word w sits at word_starts[w] + (k - first output position of w)
        out_starts = np.cumsum(word_lens) - word_lens
        values = self._values[np.repeat(word_starts - out_starts, word_lens) + np.arange(total)]
        ends = np.concatenate([[0], np.cumsum(word_lens)])
        doc_word_ends = np.cumsum(n_words)
        return values, ends[doc_word_ends] - ends[doc_word_ends - n_words]

    def _encode_batch_fast(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids_per_doc = [enc.ids for enc in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids_per_doc), np.int64, len(ids_per_doc))
        return np.fromiter(chain.from_iterable(ids_per_doc), np.uint32, int(lengths.sum())), lengths

    def _encode_words(self, words: list[str]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The ids of `words` in the order returned first. Pieces go joined by an added token,
        WORDS_PER_SEQUENCE to a sequence: tokenizers splits added tokens out before it pre-tokenizes,
        so each piece is still encoded alone, with one Encoding per sequence instead of one per piece.
        A piece that holds an added token goes alone."""
        if self._sep is None:
            return list(range(len(words))), *self._encode_batch_fast(words)
        plain = [i for i, w in enumerate(words) if self._added.search(w) is None]
        alone = sorted(set(range(len(words))) - set(plain))
        order, values, lengths = [], [], []
        chunks = [plain[s:s + WORDS_PER_SEQUENCE] for s in range(0, len(plain), WORDS_PER_SEQUENCE)]
        encodings = self.tok.encode_batch_fast([self._sep_text.join(words[i] for i in chunk) for chunk in chunks],
                                               add_special_tokens=False)
        for chunk, enc in zip(chunks, encodings, strict=True):
            ids = np.asarray(enc.ids, np.uint32)
            seps = np.flatnonzero(ids == self._sep)
            if seps.size != len(chunk) - 1:   # a piece's own BPE gave the separator's id: no joining
                alone.extend(chunk)
                continue
            order.extend(chunk)
            values.append(np.delete(ids, seps))
            lengths.append(np.diff(np.concatenate([[-1], seps, [ids.size]])) - 1)
        if alone:
            alone_values, alone_lengths = self._encode_batch_fast([words[i] for i in alone])
            order.extend(alone)
            values.append(alone_values)
            lengths.append(alone_lengths)
        return order, np.concatenate(values), np.concatenate(lengths)

    def _pieces(self, text: str) -> list[str]:
        """The pre-tokens of `text`; an added token is one piece, its content."""
        if self._added is None or self._added.search(text) is None:
            return self._pattern.findall(text)
        pieces, pos = [], 0
        for m in self._added.finditer(text):
            pieces.extend(self._pattern.findall(text[pos:m.start()]))
            pieces.append(m.group())
            pos = m.end()
        pieces.extend(self._pattern.findall(text[pos:]))
        return pieces

    def _slots(self, words: list[str]) -> np.ndarray:
        """Each word's slot in the cache, encoding the words not yet there."""
        slots = np.fromiter(map(self._slot.get, words, repeat(-1, len(words))), np.int64, len(words))
        new = np.flatnonzero(slots < 0)
        if len(self._slot) + new.size > MAX_CACHED_WORDS:
            self._reset_cache()
            slots[:], new = -1, np.arange(len(words))
        if new.size:
            order, values, lengths = self._encode_words([words[i] for i in new])
            new = new[order]
            first = len(self._slot)
            slots[new] = np.arange(first, first + new.size)
            self._slot.update(zip([words[i] for i in new], range(first, first + new.size), strict=True))
            self._lens = np.concatenate([self._lens, lengths])
            self._starts = np.concatenate([self._starts, self._n_values + np.cumsum(lengths) - lengths])
            self._append_values(values)
        return slots

    def _append_values(self, values: np.ndarray) -> None:
        end = self._n_values + values.size
        if end > self._values.size:
            grown = np.empty(max(end, 2 * self._values.size), np.uint32)
            grown[:self._n_values] = self._values[:self._n_values]
            self._values = grown
        self._values[self._n_values:end] = values
        self._n_values = end

    def _reset_cache(self) -> None:
        self._slot: dict[str, int] = {}
        self._lens = np.zeros(0, np.int64)
        self._starts = np.zeros(0, np.int64)
        self._values = np.zeros(1 << 16, np.uint32)
        self._n_values = 0

    def _texts_with_differing_chars(self, texts: list[str]) -> set[int]:
        """Positions of the texts holding a character the two engines class differently. Characters not
        seen before are checked first (non-ASCII ones only: ASCII was checked at start)."""
        chars_of = {i: set(chain.from_iterable(_NON_ASCII.findall(t))) for i, t in enumerate(texts) if not t.isascii()}
        new = set().union(*chars_of.values()) - self._checked
        if new:
            self._check_chars(new)
        if not self._differs:
            return set()
        return {i for i, chars in chars_of.items() if not self._differs.isdisjoint(chars)}

    def _check_chars(self, chars) -> None:
        for c in chars:
            # a character's class shows in whether it joins a letter, a digit, punctuation or a space
            if not all(self._same_split(probe) for probe in ("a" + c, "1" + c, "#" + c, c + " a")):
                self._differs.add(c)
            self._checked.add(c)

    def _same_split(self, text: str) -> bool:
        return [m.span() for m in self._pattern.finditer(text)] == [span for _, span in self._pre.pre_tokenize_str(text)]


_NON_ASCII = regex.compile(r"[^\x00-\x7f]+")
