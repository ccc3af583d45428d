"""Token ids of many documents at once, byte-identical to `Tokenizer.encode_batch_fast(texts,
add_special_tokens=False)`, several times faster for GPT-2-style byte-level BPE tokenizers.

Why it is faster: `tokenizers` spends most of its time pre-tokenizing (the GPT-2 regex on Oniguruma,
one NormalizedString and one String per piece), not in BPE. A BPE token never crosses a pre-token,
so a document's ids are the concatenation of its pre-tokens' ids, each encoded alone. Here:
- documents are cut into segments with numpy on the Arrow UTF-8 buffer, at two kinds of places where
  no pre-token of the pattern can span: where an ASCII whitespace byte follows an ASCII non-whitespace
  byte, and where two ASCII non-whitespace bytes of different classes meet (letter, digit, other
  symbol; the apostrophe, which starts the contractions 's 't ..., is in no class). A segment is a
  whitespace run then a run of one class, or a run holding non-ASCII bytes or apostrophes; its
  pre-tokens are those the whole text has there;
- each distinct segment is split once and kept in a per-thread cache with its ids. A segment that is
  an optional space and one class run is a single pre-token and needs no split (59% of the new
  segments of the web sample); the others are split by the same regex on Python's `regex` module
  (C, 5x faster than Oniguruma), all of a batch's in one call. Web text repeats its segments
  (" the", ","): the cache carries them from batch to batch;
- each distinct pre-token is encoded once by the real tokenizer, with its pre-tokenizer's regex off
  (each is one pre-token already: the split would give it back whole), and cached too; the ids of a
  batch are gathered with numpy into one buffer: no Python object per token or per segment.

When it is exact, and what it checks:
- the tokenizer must be the shape the argument covers (`supports`): no normalizer, a lone
  ByteLevel pre-tokenizer with the GPT-2 regex and no prefix space, BPE without dropout, no
  truncation or padding, added tokens matched as plain strings. Anything else uses
  `encode_batch_fast` itself.
- added tokens are split out of the raw text first, leftmost-longest, as `tokenizers` does; each
  becomes one pre-token whose encoding is its id.
- a text holding NUL (the joiner of segments) or an added token is split by the regex whole.
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
import pyarrow.compute as pc
import regex
from tokenizers import Tokenizer, pre_tokenizers

# tokenizers' ByteLevel pre-tokenizer pattern (pre_tokenizers/byte_level.rs)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# a string whose split exercises every branch of the pattern: checked once, so a tokenizers release
# that changes its pattern turns the fast path off instead of changing ids
SELF_CHECK = "I'm can't we'll they're you've he'd it's  x\t\n\n  y 12 3.5e-7 ab,c !!? «ok» \u00a0z  \n"
# the same pattern over many segments joined by NUL in one call: NUL is a piece of its own, and no other
# branch matches it or looks past it (the whitespace branch's lookahead treats it as the end of text)
JOINED_PATTERN = "\x00|" + (GPT2_PATTERN.replace(r"[^\s\p{L}\p{N}]", r"[^\s\p{L}\p{N}\x00]")
                                       .replace(r"(?!\S)", r"(?![^\s\x00])"))
WORDS_PER_SEQUENCE = 4096
MAX_CACHED_WORDS = 400_000   # ~60 MB per worker; the cache restarts empty when full
MAX_CACHED_SEGMENTS = 500_000   # ~50 MB per encoder (one per worker thread); restarts empty when full
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
        self._added_texts = added
        self._joined = regex.compile(JOINED_PATTERN)
        self._pre = tokenizer.pre_tokenizer
        # the separator joining pieces to encode: any added token is split out before pre-tokenizing
        self._sep_text = added[-1] if added else None
        self._sep = tokenizer.token_to_id(added[-1]) if added else None
        self._checked: set[str] = set()
        self._differs: set[str] = set()
        self.fast = (supports(config) and not getattr(tokenizer, "encode_special_tokens", False)
                     and self._same_split(SELF_CHECK) and self._segments_split_alike(SELF_CHECK))
        if self.fast:
            # pre-tokens go to BPE through a copy without the split: each is one pre-token already
            self._word_tok = Tokenizer.from_str(json_text)
            self._word_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            self.fast = self._words_encode_alike(SELF_CHECK)
        if self.fast:
            self._check_chars(_ASCII)
            # only non-ASCII text is scanned for differing characters later: an ASCII one turns the path off
            self.fast = not self._differs
        # a segment's ids are copies of its words' ids: either cache may restart without the other
        self._word_ids = _IdRuns(MAX_CACHED_WORDS)
        self._segment_ids = _IdRuns(MAX_CACHED_SEGMENTS)

    def encode(self, texts: list[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        if not self.fast:
            return self._encode_batch_fast(texts.to_pylist() if isinstance(texts, pa.Array) else texts)
        arr = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.large_string())
        arr = arr.cast(pa.large_string())
        by_pieces = self._needs_whole_text_split(arr)
        if not by_pieces.any():
            return self._encode_by_segments(arr)
        # the few texts that need it go the slow way; the results are merged back in order
        slow = pa.array(by_pieces)
        return _interleave(by_pieces, self._encode_by_segments(arr.filter(pc.invert(slow))),
                           self._encode_by_pieces(arr.filter(slow).to_pylist()))

    def _needs_whole_text_split(self, arr: pa.Array) -> np.ndarray:
        """Which texts hold NUL or an added token (split by the regex whole) or a character the regex
        engines class differently (encoded whole by tokenizers): boolean per text."""
        needs = _holding(arr, ["\x00", *self._added_texts])
        non_ascii = np.flatnonzero(~pc.string_is_ascii(arr).to_numpy(zero_copy_only=False))
        if non_ascii.size:
            rows = arr.take(pa.array(non_ascii))
            # the batch's distinct non-ASCII characters, gathered by Arrow in one pass; texts are looked at
            # one by one only when one of them is a character the engines class differently (rare)
            chars = set("".join(pc.replace_substring_regex(rows, r"[\x00-\x7f]+", "").to_pylist()))
            self._check_chars(chars - self._checked)
            if not self._differs.isdisjoint(chars):
                needs[non_ascii[sorted(self._texts_with_differing_chars(rows.to_pylist()))]] = True
        return needs

    def _encode_by_pieces(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each text split by the regex whole, or, if it holds a differing character, encoded by tokenizers
        whole (with its own split: the cached words are encoded without one)."""
        whole = np.zeros(len(texts), bool)
        whole[list(self._texts_with_differing_chars(texts))] = True
        pieces = [self._pieces(text) for text, alone in zip(texts, whole, strict=True) if not alone]
        n_words = np.fromiter(map(len, pieces), np.int64, len(pieces))
        words = pa.array(list(chain.from_iterable(pieces)), pa.large_string()).dictionary_encode()
        by_pieces = self._word_ids.gather(self._slots(words.dictionary)[words.indices.to_numpy()], n_words)
        if not whole.any():
            return by_pieces
        return _interleave(whole, by_pieces, self._encode_batch_fast([t for t, alone in zip(texts, whole, strict=True) if alone]))

    def _encode_by_segments(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        segments, per_text = _segments(arr)
        distinct = segments.dictionary_encode()
        slots = self._segment_slots(distinct.dictionary)[distinct.indices.to_numpy()]
        return self._segment_ids.gather(slots, per_text)

    def _segment_slots(self, segments: pa.LargeStringArray) -> np.ndarray:
        """Each distinct segment's slot in the segment cache, splitting and encoding the ones not yet there."""
        keys = segments.to_pylist()
        slots, new = self._segment_ids.find(keys)
        if new.size:
            new_segments = segments.take(pa.array(new))
            single = pc.match_substring_regex(new_segments, SINGLE_PRE_TOKEN).to_numpy(zero_copy_only=False)
            words, n_words = self._split(new_segments.filter(pa.array(~single)))
            # the single pre-tokens first, then the split segments: each segment's words consecutive
            order = np.concatenate([new[single], new[~single]])
            words = pa.concat_arrays([new_segments.filter(pa.array(single)), words]).dictionary_encode()
            word_slots = self._slots(words.dictionary)[words.indices.to_numpy()]
            n_words = np.concatenate([np.ones(int(single.sum()), np.int64), n_words])
            slots[order] = self._segment_ids.add([keys[i] for i in order], *self._word_ids.gather(word_slots, n_words))
        return slots

    def _split(self, segments: pa.LargeStringArray) -> tuple[pa.LargeStringArray, np.ndarray]:
        """The pre-tokens of many segments, split in one regex call with NUL between them (module
        docstring): (all pre-tokens in order, pre-tokens per segment)."""
        if not len(segments):
            return pa.array([], pa.large_string()), np.zeros(0, np.int64)
        pieces = pa.array(self._joined.findall("\x00".join(segments.to_pylist())), pa.large_string())
        joiner = pc.equal(pieces, "\x00").to_numpy(zero_copy_only=False)
        n_words = np.diff(np.concatenate([[-1], np.flatnonzero(joiner), [joiner.size]])) - 1
        return pieces.filter(pa.array(~joiner)), n_words

    def _encode_batch_fast(self, texts: list[str], tok=None) -> tuple[np.ndarray, np.ndarray]:
        encodings = (self.tok if tok is None else tok).encode_batch_fast(texts, add_special_tokens=False)
        ids_per_doc = [enc.ids for enc in encodings]
        lengths = np.fromiter(map(len, ids_per_doc), np.int64, len(ids_per_doc))
        return np.fromiter(chain.from_iterable(ids_per_doc), np.uint32, int(lengths.sum())), lengths

    def _encode_words(self, words: pa.LargeStringArray, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`words` (as Arrow, and as `texts`) → (positions in `words`, the ids of the words at those
        positions, ids per word). Pre-tokens go joined by an added token, WORDS_PER_SEQUENCE to a sequence:
        tokenizers splits added tokens out before it pre-tokenizes, so each is still encoded alone, with
        one Encoding per sequence instead of one per pre-token. A pre-token that holds an added token
        goes alone, through the tokenizer itself (an added token is its own piece there)."""
        if self._sep is None:
            return np.arange(len(texts)), *self._encode_batch_fast(texts, self._word_tok)
        holds_added = _holding(words, self._added_texts)
        plain, alone = np.flatnonzero(~holds_added), list(np.flatnonzero(holds_added))
        order, values, lengths = [], [], []
        chunks = [plain[s:s + WORDS_PER_SEQUENCE] for s in range(0, len(plain), WORDS_PER_SEQUENCE)]
        encodings = self._word_tok.encode_batch_fast([self._sep_text.join([texts[i] for i in chunk]) for chunk in chunks],
                                                     add_special_tokens=False)
        for chunk, enc in zip(chunks, encodings, strict=True):
            ids = np.asarray(enc.ids, np.uint32)
            seps = np.flatnonzero(ids == self._sep)
            if seps.size != len(chunk) - 1:   # a piece's own BPE gave the separator's id: no joining
                alone.extend(chunk)
                continue
            order.append(chunk)
            values.append(np.delete(ids, seps))
            lengths.append(np.diff(np.concatenate([[-1], seps, [ids.size]])) - 1)
        if alone:
            alone_values, alone_lengths = self._encode_batch_fast([texts[i] for i in alone])
            order.append(np.asarray(alone, np.int64))
            values.append(alone_values)
            lengths.append(alone_lengths)
        if not order:
            return np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.int64)
        return np.concatenate(order), np.concatenate(values), np.concatenate(lengths)

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

    def _slots(self, words: pa.LargeStringArray) -> np.ndarray:
        """Each distinct word's slot in the word cache, encoding the words not yet there."""
        keys = words.to_pylist()
        slots, new = self._word_ids.find(keys)
        if new.size:
            order, values, lengths = self._encode_words(words.take(pa.array(new)), [keys[i] for i in new])
            new = new[order]
            slots[new] = self._word_ids.add([keys[i] for i in new], values, lengths)
        return slots

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

    def _segments_split_alike(self, text: str) -> bool:
        """Whether `text` split whole, segment by segment, and its segments split joined by NUL give the
        same pieces."""
        parts = _segments(pa.array([text], pa.large_string()))[0].to_pylist()
        one_by_one = [self._pattern.findall(part) for part in parts]
        joined = list(chain.from_iterable(pieces + ["\x00"] for pieces in one_by_one))[:-1]
        return (list(chain.from_iterable(one_by_one)) == self._pattern.findall(text)
                and self._joined.findall("\x00".join(parts)) == joined)

    def _words_encode_alike(self, text: str) -> bool:
        """Whether the pre-tokens of `text` get the same ids from the tokenizer and from its copy without the split."""
        pieces = self._pattern.findall(text)
        return ([e.ids for e in self._word_tok.encode_batch_fast(pieces, add_special_tokens=False)]
                == [e.ids for e in self.tok.encode_batch_fast(pieces, add_special_tokens=False)])

    def _same_split(self, text: str) -> bool:
        return [m.span() for m in self._pattern.finditer(text)] == [span for _, span in self._pre.pre_tokenize_str(text)]


def _holding(arr: pa.Array, needles: list[str]) -> np.ndarray:
    """Which strings of `arr` hold any of `needles`: boolean per string."""
    found = np.zeros(len(arr), bool)
    for needle in needles:
        found |= pc.match_substring(arr, needle).to_numpy(zero_copy_only=False)
    return found


_NON_ASCII = regex.compile(r"[^\x00-\x7f]+")
# the ASCII bytes the pattern's \s matches (the encoder checks at start that tokenizers agrees on ASCII)
_WHITESPACE_BYTE = np.array([regex.match(r"\s", chr(b)) is not None for b in range(256)]) & (np.arange(256) < 128)
_NON_WHITESPACE_ASCII_BYTE = ~_WHITESPACE_BYTE & (np.arange(256) < 128)


def _byte_class(byte: int) -> int:
    """1 letter, 2 digit, 3 other printable symbol: a run of one of these classes ends where the class
    changes, in every branch of the pattern. 0 for the rest: whitespace, control bytes, the apostrophe
    (it starts the contractions 's 't ...) and every byte of a non-ASCII character."""
    char = chr(byte)
    if byte >= 128 or char == "'" or not char.isprintable() or _WHITESPACE_BYTE[byte]:
        return 0
    return 1 if regex.match(r"\p{L}", char) else 2 if regex.match(r"\p{N}", char) else 3


_CLASS = np.array([_byte_class(b) for b in range(256)], np.int8)
# a cut between bytes (a, b), indexed by a * 256 + b: whitespace after non-whitespace, or two classes meeting
_CUT = (np.outer(_NON_WHITESPACE_ASCII_BYTE, _WHITESPACE_BYTE)
        | ((_CLASS[:, None] != _CLASS[None, :]) & (_CLASS[:, None] > 0) & (_CLASS[None, :] > 0))).ravel()
# a segment that is one pre-token as it stands: an optional space, then one run of one class
_RUNS = ["[" + "".join(f"\\x{b:02x}" for b in range(128) if _CLASS[b] == cls) + "]+" for cls in (1, 2, 3)]
SINGLE_PRE_TOKEN = "^ ?(?:" + "|".join(_RUNS) + ")$"


def _segments(arr: pa.LargeStringArray) -> tuple[pa.LargeStringArray, np.ndarray]:
    """The texts cut where no pre-token can span (module docstring): (every segment in text order, a view
    on the same UTF-8 buffer; segments per text)."""
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[arr.offset:arr.offset + len(arr) + 1]
    if data_buf is None:   # every text empty
        data_buf = pa.py_buffer(b"")
    data = np.frombuffer(data_buf, np.uint8)
    text = data[offsets[0]:offsets[-1]]
    starts = np.zeros(text.size + 1, bool)
    pairs = text[:-1].astype(np.uint16) << 8
    pairs |= text[1:]
    starts[1:-1] = _CUT[pairs]
    # text starts are cuts too, and the end closes the last segment; an empty text adds none
    starts[offsets - offsets[0]] = True
    bounds = np.flatnonzero(starts) + offsets[0]
    per_text = np.searchsorted(bounds, offsets[1:]) - np.searchsorted(bounds, offsets[:-1])
    segments = pa.LargeStringArray.from_buffers(bounds.size - 1, pa.py_buffer(bounds), data_buf)
    return segments, per_text


class _IdRuns:
    """A cache of token-id runs keyed by string (a word's ids, a segment's ids), all in one growing buffer.
    It restarts empty when a batch's new keys would take it past `limit` keys."""

    def __init__(self, limit: int):
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        self.slot: dict[str, int] = {}
        self.lens = np.zeros(0, np.int64)
        self.starts = np.zeros(0, np.int64)
        self.values = np.zeros(1 << 16, np.uint32)
        self.used = 0

    def find(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(each key's slot, -1 where absent; the positions of the absent keys), after restarting the
        cache if the absent ones would not fit."""
        slots = np.fromiter(map(self.slot.get, keys, repeat(-1, len(keys))), np.int64, len(keys))
        new = np.flatnonzero(slots < 0)
        if len(self.slot) + new.size > self.limit:
            self.reset()
            slots[:], new = -1, np.arange(len(keys))
        return slots, new

    def add(self, keys: list[str], values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Store key k's run (`lengths[k]` ids, the runs concatenated in `values`); returns their slots."""
        first = len(self.slot)
        self.slot.update(zip(keys, range(first, first + len(keys)), strict=True))
        self.lens = np.concatenate([self.lens, lengths])
        self.starts = np.concatenate([self.starts, self.used + np.cumsum(lengths) - lengths])
        self.values, self.used = _append(self.values, self.used, values)
        return np.arange(first, first + len(keys))

    def gather(self, slots: np.ndarray, per_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The runs of `slots` concatenated: (the ids, ids per group of `per_group` consecutive slots)."""
        starts, lens = self.starts[slots], self.lens[slots]
        # id j of run k sits at starts[k] + (j - first output position of run k)
        out_starts = np.cumsum(lens) - lens
        out = self.values[np.repeat(starts - out_starts, lens) + np.arange(int(lens.sum()))]
        ends = np.concatenate([[0], np.cumsum(lens)])
        group_ends = np.cumsum(per_group)
        return out, ends[group_ends] - ends[group_ends - per_group]


def _append(buffer: np.ndarray, used: int, values: np.ndarray) -> tuple[np.ndarray, int]:
    """`values` written after the first `used` entries of `buffer`, grown by doubling: (buffer, used)."""
    end = used + values.size
    if end > buffer.size:
        grown = np.empty(max(end, 2 * buffer.size), buffer.dtype)
        grown[:used] = buffer[:used]
        buffer = grown
    buffer[used:end] = values
    return buffer, end


def _interleave(second: np.ndarray, first_part: tuple[np.ndarray, np.ndarray],
                second_part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two (ids, ids per text) results merged into text order; `second` marks the texts of the second."""
    lengths = np.empty(second.size, np.int64)
    lengths[~second], lengths[second] = first_part[1], second_part[1]
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), np.uint32)
    for mask, (values, part_lengths) in ((~second, first_part), (second, second_part)):
        out[np.repeat(starts[mask], part_lengths) + np.arange(values.size)
            - np.repeat(np.cumsum(part_lengths) - part_lengths, part_lengths)] = values
    return out, lengths
