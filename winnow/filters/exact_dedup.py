"""Exact deduplication, global across shards: one survivor per identical (normalised) text.

The key is the text case-folded with whitespace runs collapsed (`key: text` hashes it as is).
Keys are 128-bit xxh3 hashes, found duplicate by the hash-partitioned shuffle in
`winnow.pipeline.dupfind`; the survivor follows `keep` (pipeline/keep.py: the first copy in input
order by default, or the longest, or the best by a column), ties to the earliest, so the result
does not depend on the number of workers. Rejected rows carry `dup_of` (the survivor's id) and
`dup_cluster_size`; kept rows carry `dup_count`, the documents each stands for.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from winnow.pipeline.dupfind import KEY_SCHEMA, Duplicates, find_duplicates, hash128
from winnow.pipeline.keep import KEEP_HELP, check_keep, dup_weights, keep_columns, keep_scores
from winnow.pipeline.stage import Context, ShardRef, Stage


class ExactDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Literal["normalized", "text"] = Field(
        "normalized", description="normalized: case-folded, whitespace collapsed; text: byte-exact")
    keep: str = Field("first", description=KEEP_HELP)

    _keep = field_validator("keep")(check_keep)


class ExactDedupStage(Stage):
    name = "exact_dedup"
    version = 2  # 2: `keep` rules and `dup_count` on kept rows
    Params = ExactDedupParams
    reject_columns = {"dup_of": pa.string(), "dup_cluster_size": pa.int64()}

    def keys(self, text: pa.ChunkedArray) -> list[str]:
        if self.params.key == "normalized":
            text = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(text), r"\s+", " "))
        return text.to_pylist()

    def _keys_of_shard(self, ref: ShardRef) -> tuple[pa.Table, None]:
        names = pq.read_schema(ref.path).names
        wanted = {"id", "text", *keep_columns(self.params.keep)} | ({"dup_count"} & set(names))
        table = pq.read_table(ref.path, columns=[c for c in names if c in wanted])
        hi, lo = hash128(self.keys(table.column("text")))
        keys = pa.table({"hi": hi, "lo": lo, "row": np.arange(table.num_rows, dtype=np.int64),
                         "label": table.column("id")}, schema=KEY_SCHEMA)
        keys = keys.append_column("score", pa.array(keep_scores(table, self.params.keep), pa.float64()))
        return keys.append_column("weight", pa.array(dup_weights(table), pa.int64())), None

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict[str, Duplicates]:
        duplicates, _ = find_duplicates(ctx, shards, self._keys_of_shard)
        return duplicates

    def shard_state(self, state: dict[str, Duplicates], ref: ShardRef) -> Duplicates | None:
        return state.get(ref.name)

    def apply(self, table: pa.Table, state: Duplicates | None) -> tuple[pa.Table, pa.Table]:
        return (state or Duplicates.none()).split(self, table, "exact_duplicate")
