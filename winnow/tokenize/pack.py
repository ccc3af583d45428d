"""Sequence packing: documents' token ids into fixed-length rows with their boundaries.

Strategies (ALGORITHMS.md section 4):
- `concat`: concatenate in order and cut every `seq_len` tokens; the last row is padded. The baseline.
- `best_fit`: split only documents longer than `seq_len`, then best-fit decreasing: each chunk,
  longest first, goes into the open row with the least room that still fits it (a segment tree
  over remaining capacities: O(log L) per chunk). Chunks are never split again, so no document
  is cut except the ones that cannot fit any row (Ding et al., ICML 2024).
- `bm25`: BM25Chunk (Zhao et al., ACL 2024): documents in a seeded order fill a buffer; a seed
  document is the query, and the most BM25-related documents still in the buffer join its row
  until it is full; the overflow of the last one goes back to the buffer. Long documents first
  emit their full `seq_len` pieces.

No strategy drops a token: every row lists its segments (document id, offset in that document,
length), so `unpack` gives back each document exactly. Every row carries `input_ids`,
`segment_ids` (1.. per segment, 0 on padding), `position_ids` (reset per segment), `cu_seqlens`
and `loss_mask` (0 on padding, on the row's first token, and with `intra_doc_mask` on each
segment's first token, which would otherwise be predicted from the previous document).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.stage import RunOutputs, Stage

PACKED = "packed"   # the run's folder of packed rows as a `datasets` folder (dataset/ holds the documents)


@dataclass(frozen=True)
class Segment:
    doc: int      # index of the document in the shard
    start: int    # offset of the first token inside the document
    length: int


Row = list[Segment]


def pack_concat(lengths: np.ndarray, seq_len: int) -> list[Row]:
    rows, row, fill = [], [], 0
    for doc, n in enumerate(lengths.tolist()):
        start = 0
        while start < n:
            take = min(n - start, seq_len - fill)
            row.append(Segment(doc, start, take))
            fill, start = fill + take, start + take
            if fill == seq_len:
                rows.append(row)
                row, fill = [], 0
    if row:
        rows.append(row)
    return rows


def split_long(lengths: np.ndarray, seq_len: int) -> list[Segment]:
    chunks = []
    for doc, n in enumerate(lengths.tolist()):
        for start in range(0, n, seq_len):
            chunks.append(Segment(doc, start, min(seq_len, n - start)))
    return chunks


class CapacityIndex:
    """Counts of open rows by remaining room, with 'smallest room >= s' in O(log L).

    A plain segment tree over room values 0..L; written out because neither numpy nor the
    standard library has an ordered multiset, and a sorted list makes removal O(n).
    """

    def __init__(self, seq_len: int):
        self.size = 1 << (seq_len + 1).bit_length()
        self.tree = [0] * (2 * self.size)
        self.rows: list[list[int]] = [[] for _ in range(seq_len + 1)]

    def _update(self, room: int, delta: int) -> None:
        i = room + self.size
        while i:
            self.tree[i] += delta
            i //= 2

    def push(self, room: int, row: int) -> None:
        heapq.heappush(self.rows[room], row)  # among equal rooms the earliest row wins: deterministic
        self._update(room, 1)

    def pop_at_least(self, need: int) -> tuple[int, int] | None:
        """Remove and return (room, row) for the smallest room >= need, or None."""
        room = self._leftmost_at_least(need)
        if room is None:
            return None
        row = heapq.heappop(self.rows[room])
        self._update(room, -1)
        return room, row

    def _leftmost_at_least(self, need: int) -> int | None:
        i = need + self.size
        if self.tree[i]:
            return need
        while i > 1:  # climb until a right sibling holds a non-empty leaf, then take its leftmost one
            if i % 2 == 0 and self.tree[i + 1]:
                i += 1
                while i < self.size:
                    i = 2 * i if self.tree[2 * i] else 2 * i + 1
                return i - self.size
            i //= 2
        return None


def pack_best_fit(lengths: np.ndarray, seq_len: int) -> list[Row]:
    chunks = split_long(lengths, seq_len)
    chunks.sort(key=lambda c: -c.length)  # stable: ties keep document order
    rows: list[Row] = []
    index = CapacityIndex(seq_len)
    for chunk in chunks:
        found = index.pop_at_least(chunk.length)
        if found is None:
            rows.append([chunk])
            room, row = seq_len - chunk.length, len(rows) - 1
        else:
            room, row = found
            rows[row].append(chunk)
            room -= chunk.length
        if room > 0:
            index.push(room, row)
    return rows


def pack_bm25(lengths: np.ndarray, texts: list[str], seq_len: int, buffer_size: int, seed: int,
              query_terms: int = 300) -> list[Row]:
    import bm25s

    rows: list[Row] = []
    order = np.random.default_rng(seed).permutation(len(lengths))
    for w in range(0, len(order), buffer_size):
        window = order[w:w + buffer_size]
        start_of: dict[int, int] = {}
        for doc in window.tolist():  # full pieces of long documents go straight out
            n = int(lengths[doc])
            full = (n // seq_len) * seq_len if n > seq_len else 0
            rows.extend([Segment(doc, s, seq_len)] for s in range(0, full, seq_len))
            if n > full:
                start_of[doc] = full
        live = [d for d in window.tolist() if d in start_of]
        if not live:
            continue
        tokenized = bm25s.tokenize([texts[d] for d in live], stopwords="en", show_progress=False)
        retriever = bm25s.BM25(k1=1.2, b=0.75)
        retriever.index(tokenized, show_progress=False)
        vocab = {i: t for t, i in tokenized.vocab.items()}
        position = {d: i for i, d in enumerate(live)}
        waiting = dict.fromkeys(live)  # insertion-ordered set: the buffer
        while waiting:
            seed_doc = next(iter(waiting))
            del waiting[seed_doc]
            row = [Segment(seed_doc, start_of[seed_doc], int(lengths[seed_doc]) - start_of[seed_doc])]
            fill = row[0].length
            if fill < seq_len and waiting:
                terms = [vocab[t] for t in tokenized.ids[position[seed_doc]][:query_terms]]
                scores = retriever.get_scores(terms) if terms else np.zeros(len(live))
                for i in np.argsort(-scores, kind="stable").tolist():
                    doc = live[i]
                    if doc not in waiting:
                        continue
                    del waiting[doc]
                    start = start_of[doc]
                    take = min(int(lengths[doc]) - start, seq_len - fill)
                    row.append(Segment(doc, start, take))
                    fill += take
                    if start + take < lengths[doc]:  # overflow goes back to the buffer
                        start_of[doc] = start + take
                        waiting[doc] = None
                    if fill == seq_len:
                        break
            rows.append(row)
    return rows


class PackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq_len: int = Field(2048, ge=8, le=65535, description="tokens per packed row")
    strategy: Literal["concat", "best_fit", "bm25"] = "best_fit"
    intra_doc_mask: bool = Field(True, description="loss_mask 0 on each segment's first token; the trainer "
                                 "masks attention across segments")
    bm25_buffer: int = Field(4096, gt=1, description="documents in the BM25 buffer")
    pad_id: int = Field(0, ge=0)
    seed: int | None = Field(None, description="document order for bm25 (default: the run's seed)")


class PackStage(Stage):
    """Packs the `input_ids` of a tokenized shard into rows of `seq_len` tokens."""

    name = "pack"
    Params = PackParams
    emits_documents = False  # token rows: the run's dataset/ is the stage before; these go to packed/

    def fit(self, shards, ctx) -> int:
        return ctx.seed if self.params.seed is None else self.params.seed

    def documents_in(self, kept: pa.Table) -> int:
        if kept.num_rows == 0:
            return 0
        return int(pc.count_distinct(pc.list_flatten(kept.column("doc_ids"))).as_py())

    @classmethod
    def check_run_outputs(cls, out_dir: Path, stage_dir: Path, rows: int, documents: int,
                          outputs: dict) -> list[tuple[Path, str, str]]:
        from winnow.tokenize.checks import check_token_files

        return check_token_files(out_dir, stage_dir, rows, documents, outputs)

    def finalize(self, outputs: RunOutputs) -> None:
        """When the run ends with packing: the packed rows as a `datasets` folder (`packed/`, with
        outputs.dataset) and token files for trainers (`tokens/`, `megatron/`); each skipped when the
        packed shards and the options are unchanged since they were written."""
        import json

        import pyarrow.parquet as pq

        from winnow.pipeline.config import stable_hash
        from winnow.pipeline.run import write_dataset
        from winnow.pipeline.shards import write_bytes_atomic
        from winnow.tokenize.writers import is_packed, write_megatron, write_token_files

        wanted, final_dir, out = outputs.options, outputs.stage_dir, outputs.out_dir
        if wanted.dataset:
            write_dataset(final_dir, out / PACKED, outputs.fingerprints, outputs.force)
        if not (wanted.token_files or wanted.megatron) or not is_packed(final_dir):
            return
        marker = out / "tokens" / "_winnow_source.json"
        key = stable_hash([outputs.fingerprints, wanted.token_files, wanted.megatron])
        if not outputs.force and marker.exists() and json.loads(marker.read_text()).get("key") == key:
            return
        marker.unlink(missing_ok=True)  # from here the files change: a kill must not leave it vouching
        if wanted.token_files:
            write_token_files(final_dir, out / "tokens")
        if wanted.megatron:  # a shard's documents are packed inside it: one shard in memory at a time
            columns = ["input_ids", "cu_seqlens", "doc_ids", "doc_offsets"]
            documents = (d for path in sorted(final_dir.glob("train-*.parquet"))
                         for d in unpack(pq.read_table(path, columns=columns)).values())
            write_megatron(documents, out / "megatron" / "text_document")
        write_bytes_atomic(json.dumps({"key": key}).encode(), marker)

    def pack(self, lengths: np.ndarray, texts: list[str] | None, seed: int) -> list[Row]:
        p: PackParams = self.params
        if p.strategy == "concat":
            return pack_concat(lengths, p.seq_len)
        if p.strategy == "best_fit":
            return pack_best_fit(lengths, p.seq_len)
        return pack_bm25(lengths, texts or [], p.seq_len, p.bm25_buffer, seed)

    def apply(self, table: pa.Table, seed: int) -> tuple[pa.Table, pa.Table]:
        p: PackParams = self.params
        ids_col = table.column("input_ids").combine_chunks()
        values = ids_col.values.to_numpy(zero_copy_only=False)
        offsets = ids_col.offsets.to_numpy()
        lengths = np.diff(offsets)
        mask_values = None
        if "loss_mask" in table.column_names:
            mask_values = table.column("loss_mask").combine_chunks().values.to_numpy(zero_copy_only=False)
        texts = table.column("text").to_pylist() if p.strategy == "bm25" else None
        rows = self.pack(lengths, texts, seed)
        return build_rows(rows, values, offsets, table.column("id").to_pylist(), p, mask_values), \
            self.reject(table.slice(0, 0), [])


def build_rows(rows: list[Row], values: np.ndarray, offsets: np.ndarray, doc_ids: list[str], p: PackParams,
               mask_values: np.ndarray | None = None) -> pa.Table:
    """Fixed-length Arrow rows from segment lists (see the module docstring for the columns)."""
    L, n = p.seq_len, len(rows)
    input_ids = np.full((n, L), p.pad_id, dtype=values.dtype)
    segment_ids = np.zeros((n, L), np.uint16)
    position_ids = np.zeros((n, L), np.uint16)
    loss_mask = np.zeros((n, L), np.uint8)
    cu, seg_docs, seg_offsets, n_pad = [], [], [], np.zeros(n, np.int32)
    for r, row in enumerate(rows):
        pos, bounds = 0, [0]
        for k, seg in enumerate(row):
            a = offsets[seg.doc] + seg.start
            input_ids[r, pos:pos + seg.length] = values[a:a + seg.length]
            segment_ids[r, pos:pos + seg.length] = k + 1
            position_ids[r, pos:pos + seg.length] = np.arange(seg.length)
            loss_mask[r, pos:pos + seg.length] = 1 if mask_values is None else mask_values[a:a + seg.length]
            if p.intra_doc_mask:
                loss_mask[r, pos] = 0
            pos += seg.length
            bounds.append(pos)
        loss_mask[r, 0] = 0
        n_pad[r] = L - pos
        cu.append(bounds)
        seg_docs.append([doc_ids[s.doc] for s in row])
        seg_offsets.append([s.start for s in row])

    def fixed(a: np.ndarray) -> pa.Array:  # list<…> of length L per row
        return pa.ListArray.from_arrays(pa.array(np.arange(0, n * L + 1, L, dtype=np.int32)), pa.array(a.ravel()))

    return pa.table({
        "input_ids": fixed(input_ids),        # list<uint16|uint32>, seq_len per row
        "segment_ids": fixed(segment_ids),    # list<uint16>: 1.. per segment, 0 = padding
        "position_ids": fixed(position_ids),  # list<uint16>: restart at each segment
        "loss_mask": fixed(loss_mask),        # list<uint8>: 1 where the token is a training target
        "cu_seqlens": pa.array(cu, pa.list_(pa.int32())),
        "doc_ids": pa.array(seg_docs, pa.list_(pa.string())),
        "doc_offsets": pa.array(seg_offsets, pa.list_(pa.int32())),
        "n_pad": pa.array(n_pad),
    })


def unpack(table: pa.Table) -> dict[str, np.ndarray]:
    """Every document's tokens, rebuilt from packed rows by their segments (the round-trip check).

    Documents come out in order of first appearance, with the rows' token dtype.
    """
    ids = table.column("input_ids").combine_chunks()
    values = ids.values.to_numpy(zero_copy_only=False)
    row_start = ids.offsets.to_numpy()
    pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
    for r, (cu, docs, offs) in enumerate(zip(table.column("cu_seqlens").to_pylist(),
                                             table.column("doc_ids").to_pylist(),
                                             table.column("doc_offsets").to_pylist(), strict=True)):
        base = row_start[r]
        for k, doc in enumerate(docs):
            pieces.setdefault(doc, []).append((offs[k], values[base + cu[k]:base + cu[k + 1]]))
    out = {}
    for doc, parts in pieces.items():
        parts.sort(key=lambda x: x[0])
        out[doc] = np.concatenate([a for _, a in parts])
    return out
