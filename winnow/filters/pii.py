"""The `pii` stage: find personal data (pii_detect.py) and redact it, drop its documents, or count it.

`action: redact` (default) replaces each span with `replacement` (`<EMAIL>`, `<PHONE>`, `<IP>`,
`<CREDIT_CARD>`, `<IBAN>`); `drop` rejects a document holding any, reason `pii:<kind>` naming its
most frequent kind (ties: the kind found first in the text); `tag` only counts. Every row gets
`pii_found`, a struct of int32 counts, one field per kind (null for kinds not looked for): a struct
loads in `datasets` and Arrow alike, where a map column does not load everywhere.

Redaction edits kept text, so the stage declares its cuts (`Stage.split_edited`): per row
`pii_bytes_removed`, the UTF-8 bytes the text lost (a span's bytes less its tag's, signed: a short
address under a longer tag is a negative cut), and the removed bytes by reason `pii:<kind>`. The
removed pieces carry no text: what the stage took out must not be written or shown anywhere, so
`outputs.removed` lists the ids, reasons and bytes only. The manifest counts spans and documents
per kind.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from winnow.filters.pii_detect import KINDS, Span, find_pii, redact
from winnow.pipeline.stage import Cuts, Stage

Kind = Literal["email", "ip", "phone", "credit_card", "iban"]
FOUND_COLUMN = "pii_found"
FOUND_TYPE = pa.struct([(k, pa.int32()) for k in KINDS])


class PIIParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), description="what to look for")
    action: Literal["redact", "drop", "tag"] = Field(
        "redact", description="redact: replace each span; drop: reject the document (reason pii:<kind>); "
        "tag: count only")
    replacement: str = Field("<{kind}>", description="what a span becomes; {kind} is the upper-case kind")
    phone_region: str | None = Field("US", description="region whose national numbers count (CLDR code); "
                                     "null: international +numbers only")
    phone_leniency: Literal["possible", "valid", "strict_grouping", "exact_grouping"] = Field(
        "valid", description="phonenumbers' Leniency: valid = a number the region's plan allows")

    @field_validator("replacement")
    @classmethod
    def _formats_with_kind(cls, value: str) -> str:
        try:
            value.format(kind="EMAIL")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"replacement may use only {{kind}}: {value!r} ({e})") from None
        return value

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None:
            return value
        import phonenumbers

        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {value!r} (a two-letter CLDR code such as US, DE, GB)")
        return value.upper()


def main_kind(spans: list[Span]) -> str:
    """The most frequent kind among `spans`; of equally frequent kinds, the one found first."""
    counts = Counter(s.kind for s in spans)
    first = {}
    for i, s in enumerate(spans):
        first.setdefault(s.kind, i)
    return max(counts, key=lambda k: (counts[k], -first[k]))


class PIIStage(Stage):
    name = "pii"
    Params = PIIParams
    edits_text = True

    @classmethod
    def display_text(cls, text: str, params: dict) -> str:
        """Rows `action: drop` rejected still hold their personal data: a report shows them masked."""
        return mask_for_display(text, params)

    def find(self, text: str) -> list[Span]:
        p: PIIParams = self.params
        return find_pii(text, p.kinds, p.phone_region, p.phone_leniency)

    def apply(self, table: pa.Table, state: None) -> tuple[pa.Table, pa.Table, pa.Table]:
        p: PIIParams = self.params
        texts = table.column("text").to_pylist()
        n = len(texts)
        keep = np.ones(n, bool)
        reasons: list[str | None] = [None] * n
        new_texts = list(texts)
        found = []
        cuts = Cuts()
        for i, text in enumerate(texts):
            spans = self.find(text or "")
            counts = Counter(s.kind for s in spans)
            found.append({k: (counts.get(k, 0) if k in p.kinds else None) for k in KINDS})
            if not spans or p.action == "tag":
                continue
            if p.action == "drop":
                keep[i], reasons[i] = False, f"pii:{main_kind(spans)}"
                continue
            new_texts[i] = redact(text, spans, p.replacement)
            for s in spans:  # the piece's text stays out: personal data is written nowhere
                tag = p.replacement.format(kind=s.kind.upper())
                cuts.add(i, f"pii:{s.kind}", len(text[s.start:s.end].encode()) - len(tag.encode()))
        if FOUND_COLUMN in table.column_names:  # an earlier pii stage: the column describes this one
            table = table.drop_columns([FOUND_COLUMN])
        table = table.append_column(FOUND_COLUMN, pa.array(found, FOUND_TYPE))
        return self.split_edited(table, pa.array(new_texts, pa.string()), keep, reasons, cuts)

    def shard_stats(self, data: pa.Table, kept: pa.Table, rejected: pa.Table) -> dict[str, float]:
        """Spans (`found:<kind>`) and documents (`documents:<kind>`) per kind, kept and rejected rows
        together; the manifest sums them over shards."""
        out: dict[str, float] = {}
        for kind in self.params.kinds:
            out[f"found:{kind}"] = 0.0
            out[f"documents:{kind}"] = 0.0
        for t in (kept, rejected):
            if not t.num_rows or FOUND_COLUMN not in t.column_names:
                continue
            col = t.column(FOUND_COLUMN).combine_chunks()
            for kind in self.params.kinds:
                counts = np.asarray(col.field(kind).fill_null(0), np.int64)
                out[f"found:{kind}"] += float(counts.sum())
                out[f"documents:{kind}"] += float((counts > 0).sum())
        return out


def mask_for_display(text: str, params: dict | None = None) -> str:
    """`text` with everything a `pii` stage of these params (its manifest's `params`) finds shown as
    `<EMAIL>`, `<PHONE>` …: what a report may show of a row the stage dropped or only tagged."""
    p = PIIParams(**(params or {}))
    return redact(text, find_pii(text, p.kinds, p.phone_region, p.phone_leniency))
