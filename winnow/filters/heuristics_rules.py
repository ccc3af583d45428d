"""datatrove's Gopher, C4 and FineWeb rules, fed from one word list and one line list per document.

datatrove's filters each split the text again: Gopher's quality and repetition filters tokenize it
into words (spaCy), C4 runs spaCy's whole pipeline on every kept line to count sentences, FineWeb
tokenizes C4's output once more to count its words, and every word's symbol and alphabetic tests run
once per occurrence. Here the words of a document are computed once (`TextView`), the per-word tests
once per distinct word, C4 stops counting sentences once it has `min_num_sentences` (the count only
meets that threshold), and FineWeb's word count of C4's output is the sum of the counts of the lines
C4 kept, read from the first tokenization (spaCy never makes a token across whitespace; a line whose
citations C4 removed is tokenized again).

Each rule is datatrove's own code path, in its order, with its thresholds read from the datatrove
filter the stage built (so datatrove's constructor still checks the arguments): decisions, reasons,
C4's edited text and its per-line outcomes are those of datatrove's `filter`. tests/test_heuristics.py
checks them against datatrove's classes on the web sample and on datatrove's own test cases. The
port is used only with the datatrove source it was written from (`PORTED_SOURCE`); any other
version, or a subclass, runs datatrove's own `filter`.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

from datatrove.pipeline.filters import gopher_repetition_filter as repetition_module
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.utils.text import PUNCTUATION_SET
from datatrove.utils.word_tokenizers import load_word_tokenizer

from winnow.filters.spacy_words import WarmSpacyTokenizer

# sha256 of the datatrove source each port follows (class, helpers it calls): datatrove 0.10.1
PORTED_SOURCE = {
    "gopher_quality": "078ff3f6702dbd5118606e1986819f7e4464b9e67d431bca2a660896f72690d4",
    "gopher_repetition": "5331d951a1349e054453a15cc4edbf745f23aad9bf24b88df2a2166d82539bff",
    "c4_quality": "7088c796bfe25bbdc9f9e7599dbd81271f721d3cda1e58b6b7951b9a89b447f4",
    "fineweb_quality": "7e92d78c02c847436330c3dbf22f4c468c8724bd8e8f477ec722d548c820f068",
}

# a filter's result: True (kept), or (False, reason)
Outcome = bool | tuple[bool, str]


class TextView:
    """One document's text as the filters see it, its words and lines computed once per text."""

    def __init__(self, text: str):
        self.set_text(text)

    def set_text(self, text: str, word_counts: dict[int, int] | None = None) -> None:
        """A new text (C4 edited it); `word_counts`: its word count per tokenizer, where known."""
        self.text = text
        self._words: dict[int, list[str]] = {}
        self._word_counts = dict(word_counts or {})
        self._line_counts: dict[int, list[int] | None] = {}
        self._lines: list[str] | None = None
        self._distinct: dict[int, Counter[str]] = {}

    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.splitlines()
        return self._lines

    def words(self, tokenizer: Any) -> list[str]:
        key = id(tokenizer)
        if key not in self._words:
            if isinstance(tokenizer, WarmSpacyTokenizer):
                words, sizes = tokenizer.words_and_part_sizes(self.text)
                self._line_counts[key] = self._count_per_line(sizes) if sizes is not None else None
            else:
                words = tokenizer.word_tokenize(self.text)
            self._words[key] = words
        return self._words[key]

    def word_count(self, tokenizer: Any) -> int:
        key = id(tokenizer)
        if key in self._word_counts:
            return self._word_counts[key]
        return len(self.words(tokenizer))

    def distinct_words(self, tokenizer: Any) -> Counter[str]:
        """Each distinct word and how often it occurs, in order of first occurrence."""
        key = id(tokenizer)
        if key not in self._distinct:
            self._distinct[key] = Counter(self.words(tokenizer))
        return self._distinct[key]

    def line_word_counts(self, tokenizer: Any) -> list[int] | None:
        """Words on each line of `lines()`, from the tokenization of the whole text; None where unknown."""
        if id(tokenizer) not in self._words:
            self.words(tokenizer)
        return self._line_counts.get(id(tokenizer))

    def _count_per_line(self, sizes: list[int]) -> list[int]:
        """Words per line, from the words of each whitespace-separated part of the text (every line
        break is whitespace, so a line's parts are the next `len(line.split())` parts)."""
        counts, at = [], 0
        for line in self.lines():
            n = len(line.split())
            counts.append(sum(sizes[at:at + n]))
            at += n
        return counts


def source_hash(key: str) -> str:
    from winnow.filters.heuristics import filter_class

    parts = [filter_class(key)]
    if key == "gopher_repetition":
        parts += [repetition_module.get_n_grams, repetition_module.find_duplicates,
                  repetition_module.find_top_duplicate, repetition_module.find_all_duplicate]
    if key == "fineweb_quality":
        parts += [repetition_module.find_duplicates]
    from datatrove.utils import text as text_module
    parts += [text_module.split_into_parts, text_module.split_into_words, text_module.split_into_sentences]
    return hashlib.sha256("".join(inspect.getsource(p) for p in parts).encode()).hexdigest()


