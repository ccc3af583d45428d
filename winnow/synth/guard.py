"""The faithfulness guard: keep a rewrite only when it plausibly says what its chunk says.

WRAP trusts a 7B rephraser; a small local model (SmolLM2-135M) invents dates, names and whole
sentences often enough that an unchecked rewrite is a risk to the data. Checks, in order, each
giving the reason a rewrite is dropped:

    empty             nothing left after the assistant preamble ("Sure! Here is ...:") is removed
    refusal           "I can't ...", "As an AI ..." and the like
    echo_instruction  repeats the instruction it was given
    echo_chunk        mostly copies the chunk (share of its word 5-grams found in the chunk)
    repetitive        the same sentence or line three times or more (a small model's loop)
    length_ratio      rewrite/chunk length in characters outside [min_length_ratio, max_length_ratio]
    qa_format         the qa style without one "Question:" ... "Answer:" pair
    new_number        a number the chunk does not contain (digits compared without separators)
    new_name          a capitalised word, not at a sentence start, whose lower-case form the chunk lacks
    unsupported       under `min_support` of the rewrite's content words (4+ letters, not function words)
                      occur in the chunk (compared by their first 5 letters, so inflections match):
                      text about something else, such as questions about the instruction itself

The checks are cheap string tests: they catch invented specifics, not every paraphrase that
changes meaning. Their drop rates on real web chunks are in bench/LOG.md.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)[!,.]?\s*)?"
    r"(?:here(?:'s| is| are)|below is|this is)[^\n]{0,120}?(?:paraphrase|rewrit|version|passage|paragraph|"
    r"question|summary|text)[^\n]{0,80}?:\s*\n?", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(?:I (?:can(?:'|no)t|am (?:not able|unable)|'m (?:sorry|unable|not able))|"
                      r"as an ai\b|I apologi[sz]e)", re.IGNORECASE)
_NUMBER = re.compile(r"\d[\d,.]*\d|\d")
_WORD = re.compile(r"\w+")
_CAPITALISED = re.compile(r"(?<![.!?:\n]\s)(?<![.!?:\n])(?<=\s)([A-Z][a-zA-Z]+)")
_PIECES = re.compile(r"(?<=[.!?])\s+|\n+")
_QA = re.compile(r"Question\s*:.+?Answer\s*:", re.IGNORECASE | re.DOTALL)
_SAFE_CAPS = {"question", "answer", "i", "wikipedia", "passage"}
_FUNCTION_TEXT = (
    "about above after again against also although among another because been before being below between "
    "both could does doing during each either every from further have having here however into itself just "
    "many more most much must neither only other over same several should since some such than that their "
    "them then there these they this those through thus under until upon very were what when where whether "
    "which while whom whose will with within without would your question answer")
_FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())


class GuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_length_ratio: float = Field(0.3, gt=0, description="shortest rewrite kept, as a share of the chunk's characters")
    max_length_ratio: float = Field(3.0, gt=0, description="longest rewrite kept, as a multiple of the chunk's characters")
    max_copy_fraction: float = Field(0.9, gt=0, le=1, description="drop a rewrite when this share of its word "
                                     "5-grams appears verbatim in the chunk")
    check_numbers: bool = Field(True, description="drop rewrites with numbers absent from the chunk")
    check_names: bool = Field(True, description="drop rewrites with capitalised names absent from the chunk")
    min_support: float = Field(0.5, ge=0, le=1, description="least share of the rewrite's content words that "
                               "must occur in the chunk")


@dataclass(frozen=True)
class Verdict:
    text: str              # the rewrite with its preamble and wrapping quotes removed
    reason: str | None     # None when kept


def clean(text: str) -> str:
    """The rewrite without an assistant preamble and without quotes wrapping the whole of it."""
    text = _PREAMBLE.sub("", text, count=1).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _numbers(text: str) -> set[str]:
    return {re.sub(r"[,.]", "", m.group()) for m in _NUMBER.finditer(text)}


def _grams(words: list[str], n: int = 5) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def check(rewrite: str, chunk: str, style: str, instruction: str, cfg: GuardConfig) -> Verdict:
    text = clean(rewrite)
    if not text:
        return Verdict(text, "empty")
    if _REFUSAL.search(text[:300]):
        return Verdict(text, "refusal")
    low = text.lower()
    if instruction[:60].lower() in low:
        return Verdict(text, "echo_instruction")
    words = _WORD.findall(low)
    chunk_words = _WORD.findall(chunk.lower())
    grams = _grams(words)
    if grams:
        chunk_grams = set(_grams(chunk_words))
        if sum(g in chunk_grams for g in grams) / len(grams) >= cfg.max_copy_fraction:
            return Verdict(text, "echo_chunk")
    elif low.strip() == chunk.lower().strip():
        return Verdict(text, "echo_chunk")
    pieces = [p.strip() for p in _PIECES.split(low) if len(p.strip()) > 10]
    if pieces and Counter(pieces).most_common(1)[0][1] >= 3:
        return Verdict(text, "repetitive")
    ratio = len(text) / max(1, len(chunk))
    if not cfg.min_length_ratio <= ratio <= cfg.max_length_ratio:
        return Verdict(text, "length_ratio")
    if style == "qa" and not _QA.search(text):
        return Verdict(text, "qa_format")
    if cfg.check_numbers and _numbers(text) - _numbers(chunk):
        return Verdict(text, "new_number")
    if cfg.check_names:
        known = set(chunk_words) | _SAFE_CAPS
        if any(m.group(1).lower() not in known for m in _CAPITALISED.finditer(text)):
            return Verdict(text, "new_name")
    content = [w[:5] for w in words if len(w) >= 4 and w.isalpha() and w not in _FUNCTION_WORDS]
    if content:
        chunk_stems = {w[:5] for w in chunk_words}
        if sum(w in chunk_stems for w in content) / len(content) < cfg.min_support:
            return Verdict(text, "unsupported")
    return Verdict(text, None)
