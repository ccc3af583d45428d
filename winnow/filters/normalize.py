"""Text normalisation: Unicode NFC, control characters out, whitespace tidied, all in pyarrow compute.

Rows whose text is empty after normalising are rejected as `empty_after_normalize`, with the text
they came in with. Leading indentation is kept (code and poetry need it); runs of blank lines shrink
to one. Each step's byte change per row is a cut with its own reason (`normalize:control`,
`normalize:line_endings`, `normalize:unicode_form`, `normalize:spaces`, `normalize:blank_lines`,
`normalize:trailing_spaces`, `normalize:trim`), counted in `normalize_bytes_removed`; an NFKC
expansion (a ligature written out) is a negative cut. The pieces are whitespace and control
characters, so `removed/` holds their byte counts, not their text.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.stage import Cuts, Stage, utf8_bytes

# C0/C1 controls except \t and \n, plus zero-width and byte-order marks (RE2 syntax)
CONTROL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\x{200B}\x{200C}\x{200D}\x{2060}\x{FEFF}]"
# every Unicode space that is not a line break, except the tab
SPACE = r"[\x{00A0}\x{1680}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}]"


class NormalizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    form: str | None = Field("NFC", description="Unicode normal form (NFC, NFKC, …); null to skip")
    remove_control: bool = Field(True, description="drop control, zero-width and BOM characters")
    unify_spaces: bool = Field(True, description="turn no-break and other Unicode spaces into ' '")
    collapse_spaces: bool = Field(False, description="shrink runs of spaces inside lines (off: keeps layout)")
    strip_lines: bool = Field(True, description="remove trailing spaces on every line")
    max_blank_lines: int = Field(1, ge=0, description="longest run of blank lines kept")


class NormalizeStage(Stage):
    """Normalises `text` in place."""

    name = "normalize"
    Params = NormalizeParams
    edits_text = True

    def steps(self) -> list[tuple[str, Callable]]:
        """(reason, text -> text) in the order they run."""
        p: NormalizeParams = self.params
        out = [("line_endings", lambda t: pc.replace_substring_regex(t, r"\r\n?", "\n"))]
        if p.form:
            out.append(("unicode_form", lambda t: pc.utf8_normalize(t, p.form)))
        if p.remove_control:
            out.append(("control", lambda t: pc.replace_substring_regex(t, CONTROL, "")))
        if p.unify_spaces:
            out.append(("spaces", lambda t: pc.replace_substring_regex(t, SPACE, " ")))
        if p.collapse_spaces:
            out.append(("spaces", lambda t: pc.replace_substring_regex(t, r"([^\n ]) {2,}", r"\1 ")))
        if p.strip_lines:
            out.append(("trailing_spaces", lambda t: pc.replace_substring_regex(t, r"[ \t]+\n", "\n")))
        out.append(("blank_lines", lambda t: pc.replace_substring_regex(t, rf"\n{{{p.max_blank_lines + 2},}}",
                                                                        "\n" * (p.max_blank_lines + 1))))
        out.append(("trim", pc.utf8_trim_whitespace))
        return out

    def normalize(self, text: pa.ChunkedArray, cuts: Cuts | None = None) -> pa.ChunkedArray:
        before = utf8_bytes(text) if cuts is not None else None
        rows = np.arange(len(text))
        for reason, step in self.steps():
            text = step(text)
            if cuts is not None:
                after = utf8_bytes(text)
                cuts.add_many(rows, f"{self.name}:{reason}", before - after)
                before = after
        return text

    def apply(self, table: pa.Table, state: None) -> tuple[pa.Table, pa.Table, pa.Table]:
        cuts = Cuts()
        text = self.normalize(table.column("text"), cuts)
        keep = np.asarray(pc.greater(pc.fill_null(pc.utf8_length(text), 0), 0))
        return self.split_edited(table, text, keep, ["empty_after_normalize"] * table.num_rows, cuts)
