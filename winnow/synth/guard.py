"""The faithfulness guard: keep a rewrite only when it plausibly says what its chunk says.

WRAP trusts a 7B rephraser; a small local model (SmolLM2-135M) invents dates, names and whole
sentences often enough that an unchecked rewrite is a risk to the data. Checks, in order, each
giving the reason a rewrite is dropped:

    truncated         the generation stopped at its token limit (finish reason `length`, no EOS): its
                      end is missing, however well the rest reads
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
                      occur in the chunk (compared by stem: a few suffixes off, then the first 5
                      letters, so inflections match): text about something else, such as questions
                      about the instruction itself
    low_coverage      under `min_coverage[style]` of the chunk's distinct content words and numbers occur
                      in the rewrite: an omission (a fluent rewrite of the first third of the chunk passes
                      every check above); qa, easy and hard rewrites reword or select more, so their
                      floors are lower
    negation_changed  a content word the chunk states without a negation is negated in the rewrite, or
                      one it negates is stated in the rewrite without one ("did not win" -> "won");
                      a negation's scope is the next four words up to a punctuation mark, and "not only"
                      is no negation

The checks are cheap string tests: they catch invented specifics, omissions and flipped negations,
not every paraphrase that changes meaning (an antonym, "failed" for "did not succeed", passes, as it
should; "lost" for "did not win" passes too). Their drop rates on real web chunks are in bench/LOG.md.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)[!,.]?\s*)?"
    r"(?:here(?:'s| is| are)|below is|this is)[^\n]{0,120}?(?:paraphrase|rewrit|version|passage|paragraph|"
    r"question|summary|text)[^\n]{0,80}?:\s*\n?", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(?:I (?:can(?:'|no)t|am (?:not able|unable)|'m (?:sorry|unable|not able))|"
                      r"as an ai\b|I apologi[sz]e)", re.IGNORECASE)
_NUMBER = re.compile(r"\d[\d,.]*\d|\d")
_WORD = re.compile(r"\w+")
# a name is a whole word, accents included ("Siméon", not "Sim")
_CAPITALISED = re.compile(r"(?<![.!?:\n]\s)(?<![.!?:\n])(?<=\s)([A-Z][^\W\d_]+)")
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
_SUFFIX = re.compile(r"(?:ing|ed|es|s|ly)$")
# words with an apostrophe kept whole ("didn't"), other words, and the punctuation that ends a negation's scope
_NEG_TOKEN = re.compile(r"[a-z]+n['’]t\b|\w+|[.,;:!?()]")
_NEGATORS = frozenset(["not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot", "without"])
NEGATION_SCOPE = 4      # words after a negator that it negates
# floors per style: a wiki paraphrase keeps nearly every content word; qa asks about the main facts,
# easy and hard swap words for simpler or rarer ones
DEFAULT_MIN_COVERAGE: dict[str, float] = {"wiki": 0.5, "hard": 0.4, "easy": 0.4, "qa": 0.3}


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
    min_coverage: dict[Literal["wiki", "qa", "easy", "hard"], float] = Field(
        default_factory=lambda: dict(DEFAULT_MIN_COVERAGE),
        description="per style, least share of the chunk's distinct content words and numbers that must occur in "
                    "the rewrite (styles left out keep their default: wiki 0.5, hard 0.4, easy 0.4, qa 0.3)")
    check_negations: bool = Field(True, description="drop rewrites that negate what the chunk states, or state "
                                  "what it negates")

    def coverage_floor(self, style: str) -> float:
        return self.min_coverage.get(style, DEFAULT_MIN_COVERAGE.get(style, 0.0))  # type: ignore[call-overload]


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


def stem(word: str) -> str:
    """A crude stem: one common suffix off, then the first 5 letters ("opened", "open" -> "open")."""
    return _SUFFIX.sub("", word)[:5] if len(word) > 4 else word


def _is_content(word: str) -> bool:
    return len(word) >= 4 and word.isalpha() and word not in _FUNCTION_WORDS


def coverage(rewrite: str, chunk: str) -> float:
    """Share of the chunk's distinct content-word stems and numbers that occur in the rewrite (1.0 when
    the chunk has none)."""
    wanted = {stem(w) for w in _WORD.findall(chunk.lower()) if _is_content(w)} | _numbers(chunk)
    if not wanted:
        return 1.0
    have = {stem(w) for w in _WORD.findall(rewrite.lower())} | _numbers(rewrite)
    return len(wanted & have) / len(wanted)


def _negations(text: str) -> tuple[set[str], set[str], set[str]]:
    """(heads: the first content stem after each negator; every content stem inside a negation's scope;
    every content stem outside any)."""
    heads, negated, plain = set(), set(), set()
    tokens = _NEG_TOKEN.findall(text.lower())
    left, head_open = 0, False   # words of the current negation's scope still to come; its head not yet seen
    for k, tok in enumerate(tokens):
        if not tok[0].isalnum():
            left, head_open = 0, False
            continue
        if tok in _NEGATORS or tok.endswith(("n't", "n\u2019t")):
            not_only = tok == "not" and k + 1 < len(tokens) and tokens[k + 1] == "only"
            left, head_open = (0, False) if not_only else (NEGATION_SCOPE, True)
            continue
        if _is_content(tok):
            if left > 0:
                negated.add(stem(tok))
                if head_open:
                    heads.add(stem(tok))
                    head_open = False
            else:
                plain.add(stem(tok))
        left = max(left - 1, 0)
    return heads, negated, plain


def negation_changed(rewrite: str, chunk: str) -> bool:
    """A content word one text only ever negates (it heads a negation: the first content word after a
    negator) and the other only ever states. The head is narrow and the scope wide, and a word both
    texts use both ways is left alone, so a rewording that moves words around a negation is not taken
    for a flip."""
    heads_r, neg_r, plain_r = _negations(rewrite)
    heads_c, neg_c, plain_c = _negations(chunk)
    added = (heads_r - plain_r) & (plain_c - neg_c)      # the chunk states it, the rewrite negates it
    dropped = (heads_c - plain_c) & (plain_r - neg_r)    # the chunk negates it, the rewrite states it
    return bool(added or dropped)


def check(rewrite: str, chunk: str, style: str, instruction: str, cfg: GuardConfig,
          finish_reason: str | None = None) -> Verdict:
    """The verdict on one rewrite of `chunk`; `finish_reason` is the backend's (`length`: cut off at the
    token limit; None: unknown)."""
    text = clean(rewrite)
    if finish_reason == "length":
        return Verdict(text, "truncated")
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
    content = [stem(w) for w in words if _is_content(w)]
    if content:
        chunk_stems = {stem(w) for w in chunk_words}
        if sum(w in chunk_stems for w in content) / len(content) < cfg.min_support:
            return Verdict(text, "unsupported")
    if coverage(text, chunk) < cfg.coverage_floor(style):
        return Verdict(text, "low_coverage")
    if cfg.check_negations and negation_changed(text, chunk):
        return Verdict(text, "negation_changed")
    return Verdict(text, None)