@cache
def is_ported(key: str) -> bool:
    return source_hash(key) == PORTED_SOURCE.get(key)


def shared_rules(key: str, flt: Any) -> Callable[[TextView, list[str]], Outcome] | None:
    """The port of filter `flt` (datatrove's class for `key`) as fn(view, line_outcomes), or None where
    the port does not apply (another datatrove version, a subclass)."""
    from winnow.filters.heuristics import filter_class

    if type(flt) is not filter_class(key) or not is_ported(key):
        return None
    try:
        tokenizer = load_word_tokenizer(flt.language)
    except (ValueError, ImportError):
        return None   # datatrove's filter raises this when (and only if) it needs words
    port = PORTS[key]
    return lambda view, outcomes: port(flt, tokenizer, view, outcomes)


def gopher_quality(flt: Any, tokenizer: Any, view: TextView, outcomes: list[str]) -> Outcome:
    text = view.text
    n_words = view.word_count(tokenizer)
    distinct = view.distinct_words(tokenizer)
    # per distinct word: whether it has a character outside datatrove's punctuation set, and a letter
    n_non_symbol = non_symbol_chars = n_alpha = 0
    for word, n in distinct.items():
        if not PUNCTUATION_SET.issuperset(word):
            n_non_symbol += n
            non_symbol_chars += len(word) * n
        if any(map(str.isalpha, word)):
            n_alpha += n

    if flt.min_doc_words and n_non_symbol < flt.min_doc_words:
        return False, "gopher_short_doc"
    if flt.max_doc_words and n_non_symbol > flt.max_doc_words:
        return False, "gopher_long_doc"

    # np.mean of integer lengths: an exact float64 sum divided by the count (nan for no words)
    avg_n_words = non_symbol_chars / n_non_symbol if n_non_symbol else float("nan")
    if flt.min_avg_word_length and avg_n_words < flt.min_avg_word_length:
        return False, "gopher_below_avg_threshold"
    if flt.max_avg_word_length and avg_n_words > flt.max_avg_word_length:
        return False, "gopher_above_avg_threshold"

    if flt.max_symbol_word_ratio and text.count("#") / n_words > flt.max_symbol_word_ratio:
        return False, "gopher_too_many_hashes"
    if flt.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > flt.max_symbol_word_ratio:
        return False, "gopher_too_many_ellipsis"

    lines = view.lines()
    if (flt.max_bullet_lines_ratio
            and sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > flt.max_bullet_lines_ratio):
        return False, "gopher_too_many_bullets"
    if (flt.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > flt.max_ellipsis_lines_ratio):
        return False, "gopher_too_many_end_ellipsis"

    if flt.max_non_alpha_words_ratio and n_alpha / n_words < flt.max_non_alpha_words_ratio:
        return False, "gopher_below_alpha_threshold"

    if flt.min_stop_words and len(flt.stop_words.intersection(distinct)) < flt.min_stop_words:
        return False, "gopher_enough_stop_words"
    return True


def find_duplicates(x: list[str]) -> tuple[int, int]:
    """datatrove's find_duplicates: (elements seen before, their characters), counted at C speed."""
    counts = Counter(x)
    return len(x) - len(counts), sum(map(len, x)) - sum(map(len, counts))


def n_grams(words: list[str], n: int, sep: str) -> list[str]:
    """The `sep`-joined n-grams at each position (datatrove's get_n_grams with sep " ")."""
    return list(map(sep.join, zip(*(words[k:] for k in range(n)), strict=False)))  # the shortest ends them


def find_all_duplicate(words: list[str], n: int) -> int:
    """datatrove's find_all_duplicate: characters of the n-grams (words joined without a space) that
    repeat an earlier one, skipping past each repeat."""
    grams = n_grams(words, n, "")
    unique = set(grams)
    if len(unique) == len(grams):
        return 0   # no n-gram repeats: the scan below would find nothing
    unique = set()
    repeated_chars, idx, end = 0, 0, len(grams)
    while idx < end:
        gram = grams[idx]
        if gram in unique:
            repeated_chars += len(gram)
            idx += n
        else:
            unique.add(gram)
            idx += 1
    return repeated_chars


