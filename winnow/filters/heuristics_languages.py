"""Per-language settings of the heuristics stage's datatrove filters.

The Gopher, C4 and FineWeb rules were written for English. For a document whose `language` column
(the `language_id` stage) names another language, each filter is built with:

- that language's word tokenizer: datatrove's assignment (`load_word_tokenizer`), spaCy's blank
  tokenizers in winnow's faster form; where that tokenizer needs a package that is not installed
  (or one that downloads models, Stanza), spaCy's language-neutral `xx` tokenizer, which splits at
  spaces and punctuation;
- Gopher's stop-word rule with spaCy's stop-word list for the language (`spacy.lang.<code>.stop_words`,
  ~75 languages). English keeps Gopher's own eight words. spaCy's lists are longer (German 543 words),
  so the rule is laxer there: it still drops pages with fewer than `min_stop_words` distinct function
  words (menus, tables, keyword lists). `per_language: {de: {stop_words: [...]}}` sets a list.

A rule with no sensible setting for a language is skipped for it, and counted in the manifest's shard
stats as `skipped:<filter>:<rule>:<lang>` (documents of that language the filter looked at):

- the stop-word rule, for a language spaCy has no list for;
- every rule that counts words (Gopher's word count, mean word length, symbol, alphabetic and
  stop-word ratios, its n-gram repetition rules, C4's words per line and longest word, FineWeb's
  lines per word) and FineWeb's short-line share (30 characters is a sentence in these scripts), for
  languages written without spaces between words (UNSPACED) when no word segmenter for them is
  installed (spaCy's Chinese needs jieba, Japanese SudachiPy, Thai pythainlp): splitting at spaces
  would make a whole clause one word;
- C4's terminal-punctuation line rule, for languages whose scripts end sentences with marks outside
  C4's `. ? ! " '` (。 । ။ ። ։ ۔ …; OTHER_TERMINAL_PUNCT): it would remove every line. FineWeb's
  punctuation-share rule already uses datatrove's multilingual list and stays.

Everything else (line and paragraph repetition, bullets, ellipses, curly brackets, lorem ipsum,
duplicated characters) does not depend on the language and applies as configured. Settings given
under a filter's `per_language: {<code>: {...}}` win over all of the above, rule skips included.
"""

from __future__ import annotations

import importlib
import inspect
import math
from functools import cache, lru_cache
from typing import Any

# languages written without spaces between words
UNSPACED = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
# languages whose scripts end sentences with marks C4's terminal-punctuation rule does not know
OTHER_TERMINAL_PUNCT = UNSPACED | frozenset({"hi", "bn", "mr", "ne", "sa", "pa", "gu", "or", "as", "am",
                                             "ti", "hy", "ur", "dv", "si"})

# per filter: (the rules one setting switches off, that setting), for rules that count words
WORD_RULES: dict[str, list[tuple[tuple[str, ...], dict[str, Any]]]] = {
    "gopher_quality": [
        (("gopher_short_doc",), {"min_doc_words": None}),
        (("gopher_long_doc",), {"max_doc_words": None}),
        (("gopher_below_avg_threshold",), {"min_avg_word_length": None}),
        (("gopher_above_avg_threshold",), {"max_avg_word_length": None}),
        (("gopher_too_many_hashes", "gopher_too_many_ellipsis"), {"max_symbol_word_ratio": None}),
        (("gopher_below_alpha_threshold",), {"max_non_alpha_words_ratio": None}),
        (("gopher_enough_stop_words",), {"min_stop_words": None}),
    ],
    "gopher_repetition": [
        (("top_n_gram",), {"top_n_grams": ()}),
        (("duplicated_n_grams",), {"dup_n_grams": ()}),
    ],
    "c4_quality": [
        (("too_few_words",), {"min_words_per_line": -1}),
        (("too_long_word",), {"max_word_length": -1}),
    ],
    "fineweb_quality": [
        (("list_ratio",), {"new_line_ratio": math.inf}),
        (("short_line_ratio",), {"short_line_thr": math.inf}),
    ],
}
STOP_WORD_RULE = (("gopher_enough_stop_words",), {"min_stop_words": None})
TERMINAL_PUNCT_RULE = (("no_terminal_punct",), {"filter_no_terminal_punct": False})


