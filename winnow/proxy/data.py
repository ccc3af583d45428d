"""Packed training rows for proxy runs, as tensors: winnow's own tokenize and pack code, in process.

A proxy run needs every arm tokenized by the same tokenizer and packed the same way, so the
rows are built here from documents (best-fit into `seq_len`, intra-document boundaries kept).
Held-out rows also carry, per position, the index of the source its document came from, so one
pass gives the loss per source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from winnow.tokenize.pack import PackParams, PackStage
from winnow.tokenize.tokenize_stage import TokenizeParams, TokenizerState, TokenizeStage

ROW_TENSORS = ("input_ids", "segment_ids", "position_ids", "loss_mask")


@dataclass
class PackedRows:
    input_ids: torch.Tensor      # (N, T) int64
    segment_ids: torch.Tensor    # (N, T) int64, 0 = padding
    position_ids: torch.Tensor   # (N, T) int64, restart per document
    loss_mask: torch.Tensor      # (N, T) float32, 1 where the token is a target
    n_documents: int
    doc_ids: list[list[str]] = field(default_factory=list)   # per row, the document of each segment
    source_index: torch.Tensor | None = None  # (N, T) int64: source of each position's document, -1 = padding
    sources: list[str] = field(default_factory=list)         # names for source_index

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def target_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    @property
    def tokens(self) -> int:
        """Non-padding positions: the tokens a pass over every row reads."""
        return int((self.segment_ids > 0).sum().item())

    def select(self, keep: np.ndarray) -> PackedRows:
        """The rows at `keep` (indices, in order)."""
        idx = torch.from_numpy(np.asarray(keep, np.int64))
        docs = [self.doc_ids[i] for i in keep] if self.doc_ids else []
        return PackedRows(*(getattr(self, k)[idx] for k in ROW_TENSORS),
                          n_documents=len({d for row in docs for d in row}) if docs else self.n_documents,
                          doc_ids=docs, source_index=None if self.source_index is None else self.source_index[idx],
                          sources=self.sources)

    def to(self, device: torch.device) -> PackedRows:
        return PackedRows(*(getattr(self, k).to(device) for k in ROW_TENSORS), n_documents=self.n_documents,
                          doc_ids=self.doc_ids, sources=self.sources,
                          source_index=None if self.source_index is None else self.source_index.to(device))


def tokenize_documents(ids: list[str], texts: list[str], tokenizer: TokenizerState) -> pa.Table:
    """`id`, `text`, `input_ids` (EOS appended) and `n_tokens`, by the tokenize stage's own code."""
    tokenized, _ = TokenizeStage(TokenizeParams()).apply(pa.table({"id": ids, "text": texts}), tokenizer)
    return tokenized


def pack_tokenized(tokenized: pa.Table, seq_len: int, strategy: str = "best_fit",
                   sources: dict[str, str] | None = None) -> PackedRows:
    """Pack a table with `id` and `input_ids`; with `sources` (id -> source name) rows carry source_index."""
    packed, _ = PackStage(PackParams(seq_len=seq_len, strategy=strategy)).apply(tokenized, 0)
    return rows_from_table(packed, tokenized.num_rows, sources)


def pack_documents(ids: list[str], texts: list[str], tokenizer: TokenizerState, seq_len: int,
                   strategy: str = "best_fit", sources: dict[str, str] | None = None) -> PackedRows:
    return pack_tokenized(tokenize_documents(ids, texts, tokenizer), seq_len, strategy, sources)


def rows_from_table(packed: pa.Table, n_documents: int = 0, sources: dict[str, str] | None = None) -> PackedRows:
    def matrix(name: str, dtype) -> torch.Tensor:
        col = packed.column(name).combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).astype(dtype)
        return torch.from_numpy(values.reshape(packed.num_rows, -1))

    doc_ids = packed.column("doc_ids").to_pylist()
    rows = PackedRows(*(matrix(k, np.float32 if k == "loss_mask" else np.int64) for k in ROW_TENSORS),
                      n_documents=n_documents or len({d for row in doc_ids for d in row}), doc_ids=doc_ids)
    if sources is not None:
        names = sorted(set(sources.values()))
        code = {name: i for i, name in enumerate(names)}
        # per row, a lookup from segment id (1..) to source code; segment 0 (padding) maps to -1
        table = np.full((len(doc_ids), 1 + max((len(r) for r in doc_ids), default=0)), -1, np.int64)
        for r, docs in enumerate(doc_ids):
            table[r, 1:len(docs) + 1] = [code[sources[d]] for d in docs]
        seg = rows.segment_ids.numpy()
        rows.source_index = torch.from_numpy(np.take_along_axis(table, seg, axis=1))
        rows.sources = names
    return rows
