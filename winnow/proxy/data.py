"""Packed training rows for proxy runs, as tensors: winnow's own tokenize and pack code, in process.

A proxy run needs every arm tokenized by the same tokenizer and packed the same way, so the
rows are built here from documents (best-fit into `seq_len`, intra-document boundaries kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from winnow.tokenize.pack import PackParams, PackStage
from winnow.tokenize.tokenize_stage import TokenizeParams, TokenizerState, TokenizeStage


@dataclass
class PackedRows:
    input_ids: torch.Tensor      # (N, T) int64
    segment_ids: torch.Tensor    # (N, T) int64, 0 = padding
    position_ids: torch.Tensor   # (N, T) int64, restart per document
    loss_mask: torch.Tensor      # (N, T) float32, 1 where the token is a target
    n_documents: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def target_tokens(self) -> int:
        return int(self.loss_mask.sum().item())


def pack_documents(ids: list[str], texts: list[str], tokenizer: TokenizerState, seq_len: int,
                   strategy: str = "best_fit") -> PackedRows:
    table = pa.table({"id": ids, "text": texts})
    tokenized, _ = TokenizeStage(TokenizeParams()).apply(table, tokenizer)
    packed, _ = PackStage(PackParams(seq_len=seq_len, strategy=strategy)).apply(tokenized, 0)
    return rows_from_table(packed, len(ids))


def rows_from_table(packed: pa.Table, n_documents: int = 0) -> PackedRows:
    def matrix(name: str, dtype) -> torch.Tensor:
        col = packed.column(name).combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).astype(dtype)
        return torch.from_numpy(values.reshape(packed.num_rows, -1))

    return PackedRows(matrix("input_ids", np.int64), matrix("segment_ids", np.int64),
                      matrix("position_ids", np.int64), matrix("loss_mask", np.float32), n_documents)