@cache
def spacy_stop_words(language: str) -> tuple[str, ...] | None:
    """spaCy's stop-word list for an ISO 639-1 code, sorted; None where spaCy has none."""
    if not language.isalpha():
        return None
    try:
        module = importlib.import_module(f"spacy.lang.{language}.stop_words")
    except ImportError:
        return None
    return tuple(sorted(module.STOP_WORDS))


@cache
def word_tokenizer(language: str) -> Any | None:
    """The word tokenizer for a language, already loaded (so a missing package shows here, not mid-shard);
    None for an UNSPACED language with no word segmenter installed."""
    from datatrove.utils.word_tokenizers import SpaCyTokenizer, StanzaTokenizer, load_word_tokenizer

    from winnow.filters.spacy_words import WarmSpacyTokenizer

    try:
        # datatrove assigns Chinese spaCy's `xx` (spaces); its own zh/ja classes are real segmenters
        tok = SpaCyTokenizer(language) if language in ("zh", "ja") else load_word_tokenizer(language)
        if isinstance(tok, StanzaTokenizer):
            raise ImportError("Stanza downloads its models on first use")
        if isinstance(tok, SpaCyTokenizer) and tok.config is None:
            tok = WarmSpacyTokenizer(tok.language)
        tok.word_tokenize("a b")   # loads the model now
    except (ImportError, ValueError, OSError):
        tok = None
    if tok is not None and not (language in UNSPACED and getattr(tok, "language", None) == "xx"):
        return tok
    return None if language in UNSPACED else neutral_tokenizer()


@lru_cache(maxsize=1)
def neutral_tokenizer() -> Any:
    """spaCy's language-neutral `xx` tokenizer: splits at spaces and punctuation."""
    from winnow.filters.spacy_words import WarmSpacyTokenizer

    return WarmSpacyTokenizer("xx")


def _is_on(value: Any) -> bool:
    """Whether a constructor argument's value leaves its rule switched on."""
    return value not in (None, -1, (), [], False, 0, math.inf)


@cache
def _defaults(key: str) -> dict[str, Any]:
    from winnow.filters.heuristics import filter_class

    params = inspect.signature(filter_class(key).__init__).parameters
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}


def language_settings(key: str, language: str, base: dict[str, Any], override: dict[str, Any]
                      ) -> tuple[dict[str, Any], list[str]]:
    """Constructor arguments of filter `key` for documents in `language` (not English), from the
    filter's block (`base`, without `per_language`) and its `per_language` entry (`override`), and the
    rules skipped for that language."""
    kwargs = dict(base)
    switched: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    tokenizer = word_tokenizer(language)
    if tokenizer is None:
        switched += WORD_RULES.get(key, [])
    # the filters still split words for the rules that stay (C4 counts sentences with it): spaCy's
    # language-neutral tokenizer and sentencizer know 。！？
    kwargs["language"] = tokenizer if tokenizer is not None else neutral_tokenizer()
    if key == "gopher_quality" and tokenizer is not None:
        stop_words = spacy_stop_words(language)
        if stop_words is None:
            switched.append(STOP_WORD_RULE)
        else:
            kwargs["stop_words"] = list(stop_words)
    if key == "c4_quality" and language in OTHER_TERMINAL_PUNCT:
        switched.append(TERMINAL_PUNCT_RULE)
    skipped: list[str] = []
    defaults = _defaults(key)
    for rules, off in switched:
        if any(name in override for name in off):   # the user's setting for this language wins
            continue
        if all(_is_on(kwargs.get(n, defaults.get(n))) for n in off):
            skipped += rules
        kwargs.update(off)
    kwargs.update(override)
    return kwargs, skipped
