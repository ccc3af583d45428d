"""Which copy of a duplicate group survives: the `keep` option every dedup stage shares.

    first                  earliest in input order (shard order, then row)
    longest                most characters of `text`
    column:<name>          highest value of a column (e.g. a quality score); `column:<name>:asc` lowest
    prototypicality        semantic_dedup only: SemDeDup's rule, least similar to its cluster centroid

Every rule is a score per row, higher = preferred; ties go to the earlier row, so the outcome never
depends on how many workers ran. A null in a priority column ranks last.

`dup_count` is how many input documents a survivor stands for: 1 for a row that met no duplicate,
the group's size for a survivor. When an earlier dedup stage already wrote `dup_count`, the group's
counts are summed, so after exact and then fuzzy dedup a survivor still counts every copy it replaced.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEEP_HELP = "survivor of a duplicate group: first | longest | column:<name> (highest) | column:<name>:asc"
DUP_COUNT = "dup_count"


def check_keep(keep: str, allow_prototypicality: bool = False) -> str:
    """`keep` itself, or ValueError naming what is accepted."""
    parts = keep.split(":")
    ok = keep in ("first", "longest") or (allow_prototypicality and keep == "prototypicality") or \
        (parts[0] == "column" and len(parts) in (2, 3) and parts[1] and (len(parts) == 2 or parts[2] in ("asc", "desc")))
    if not ok:
        extra = " | prototypicality" if allow_prototypicality else ""
        raise ValueError(f"keep must be one of: first | longest | column:<name>[:asc|:desc]{extra}; got {keep!r}")
    return keep


def keep_columns(keep: str) -> list[str]:
    """The columns `keep_scores` reads: `text` for longest, the priority column for column:<name>."""
    if keep == "longest":
        return ["text"]
    if keep.startswith("column:"):
        return [keep.split(":")[1]]
    return []


def keep_scores(table: pa.Table, keep: str) -> np.ndarray:
    """float64 score per row of `table`, higher = kept first (zeros for `first` and `prototypicality`)."""
    if keep == "longest":
        return np.asarray(pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False), np.float64)
    if keep.startswith("column:"):
        parts = keep.split(":")
        if parts[1] not in table.column_names:
            raise KeyError(f"keep: column {parts[1]!r} is not in the data (columns: {', '.join(table.column_names)})")
        values = pc.cast(table.column(parts[1]), pa.float64()).to_numpy(zero_copy_only=False)
        values = np.where(np.isnan(values), -np.inf if len(parts) == 2 or parts[2] == "desc" else np.inf, values)
        return -values if len(parts) == 3 and parts[2] == "asc" else values
    return np.zeros(table.num_rows)


def dup_weights(table: pa.Table) -> np.ndarray:
    """int64 documents each row already stands for: its `dup_count` from an earlier dedup stage, else 1."""
    if DUP_COUNT not in table.column_names:
        return np.ones(table.num_rows, np.int64)
    return np.array(pc.fill_null(table.column(DUP_COUNT), 1).to_numpy(zero_copy_only=False), np.int64)  # a copy: callers write


def with_dup_count(table: pa.Table, rows: np.ndarray, counts: np.ndarray) -> pa.Table:
    """`table` with `dup_count` set: `counts` at `rows` (survivors), the incoming value (or 1) elsewhere."""
    values = dup_weights(table)
    values[np.asarray(rows, np.int64)] = counts
    column = pa.array(values, pa.int64())
    if DUP_COUNT in table.column_names:
        return table.set_column(table.column_names.index(DUP_COUNT), DUP_COUNT, column)
    return table.append_column(DUP_COUNT, column)
