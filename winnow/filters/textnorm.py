"""Text normalisation for dedup keys: two texts that differ only in case, accents, numbers,
punctuation or spacing get the same key, the same shingles, the same line hash.

The steps and their defaults are datatrove's `TextNormConfig` (same field names, same order: lower
case, numbers to `0`, punctuation to spaces, whitespace collapsed, then Unicode NFD with combining
marks removed), so a config moved from datatrove behaves the same. They run in pyarrow compute
(RE2, vectorised over a whole shard) rather than datatrove's per-document Python loop. Differences:
punctuation is every Unicode punctuation, symbol and control character (datatrove lists ~170 by
hand); with `norm_unicode_diacritics` off the text is put in NFC, so NFC and NFD copies still agree.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

# datatrove's: 3.14 and 1,000 are one number. The group does not capture: RE2 then skips recording
# submatches, the same output in 40% of the time (0.75 -> 0.30 s on 74 MB of web text)
NUMBER = r"\p{Nd}+(?:[.,،٫⎖⎗⎘]\p{Nd}+)?"
PUNCTUATION = r"[\p{P}\p{S}\p{Cc}]"
WHITESPACE = r"[\s\p{Z}]+"  # RE2's \s is ASCII only
WEEKDAYS = r"monday|tuesday|wednesday|thursday|friday|saturday|sunday"
MONTHS = r"january|february|march|april|may|june|july|august|september|october|november|december"


class TextNorm(BaseModel):
    """The `normalize:` block of the dedup stages."""

    model_config = ConfigDict(extra="forbid")
    lowercase: bool = True
    norm_numbers: bool = Field(True, description="every number (3, 2024, 3.14, 1,000) becomes 0")
    norm_weekdays: bool = Field(False, description="English weekday names become WEEKDAY")
    norm_monthnames: bool = Field(False, description="English month names become MONTH")
    remove_punctuation: bool = Field(True, description="punctuation and symbols become spaces")
    norm_whitespace: bool = Field(True, description="runs of whitespace become one space; ends trimmed")
    norm_unicode_diacritics: bool = Field(True, description="accents removed (NFD, combining marks dropped)")


def normalize_texts(texts: list[str] | pa.Array | pa.ChunkedArray, norm: TextNorm,
                    split_after: bool = False) -> pa.ChunkedArray | pa.Array:
    """Each text normalised by `norm`, as an Arrow string array of the same length. `split_after`:
    the caller splits at whitespace next, so the whitespace pass (a third of the cost) is skipped."""
    text = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    # ASCII letters here; other scripts with the Unicode step, in non-ASCII rows only (20x cheaper on
    # English text). Not when WEEKDAY / MONTH are written in: that step would lower them again.
    lower_later = norm.lowercase and not (norm.norm_weekdays or norm.norm_monthnames)
    if norm.lowercase:
        text = pc.ascii_lower(text) if lower_later else pc.utf8_lower(text)
    if norm.norm_numbers:
        text = pc.replace_substring_regex(text, NUMBER, "0")
    if norm.norm_weekdays:
        text = pc.replace_substring_regex(text, WEEKDAYS, "WEEKDAY")
    if norm.norm_monthnames:
        text = pc.replace_substring_regex(text, MONTHS, "MONTH")
    if norm.remove_punctuation:
        # a run of punctuation becomes one space: the same words once whitespace is collapsed (or split
        # at), in 57% of the time of one space per character (1.38 -> 0.78 s on 74 MB)
        collapse = norm.norm_whitespace or split_after
        text = pc.replace_substring_regex(text, PUNCTUATION + ("+" if collapse else ""), " ")
    if norm.norm_whitespace and not split_after:
        text = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, WHITESPACE, " "))

    def unicode_step(rows: pa.Array) -> pa.Array:
        if lower_later:   # lower case commutes with the number and punctuation passes above
            rows = pc.utf8_lower(rows)
        if norm.norm_unicode_diacritics:
            return pc.replace_substring_regex(pc.utf8_normalize(rows, "NFD"), r"\p{Mn}+", "")
        return pc.utf8_normalize(rows, "NFC")

    return _non_ascii_only(text, unicode_step)


def _non_ascii_only(text: pa.Array | pa.ChunkedArray, fn) -> pa.Array:
    """`fn` applied to the rows that are not pure ASCII (Unicode normalisation cannot change the
    others; about half of English web pages), reassembled in the original order."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    ascii_rows = pc.string_is_ascii(text)
    other = pc.indices_nonzero(pc.invert(ascii_rows))
    if len(other) == 0:
        return text
    same = pc.indices_nonzero(ascii_rows)
    joined = pa.concat_arrays([pc.take(text, same), fn(pc.take(text, other))])
    position = pa.concat_arrays([same, other]).to_numpy()
    return pc.take(joined, pa.array(np.argsort(position, kind="stable")))
