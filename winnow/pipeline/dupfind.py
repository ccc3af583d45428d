"""Global duplicate finding by key, out of core: a hash-partitioned shuffle through files.

Map: each shard's keys (128-bit hashes as two uint64 columns) are split by `hi % P` into P small
Parquet files under a work folder. Reduce: each of P tasks reads one partition, sorts it and
returns only the rows of groups with duplicates: the losers with their survivor, and the survivors
with the group's `dup_count`. No process ever holds every key; memory grows with the duplicates
found, not the corpus. The survivor of each group is deterministic whatever the worker count: the
highest optional `score` (the stage's `keep` rule), then the first in (shard order, row) order.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from winnow.pipeline.stage import Context, ShardRef, Stage

# Each map task writes one key file per partition, so partitions cost files: at one per shard (up to 64,
# the old rule) ingest of the web sample x 8 wrote 88 x 64 = 5,632 files of a few kB for 106k keys. A
# partition per 32 shards (at least two per worker) keeps the reduce parallel and the files few; a
# partition of 64 still holds only ~1/64 of the keys (~60 B each).
SHARDS_PER_PARTITION = 32
KEY_SCHEMA = pa.schema([("hi", pa.uint64()), ("lo", pa.uint64()), ("row", pa.int64()), ("label", pa.string())])
# optional key columns: `score` (float64, higher survives) and `weight` (int64, documents a row stands for)


def hash128(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """xxh3-128 of each string as (hi, lo) uint64 arrays; 128 bits keep collisions out of reach."""
    hi = np.empty(len(values), np.uint64)
    lo = np.empty(len(values), np.uint64)
    mask = (1 << 64) - 1
    for i, v in enumerate(values):
        d = xxhash.xxh3_128_intdigest(v.encode("utf-8", "surrogatepass"))
        hi[i], lo[i] = d >> 64, d & mask
    return hi, lo


def _empty() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass
class Duplicates:
    """One shard's part of the duplicate groups: the rows that lose (ascending) with their survivor's
    label and group size, and the rows that survive a group with the documents they now stand for."""

    rows: np.ndarray
    dup_of: list[str]
    cluster_size: np.ndarray
    survivor_rows: np.ndarray = field(default_factory=_empty)
    survivor_counts: np.ndarray = field(default_factory=_empty)

    @classmethod
    def none(cls) -> Duplicates:
        """A shard without duplicates: `split` keeps every row (and still adds `dup_count`)."""
        return cls(_empty(), [], _empty())

    def lookup(self) -> dict[int, tuple[str, int]]:
        return {int(r): (d, int(c)) for r, d, c in zip(self.rows, self.dup_of, self.cluster_size, strict=True)}

    def split(self, stage: Stage, table: pa.Table, reason: str) -> tuple[pa.Table, pa.Table]:
        """(kept, rejected) of `table`: these rows (ascending) rejected with `dup_of` and `dup_cluster_size`;
        kept rows carry `dup_count`."""
        from winnow.pipeline.keep import with_dup_count

        table = with_dup_count(table, self.survivor_rows, self.survivor_counts)
        mask = np.ones(table.num_rows, bool)
        mask[self.rows] = False
        rejected = stage.reject(table.take(pa.array(self.rows)), [reason] * len(self.rows),
                                dup_of=self.dup_of, dup_cluster_size=self.cluster_size)
        return table.filter(pa.array(mask)), rejected


def _map(args: tuple) -> Any:
    keys_fn, ref, shard_idx, workdir, n_parts = args
    keys, extra = keys_fn(ref)
    part = (np.asarray(keys.column("hi"), np.uint64) % np.uint64(n_parts)).astype(np.int64)
    keys = keys.append_column("shard", pa.array(np.full(keys.num_rows, shard_idx, np.int64)))
    order = np.argsort(part, kind="stable")
    keys, part = keys.take(pa.array(order)), part[order]
    bounds = np.searchsorted(part, np.arange(n_parts + 1))
    for p in range(n_parts):
        if bounds[p + 1] > bounds[p]:
            path = Path(workdir) / f"p{p:04d}" / f"{ref.name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(keys.slice(bounds[p], bounds[p + 1] - bounds[p]), path)
    return extra


def _reduce(folder: str) -> pa.Table:
    """Rows of duplicate groups in one partition: losers (`dup_of` set) and survivors (`dup_of` null),
    each with the group's size in documents (`size`: the sum of its rows' weights)."""
    files = sorted(Path(folder).glob("*.parquet"))
    empty = pa.table({"shard": pa.array([], pa.int64()), "row": pa.array([], pa.int64()),
                      "dup_of": pa.array([], pa.string()), "size": pa.array([], pa.int64())})
    if not files:
        return empty
    t = pa.concat_tables(pq.read_table(f) for f in files)
    hi, lo = np.asarray(t.column("hi")), np.asarray(t.column("lo"))
    shard, row = np.asarray(t.column("shard")), np.asarray(t.column("row"))
    score = np.asarray(t.column("score")) if "score" in t.column_names else np.zeros(len(hi))
    weight = np.asarray(t.column("weight")) if "weight" in t.column_names else np.ones(len(hi), np.int64)
    order = np.lexsort((row, shard, -score, lo, hi))
    hi, lo, shard, row, weight = hi[order], lo[order], shard[order], row[order], weight[order]
    new_group = np.ones(len(hi), bool)
    new_group[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    group_id = np.cumsum(new_group) - 1
    rows_per_group = np.bincount(group_id)
    documents = np.bincount(group_id, weights=weight).astype(np.int64)
    in_dup = rows_per_group[group_id] > 1
    if not in_dup.any():
        return empty
    first = np.flatnonzero(new_group)
    labels = t.column("label").take(pa.array(order[first[group_id]]))
    dup_of = pc.if_else(pa.array(new_group), pa.nulls(len(hi), pa.string()), labels)
    keep = pa.array(in_dup)
    return pa.table({"shard": shard[in_dup], "row": row[in_dup], "dup_of": dup_of.filter(keep),
                     "size": documents[group_id[in_dup]]})


def find_duplicates(ctx: Context, shards: list[ShardRef],
                    keys_fn: Callable[[ShardRef], tuple[pa.Table, Any]],
                    n_partitions: int | None = None) -> tuple[dict[str, Duplicates], list[Any]]:
    """Duplicates of `keys_fn`'s keys across all shards, plus each shard's extra map output.

    `keys_fn(ref)` runs on a worker and returns (table with KEY_SCHEMA, and optionally `score` and
    `weight` columns; extra); `row` identifies the record inside its shard and `label` is what
    `dup_of` reports for a survivor.
    """
    workdir = Path(ctx.workdir) / "keys"
    shutil.rmtree(workdir, ignore_errors=True)
    n_parts = n_partitions or max(2 * ctx.n_workers(), min(64, math.ceil(len(shards) / SHARDS_PER_PARTITION)))
    extras = ctx.map(_map, [(keys_fn, ref, i, str(workdir), n_parts) for i, ref in enumerate(shards)])
    folders = [str(workdir / f"p{p:04d}") for p in range(n_parts)]
    found = ctx.map(_reduce, folders)
    shutil.rmtree(workdir, ignore_errors=True)
    table = pa.concat_tables(found) if found else None
    result: dict[str, Duplicates] = {}
    if table is not None and table.num_rows:
        table = table.sort_by([("shard", "ascending"), ("row", "ascending")])
        shard_col = np.asarray(table.column("shard"))
        bounds = np.searchsorted(shard_col, np.arange(len(shards) + 1))
        for i, ref in enumerate(shards):
            a, b = bounds[i], bounds[i + 1]
            if b > a:
                part = table.slice(a, b - a)
                loser = pc.is_valid(part.column("dup_of"))
                losers, survivors = part.filter(loser), part.filter(pc.invert(loser))
                result[ref.name] = Duplicates(np.asarray(losers.column("row")), losers.column("dup_of").to_pylist(),
                                              np.asarray(losers.column("size")), np.asarray(survivors.column("row")),
                                              np.asarray(survivors.column("size")))
    return result, extras
