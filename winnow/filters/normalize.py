"""Text normalisation: Unicode NFC, control characters out, whitespace tidied, all in pyarrow compute.

Rows whose text is empty after normalising are rejected as `empty_after_normalize`.
Leading indentation is kept (code and poetry need it); runs of blank lines shrink to one.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.stage import Stage

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

    def normalize(self, text: pa.ChunkedArray) -> pa.ChunkedArray:
        p: NormalizeParams = self.params
        text = pc.replace_substring_regex(text, r"\r\n?", "\n")
        if p.form:
            text = pc.utf8_normalize(text, p.form)
        if p.remove_control:
            text = pc.replace_substring_regex(text, CONTROL, "")
        if p.unify_spaces:
            text = pc.replace_substring_regex(text, SPACE, " ")
        if p.collapse_spaces:
            text = pc.replace_substring_regex(text, r"([^\n ]) {2,}", r"\1 ")
        if p.strip_lines:
            text = pc.replace_substring_regex(text, r"[ \t]+\n", "\n")
        text = pc.replace_substring_regex(text, rf"\n{{{p.max_blank_lines + 2},}}",
                                          "\n" * (p.max_blank_lines + 1))
        return pc.utf8_trim_whitespace(text)

    def apply(self, table: pa.Table, state: None) -> tuple[pa.Table, pa.Table]:
        text = self.normalize(table.column("text"))
        table = table.set_column(table.schema.get_field_index("text"), "text", text)
        empty = pc.equal(pc.utf8_length(text), 0)
        rejected = table.filter(empty)
        return table.filter(pc.invert(empty)), self.reject(rejected, ["empty_after_normalize"] * rejected.num_rows)
