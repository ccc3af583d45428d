"""Heuristic quality filters: datatrove's Gopher, C4 and FineWeb rules, run per shard.

The filters are datatrove's own classes, built from each YAML block as is (`null` disables a
filter), so results match a datatrove pipeline with the same arguments. Their rules run fed from one
word list and one line list per document (filters/heuristics_rules.py: datatrove's code paths with
the filter's own thresholds, same decisions, edits and per-line outcomes, about twice as fast);
`shared_words: false`, another datatrove version or a subclass runs each filter's own `filter`. Filters run in the order listed; the first one that drops a document
names the reason as `<filter>:<rule>`, e.g. `gopher_quality:gopher_short_doc`. C4's filter also
removes lines from kept documents (its line rules), exactly as in datatrove, so `text` may change:
each removed line is a cut named by the rule that removed it (`c4_quality:no_terminal_punct`,
`c4_quality:too_few_words`, …, the per-line outcomes datatrove counts), and the rest of the
change (line breaks, stripped indentation, citations) `c4_quality:whitespace_and_citations`; kept
rows carry `heuristics_bytes_removed`, rejected rows the text they came in with.

`line_unit: paragraph` is for hard-wrapped text (documentation, docstrings, e-mail, plain-text
books), where a sentence runs over several lines and C4's line rules (terminal punctuation, three
words a line) would cut most sentences in half. The filters then see each paragraph (a run of lines
between blank lines) as one line, its line breaks turned into spaces; a paragraph a line rule drops
is removed whole, and every kept paragraph keeps its original lines and indentation. The
separators that went with removed paragraphs are cut as `<filter>:paragraph_breaks`.

With a `language` column (the `language_id` stage), a document in another language than English
meets filters built for its language: its word tokenizer, spaCy's stop words for Gopher's stop-word
rule, rules with no sensible setting for it skipped (counted as `skipped:<filter>:<rule>:<lang>` in
the manifest's shard stats); `per_language: {<code>: {...}}` under a filter sets its constructor
arguments for that language (filters/heuristics_languages.py says which rule is skipped where, and
why). English documents, rows without a language, and tables without the column see the filters
exactly as configured.

References: Gopher (Rae et al. 2021, arXiv 2112.11446, App. A), C4 (Raffel et al. 2020, JMLR 21,
sec. 2.2), FineWeb (Penedo et al. 2024, arXiv 2406.17557).
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from winnow.pipeline.stage import Cuts, Stage

# a blank line (spaces or tabs only) ends a paragraph; the same rule as line_dedup's `unit: paragraph`
PARAGRAPH_SEP = re.compile(r"(\n(?:[ \t\r\f\v]*\n)+)")
# the column the language_id stage writes; rows in English (or with none) see the filters as configured
LANGUAGE_COLUMN = "language"
DEFAULT_LANGUAGE = "en"
# datatrove's per-line counters (C4) → the reason a line was removed
LINE_RULES = {"no_terminal_punc": "no_terminal_punct"}

FILTERS = {
    "gopher_quality": "datatrove.pipeline.filters.gopher_quality_filter:GopherQualityFilter",
    "gopher_repetition": "datatrove.pipeline.filters.gopher_repetition_filter:GopherRepetitionFilter",
    "c4_quality": "datatrove.pipeline.filters.c4_filters:C4QualityFilter",
    "fineweb_quality": "datatrove.pipeline.filters.fineweb_quality_filter:FineWebQualityFilter",
}


def filter_class(key: str) -> type:
    import importlib

    module, _, attr = FILTERS[key].partition(":")
    return getattr(importlib.import_module(module), attr)


class HeuristicsParams(BaseModel):
    """Constructor arguments of each datatrove filter; `null` disables it. Defaults are datatrove's."""

    model_config = ConfigDict(extra="forbid")
    gopher_quality: dict[str, Any] | None = Field(default_factory=dict)
    gopher_repetition: dict[str, Any] | None = Field(default_factory=dict)
    c4_quality: dict[str, Any] | None = Field(default_factory=dict)
    fineweb_quality: dict[str, Any] | None = Field(default_factory=dict)
    order: list[str] = Field(default_factory=lambda: list(FILTERS),
                             description="the order filters run in; the first to drop names the reason")
    warm_tokenizer: bool = Field(True, description="English filters share winnow's faster spaCy word "
                                 "splitter (same tokens as datatrove's); false: datatrove's own")
    shared_words: bool = Field(True, description="datatrove's rules fed from one word and one line list "
                               "per document (filters/heuristics_rules.py, same decisions); false: each "
                               "datatrove filter's own `filter`")
    line_unit: Literal["line", "paragraph"] = Field(
        "line", description="what the filters' line rules see as a line: `line` (web pages, as the papers) "
        "or `paragraph` (hard-wrapped text: lines between blank lines joined; dropped paragraphs go whole)")

    @classmethod
    def accepted_keys(cls, field: str) -> list[str] | None:
        """The constructor arguments a filter's block accepts; the config loader reports any other key
        at its own line with the nearest of these (pipeline/config.py)."""
        if field not in FILTERS:
            return None
        return sorted(set(constructor_arguments(field)) | {"per_language"})

    @model_validator(mode="after")
    def _check_arguments(self) -> HeuristicsParams:
        unknown = [k for k in self.order if k not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter in order: {unknown}; known: {list(FILTERS)}")
        for key in FILTERS:
            kwargs = getattr(self, key)
            if not kwargs:
                continue
            accepted = set(self.accepted_keys(key) or ())
            bad = sorted(set(kwargs) - accepted)
            if bad:
                raise ValueError(f"{key}: unknown argument(s) {bad}; accepted: {sorted(accepted)}")
            per_language = kwargs.get("per_language") or {}
            if not isinstance(per_language, dict):
                raise ValueError(f"{key}.per_language: a mapping of language code to arguments, not "
                                 f"{type(per_language).__name__}")
            for code, override in per_language.items():
                if not isinstance(override, dict):
                    raise ValueError(f"{key}.per_language.{code}: a mapping of arguments, not "
                                     f"{type(override).__name__}")
                bad = sorted(set(override) - set(constructor_arguments(key)))
                if bad:
                    raise ValueError(f"{key}.per_language.{code}: unknown argument(s) {bad}; accepted: "
                                     f"{constructor_arguments(key)}")
        return self


def constructor_arguments(key: str) -> list[str]:
    """The arguments a datatrove filter's constructor takes from a config block."""
    return sorted(set(inspect.signature(filter_class(key).__init__).parameters) - {"self", "exclusion_writer"})


class HeuristicsStage(Stage):
    name = "heuristics"
    Params = HeuristicsParams
    version = 2   # per-language settings: the same params give other output on a `language` column
    edits_text = True

    def __init__(self, params: HeuristicsParams | None = None):
        super().__init__(params)
        # per language: (filter key, datatrove filter, rules skipped, its port fed from one word list)
        self._filters: dict[str | None, list[tuple[str, Any, list[str], Any]]] = {}
        self._skips: Counter[str] = Counter()

    def __getstate__(self) -> dict:
        # filters are built on each worker, not pickled
        return {**self.__dict__, "_filters": {}, "_skips": Counter()}

    @property
    def filters(self) -> list[tuple[str, Any]]:
        """The filters as configured (English documents, and rows with no language)."""
        return [(key, flt) for key, flt, _ in self.filters_for(None)]

    def filters_for(self, language: str | None) -> list[tuple[str, Any, list[str]]]:
        """(filter key, datatrove filter, rules skipped) for documents in `language`; built once."""
        return [(key, flt, skipped) for key, flt, skipped, _ in self._built(language)]

    def _built(self, language: str | None) -> list[tuple[str, Any, list[str], Any]]:
        """filters_for's filters, each with its port (heuristics_rules.py), or None where datatrove's
        own `filter` runs."""
        from winnow.filters.heuristics_rules import shared_rules

        language = language or DEFAULT_LANGUAGE
        if language not in self._filters:
            from winnow.filters.spacy_words import import_spacy_without_torch, warm_tokenizer

            import_spacy_without_torch()
            if language == DEFAULT_LANGUAGE:
                shared = warm_tokenizer("en") if self.params.warm_tokenizer else None
            built = []
            for key in self.params.order:
                block = getattr(self.params, key)
                if block is None:
                    continue
                kwargs = {k: v for k, v in block.items() if k != "per_language"}
                override = (block.get("per_language") or {}).get(language, {})
                skipped: list[str] = []
                if language == DEFAULT_LANGUAGE:
                    kwargs = {**kwargs, **override}
                    if shared is not None and kwargs.get("language", "en") == "en":
                        # datatrove accepts a WordTokenizer wherever it takes a language
                        kwargs = {**kwargs, "language": shared}
                else:
                    from winnow.filters.heuristics_languages import language_settings

                    kwargs, skipped = language_settings(key, language, kwargs, override)
                flt = filter_class(key)(**kwargs)
                flt.stat_update = _LineEvents(flt.stat_update)  # which line each line rule removed
                built.append((key, flt, skipped, shared_rules(key, flt) if self.params.shared_words else None))
            self._filters[language] = built
        return self._filters[language]

    def apply(self, table: pa.Table, state: None) -> tuple[pa.Table, pa.Table, pa.Table]:
        from winnow.filters.heuristics_rules import TextView

        texts = table.column("text").to_pylist()
        ids = table.column("id").to_pylist()
        languages = (table.column(LANGUAGE_COLUMN).to_pylist() if LANGUAGE_COLUMN in table.column_names
                     else [None] * len(texts))
        keep = np.ones(len(texts), bool)
        reasons: list[str | None] = [None] * len(texts)
        new_texts = list(texts)
        cuts = Cuts()
        self._skips = Counter()
        paragraphs = self.params.line_unit == "paragraph"
        for i, (doc_id, text, language) in enumerate(zip(ids, texts, languages, strict=True)):
            text = text or ""
            units, seps = _paragraphs(text) if paragraphs else ([], [])
            alive = [u for u, unit in enumerate(units) if unit.strip()]  # the paragraph behind each line of the view
            view = TextView("\n".join(" ".join(units[u].split()) for u in alive) if paragraphs else text)
            for key, flt, skipped, rules in self._built(language):
                if skipped:
                    self._skips.update(f"skipped:{key}:{rule}:{language}" for rule in skipped)
                before = view.text
                ok, why, outcomes = self._run_filter(flt, rules, view, doc_id)
                if not ok:
                    keep[i], reasons[i] = False, f"{key}:{why or 'dropped'}"
                    break
                if view.text != before:
                    alive = self._cut_lines(cuts, i, key, before, view.text, outcomes,
                                            units if paragraphs else None, alive)
            if not keep[i]:
                continue
            new_texts[i] = _join(units, seps, alive) if paragraphs else view.text
            residue = len(text.encode()) - len(new_texts[i].encode()) - cuts.row_total(i)
            cuts.add(i, "heuristics:paragraph_breaks" if paragraphs else "heuristics:whitespace_and_citations",
                     residue)
        return self.split_edited(table, pa.array(new_texts, pa.string()), keep, reasons, cuts)

    @staticmethod
    def _run_filter(flt: Any, rules: Any, view: Any, doc_id: str) -> tuple[bool, str | None, list[str]]:
        """(kept, reason, each line's outcome) of one filter on the view's text, which it may edit:
        through the port where there is one, else through datatrove's own `filter`."""
        if rules is not None:
            outcomes: list[str] = []
            result = rules(view, outcomes)
        else:
            from datatrove.data import Document

            doc = Document(text=view.text, id=doc_id)
            flt.stat_update.lines = outcomes = []
            result = flt.filter(doc)
            if doc.text != view.text:
                view.set_text(doc.text)
        ok, why = result if isinstance(result, tuple) else (result, None)
        return ok, why, outcomes

    def shard_stats(self, data: Any, kept: pa.Table, rejected: pa.Table) -> dict[str, float]:
        """Per rule skipped for a language, the documents of that language its filter looked at
        (`skipped:<filter>:<rule>:<lang>`), from the `apply` the engine just ran in this task."""
        return dict(self._skips)

    @staticmethod
    def _cut_lines(cuts: Cuts, i: int, key: str, before: str, after: str, outcomes: list[str],
                   units: list[str] | None, alive: list[int]) -> list[int]:
        """Declare the lines (or, with `units`, the original paragraphs) a filter removed from row i,
        each under the rule that removed it; returns the paragraphs still alive. Without a per-line
        account (a filter that edits text but keeps no line counters) the whole change is one cut."""
        lines = before.splitlines()
        if len(outcomes) != len(lines):
            if units is None:
                cuts.add(i, f"{key}:edited", len(before.encode()) - len(after.encode()))
            return alive   # paragraphs: the original text stands, only line rules remove paragraphs
        for line, u, o in zip(lines, alive if units is not None else lines, outcomes, strict=True):
            if o != "kept":
                piece = units[u] if units is not None else line
                cuts.add(i, f"{key}:{LINE_RULES.get(o, o)}", len(piece.encode()), piece)
        return [u for u, o in zip(alive, outcomes, strict=True) if o == "kept"] if units is not None else alive


class _LineEvents:
    """Wraps a datatrove filter's `stat_update`: records, per line it looked at (`line-total`), what
    happened to it (`kept`, or the rule that removed it: `line-filter-<rule>`), then passes the
    update on to datatrove's own counters."""

    def __init__(self, inner: Any):
        self.inner, self.lines = inner, []

    def __call__(self, *labels: str, **kwargs: Any) -> Any:
        for label in labels:
            if label == "line-kept":
                self.lines.append("kept")
            elif label.startswith("line-filter-"):
                self.lines.append(label.removeprefix("line-filter-"))
        return self.inner(*labels, **kwargs)


def _paragraphs(text: str) -> tuple[list[str], list[str]]:
    """(paragraphs, the blank-line runs between them): text == p0 + s0 + p1 + s1 + …"""
    parts = PARAGRAPH_SEP.split(text)
    return parts[0::2], parts[1::2]


def _join(units: list[str], seps: list[str], alive: list[int]) -> str:
    """The kept paragraphs, each after the separator that preceded it in the original."""
    out: list[str] = []
    for u in alive:
        if out:
            out.append(seps[u - 1])
        out.append(units[u])
    return "".join(out)