def gopher_repetition(flt: Any, tokenizer: Any, view: TextView, outcomes: list[str]) -> Outcome:
    text = view.text
    if not text:
        return False, "empty"

    paragraphs = flt.paragraph_exp.split(text.strip())
    paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
    if flt.dup_para_frac and paragraphs_duplicates / len(paragraphs) > flt.dup_para_frac:
        return False, "dup_para_frac"
    if flt.dup_para_char_frac and char_duplicates / len(text) > flt.dup_para_char_frac:
        return False, "dup_para_char_frac"

    lines = flt._line_splitter.split(text)
    line_duplicates, char_duplicates = find_duplicates(lines)
    if flt.dup_line_frac and line_duplicates / len(lines) > flt.dup_line_frac:
        return False, "dup_line_frac"
    if flt.dup_line_char_frac and char_duplicates / len(text) > flt.dup_line_char_frac:
        return False, "dup_line_char_frac"

    words = view.words(tokenizer)
    for n, n_frac in flt.top_n_grams:
        grams = n_grams(words, n, " ")
        if not grams:
            continue
        top_gram, top_count = Counter(grams).most_common(1)[0]   # ties: the first seen, as datatrove
        if len(top_gram) * top_count / len(text) > n_frac:
            return False, f"top_{n}_gram"

    for n, n_frac in flt.dup_n_grams:
        if find_all_duplicate(words, n) / len(text) > n_frac:
            return False, f"duplicated_{n}_n_grams"
    return True


def c4_quality(flt: Any, tokenizer: Any, view: TextView, outcomes: list[str]) -> Outcome:
    """C4's rules; appends each line's outcome (`kept` or the rule that removed it) to `outcomes`
    and, when the document stays, sets the view's text to the kept lines."""
    split_paragraph = flt.split_paragraph
    if split_paragraph:
        lines = view.lines()
    else:
        lines = [view.text[a:b] for a, b in sentence_pieces(tokenizer, view.text)]
    need = flt.min_num_sentences
    max_word_length = flt.max_word_length
    num_sentences = 0
    kept_lines: list[str] = []
    kept_counts: list[int | None] = []   # words per kept line from the first tokenization; None: count again
    line_counts = view.line_word_counts(tokenizer) if split_paragraph else None

    for i, line in enumerate(lines):
        line = line.strip()
        words = line.split()
        if max_word_length != -1 and any(len(word) > max_word_length for word in words):
            outcomes.append("too_long_word")
            continue
        stripped = line
        if flt.remove_citations:
            line = CITATION_REGEX.sub("", line)
        if flt.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
            outcomes.append("no_terminal_punc")
            continue
        if len(words) < flt.min_words_per_line:
            outcomes.append("too_few_words")
            continue
        line_l = line.lower()
        if flt.filter_lorem_ipsum and "lorem ipsum" in line_l:
            return False, "lorem_ipsum"
        if flt.filter_javascript and "javascript" in line_l:
            outcomes.append("javascript")
            continue
        if flt.filter_curly_bracket and "{" in line:
            return False, "curly_bracket"
        if flt.filter_policy and any(p in line_l for p in POLICY_SUBSTRINGS):
            outcomes.append("policy")
            continue
        # the count only meets `need`: once there, the sentences of later lines change nothing
        if need != -1 and num_sentences < need:
            num_sentences += len(sentence_pieces(tokenizer, line)) if split_paragraph else 1
        kept_lines.append(line)
        kept_counts.append(line_counts[i] if line_counts is not None and line == stripped else None)
        outcomes.append("kept")
    if num_sentences < need:
        return False, "too_few_sentences"

    new_text = ("\n" if split_paragraph else " ").join(kept_lines).strip()
    counts = {}
    if line_counts is not None:
        counts[id(tokenizer)] = sum(n if n is not None else len(tokenizer.word_tokenize(line))
                                    for n, line in zip(kept_counts, kept_lines, strict=True))
    view.set_text(new_text, counts)
    return True


def sentence_pieces(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """datatrove's split_into_sentences as (start, end) pieces of `text`: one piece per sentence end,
    the last running to the end of the text; one piece for a text with no sentence."""
    ends = [b for _, b in tokenizer.span_tokenize(text)]
    return list(zip([0] + ends[:-1], ends[:-1] + [len(text)], strict=True))


def fineweb_quality(flt: Any, tokenizer: Any, view: TextView, outcomes: list[str]) -> Outcome:
    text = view.text
    lines = [line for line in text.split("\n") if line.strip() != ""]
    if len(lines) == 0:
        return False, "empty"
    ratio = sum(1 for line in lines if line.endswith(flt.stop_chars)) / len(lines)
    if ratio < flt.line_punct_thr and not (ratio == 0 and flt.line_punct_exclude_zero):
        return False, "line_punct_ratio"

    ratio = sum(1 for line in lines if len(line) <= flt.short_line_length) / len(lines)
    if ratio > flt.short_line_threshold:
        return False, "short_line_ratio"

    ratio = find_duplicates(lines)[1] / len(text.replace("\n", ""))
    if ratio > flt.char_duplicates_ratio:
        return False, "char_dup_ratio"

    new_line = text.count("\n")
    if new_line / view.word_count(tokenizer) > flt.new_line_ratio:
        return False, "list_ratio"
    return True


PORTS: dict[str, Callable[[Any, Any, TextView, list[str]], Outcome]] = {
    "gopher_quality": gopher_quality,
    "gopher_repetition": gopher_repetition,
    "c4_quality": c4_quality,
    "fineweb_quality": fineweb_quality,
}
