"""Bounded reads of a stage folder's Parquet shards: only the columns asked for, at most so many rows.

The report must come back in seconds from a 100 GB run, so nothing here reads a whole shard's text:
scalar columns (reasons, scores, cluster sizes) are scanned up to a row budget, and text is then
fetched only for the handful of rows shown, from the row groups that hold them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def kept_files(stage_dir: Path) -> list[Path]:
    return sorted(stage_dir.glob("train-*.parquet"))


def rejected_files(stage_dir: Path) -> list[Path]:
    return sorted((stage_dir / "rejected").glob("*.parquet"))


def columns_of(path: Path) -> list[str]:
    return pq.read_schema(path).names


@dataclass
class Scan:
    """Columns of the first `rows` rows of some files, and where each row came from (to fetch its text)."""

    table: pa.Table
    file_index: np.ndarray   # into `files`
    row_index: np.ndarray    # row inside that file
    files: list[Path]
    complete: bool           # False when the row budget stopped the scan early


def scan(files: list[Path], columns: list[str], max_rows: int) -> Scan:
    """The listed columns (those a file has; absent ones are null) of up to `max_rows` rows, in file order."""
    parts, fidx, ridx, seen, complete = [], [], [], 0, True
    for i, f in enumerate(files):
        if seen >= max_rows:
            complete = False
            break
        pf = pq.ParquetFile(f)
        have = [c for c in columns if c in pf.schema_arrow.names]
        take = min(pf.metadata.num_rows, max_rows - seen)
        if take == 0:
            continue
        if take < pf.metadata.num_rows:
            complete = False
        table = _head(pf, have, take)
        for c in columns:
            if c not in have:
                table = table.append_column(c, pa.nulls(table.num_rows))
        parts.append(table.select(columns))
        fidx.append(np.full(table.num_rows, i, np.int64))
        ridx.append(np.arange(table.num_rows, dtype=np.int64))
        seen += table.num_rows
    if not parts:
        return Scan(pa.table({c: pa.nulls(0) for c in columns}), np.zeros(0, np.int64), np.zeros(0, np.int64),
                    files, complete)
    return Scan(pa.concat_tables(parts, promote_options="permissive"), np.concatenate(fidx), np.concatenate(ridx),
                files, complete)


def _head(pf: pq.ParquetFile, columns: list[str], n: int) -> pa.Table:
    """The first `n` rows of `columns`, reading row groups only until there are enough."""
    if not columns:  # no wanted column in this file: n rows of nothing (null columns are added by the caller)
        return pa.table({"_": pa.nulls(n)}).drop_columns(["_"])
    batches, got = [], 0
    for batch in pf.iter_batches(batch_size=min(n, 65_536), columns=columns):
        batches.append(batch.slice(0, n - got))
        got += min(batch.num_rows, n - got)
        if got >= n:
            break
    return pa.Table.from_batches(batches, pa.schema([pf.schema_arrow.field(c) for c in columns]))


def fetch(files: list[Path], file_index: np.ndarray, row_index: np.ndarray, columns: list[str]) -> list[dict]:
    """Rows by (file, row) position with the listed columns (absent ones None), in the order asked."""
    out: list[dict] = [{} for _ in range(len(file_index))]
    by_file: dict[int, list[int]] = {}
    for k, f in enumerate(np.asarray(file_index).tolist()):
        by_file.setdefault(f, []).append(k)
    for f, ks in by_file.items():
        pf = pq.ParquetFile(files[f])
        have = [c for c in columns if c in pf.schema_arrow.names]
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)])
        wanted = {int(row_index[k]) for k in ks}
        groups: dict[int, pa.Table] = {}
        for r in sorted(wanted):
            g = int(np.searchsorted(starts, r, side="right") - 1)
            if g not in groups:
                groups[g] = pf.read_row_group(g, columns=have)
        for k in ks:
            r = int(row_index[k])
            g = int(np.searchsorted(starts, r, side="right") - 1)
            row = groups[g].slice(r - int(starts[g]), 1).to_pylist()[0] if have else {}
            out[k] = {c: row.get(c) for c in columns}
    return out


def find_ids(files: list[Path], ids: set[str], columns: list[str], max_rows: int) -> dict[str, dict]:
    """Rows whose `id` is in `ids`, scanning the `id` column of at most `max_rows` rows; text read only
    for the row groups that hold a match."""
    found: dict[str, dict] = {}
    seen = 0
    for f in files:
        if len(found) == len(ids) or seen >= max_rows:
            break
        pf = pq.ParquetFile(f)
        have = [c for c in columns if c in pf.schema_arrow.names]
        for g in range(pf.metadata.num_row_groups):
            id_col = pf.read_row_group(g, columns=["id"]).column("id").to_pylist()
            seen += len(id_col)
            hits = [i for i, d in enumerate(id_col) if d in ids and d not in found]
            if hits:
                rows = pf.read_row_group(g, columns=have).take(pa.array(hits, pa.int64())).to_pylist()
                for i, row in zip(hits, rows, strict=True):
                    found[id_col[i]] = {c: row.get(c) for c in columns}
            if len(found) == len(ids) or seen >= max_rows:
                break
    return found


def column_total(files: list[Path], column: str) -> int | None:
    """Sum of an integer column over every file (one small column: cheap even for a large run)."""
    total = 0
    for f in files:
        if column not in columns_of(f):
            return None
        values = pq.read_table(f, columns=[column]).column(column)
        total += int(pc.sum(values.cast(pa.int64())).as_py() or 0)
    return total


def iter_texts(files: list[Path], n: int) -> Iterator[str]:
    """The `text` of the first `n` rows of `files` (a sample for token estimates)."""
    left = n
    for f in files:
        if left <= 0 or "text" not in columns_of(f):
            return
        for t in _head(pq.ParquetFile(f), ["text"], left).column("text").to_pylist():
            left -= 1
            if t is not None:
                yield t
