"""Heuristic quality filters: datatrove's Gopher, C4 and FineWeb rules, run per shard.

The rules are datatrove's own classes (not re-implementations), so results match a datatrove
pipeline with the same arguments; each YAML block is passed to the class constructor as is
(`null` disables a filter). Filters run in the order listed; the first one that drops a document
names the reason as `<filter>:<rule>`, e.g. `gopher_quality:gopher_short_doc`. C4's filter also
removes lines from kept documents (its line rules), exactly as in datatrove, so `text` may change.

References: Gopher (Rae et al. 2021, arXiv 2112.11446, App. A), C4 (Raffel et al. 2020, JMLR 21,
sec. 2.2), FineWeb (Penedo et al. 2024, arXiv 2406.17557).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from winnow.pipeline.stage import Stage

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

    @model_validator(mode="after")
    def _check_arguments(self) -> HeuristicsParams:
        unknown = [k for k in self.order if k not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter in order: {unknown}; known: {list(FILTERS)}")
        for key in FILTERS:
            kwargs = getattr(self, key)
            if not kwargs:
                continue
            accepted = set(inspect.signature(filter_class(key).__init__).parameters) - {"self", "exclusion_writer"}
            bad = sorted(set(kwargs) - accepted)
            if bad:
                raise ValueError(f"{key}: unknown argument(s) {bad}; accepted: {sorted(accepted)}")
        return self


class HeuristicsStage(Stage):
    name = "heuristics"
    Params = HeuristicsParams

    def __init__(self, params: HeuristicsParams | None = None):
        super().__init__(params)
        self._filters: list[tuple[str, Any]] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_filters": None}  # filters are built on each worker, not pickled

    @property
    def filters(self) -> list[tuple[str, Any]]:
        if self._filters is None:
            from winnow.filters.spacy_words import WarmSpacyTokenizer, import_spacy_without_torch

            import_spacy_without_torch()
            shared = WarmSpacyTokenizer("en") if self.params.warm_tokenizer else None
            self._filters = []
            for key in self.params.order:
                kwargs = getattr(self.params, key)
                if kwargs is None:
                    continue
                if shared is not None and kwargs.get("language", "en") == "en":
                    # datatrove accepts a WordTokenizer wherever it takes a language
                    kwargs = {**kwargs, "language": shared}
                self._filters.append((key, filter_class(key)(**kwargs)))
        return self._filters

    def apply(self, table: pa.Table, state: None) -> tuple[pa.Table, pa.Table]:
        from datatrove.data import Document

        texts = table.column("text").to_pylist()
        ids = table.column("id").to_pylist()
        keep = np.ones(len(texts), bool)
        reasons: list[str | None] = [None] * len(texts)
        new_texts = list(texts)
        for i, (doc_id, text) in enumerate(zip(ids, texts, strict=True)):
            doc = Document(text=text, id=doc_id)
            for key, flt in self.filters:
                result = flt.filter(doc)
                ok, why = result if isinstance(result, tuple) else (result, None)
                if not ok:
                    keep[i], reasons[i] = False, f"{key}:{why or 'dropped'}"
                    break
            new_texts[i] = doc.text
        dropped = np.flatnonzero(~keep)  # rejected rows keep their original text
        rejected = self.reject(table.take(pa.array(dropped, pa.int64())), [reasons[i] for i in dropped])
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(new_texts, pa.string()))
        return table.filter(pa.array(keep)), rejected
