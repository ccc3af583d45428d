"""Token files a training loop reads without winnow: a flat memmap and Megatron-LM's indexed dataset.

Flat memmap (`<out>/tokens/`), readable with numpy alone:
- `tokens.bin`: every packed row's `input_ids`, row after row (`dtype` and `seq_len` in index.json);
- `loss_mask.bin`: uint8, same shape;
- `segments.npy`: int64 [n_segments, 3] = (row, start in row, length); a trainer builds the
  block-diagonal mask and per-document positions from it;
- `index.json`: dtype, seq_len, n_rows, n_segments, the tokenizer hash when known.

    import numpy as np, json
    meta = json.load(open("tokens/index.json"))
    rows = np.memmap("tokens/tokens.bin", dtype=meta["dtype"], mode="r").reshape(-1, meta["seq_len"])

Megatron-LM indexed dataset (`<out>/megatron/text_document.{bin,idx}`): one sequence per document
(documents rebuilt from the packed rows, in order of first appearance), written from the format's
description (megatron/core/datasets/indexed_dataset.py: `_IndexWriter`): the header
b"MMIDIDX\\x00\\x00", version 1 (<Q), dtype code (<B), sequence count (<Q), document count (<Q),
then sequence lengths (int32), byte pointers (int64) and document indices (int64, from 0).
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from winnow.pipeline.shards import write_bytes_atomic

MEGATRON_HEADER = b"MMIDIDX\x00\x00"
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
                   7: np.float32, 8: np.uint16}
MEGATRON_CODES = {np.dtype(v): k for k, v in MEGATRON_DTYPES.items()}


def is_packed(stage_dir: Path) -> bool:
    files = sorted(Path(stage_dir).glob("train-*.parquet"))
    return bool(files) and {"input_ids", "cu_seqlens", "doc_ids"} <= set(pq.read_schema(files[0]).names)


def write_token_files(stage_dir: Path, target: Path, extra: dict | None = None) -> dict:
    """The flat memmap of a packed stage's rows (see module docstring)."""
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(Path(stage_dir).glob("train-*.parquet"))
    n_rows, seq_len, dtype, segments = 0, None, None, []  # segments: one (k, 3) int64 array per file
    with open(target / ".tokens.bin.tmp", "wb") as tok_f, open(target / ".loss_mask.bin.tmp", "wb") as mask_f:
        for path in files:
            table = pq.read_table(path, columns=["input_ids", "loss_mask", "cu_seqlens"])
            ids = table.column("input_ids").combine_chunks()
            values = ids.values.to_numpy(zero_copy_only=False)
            seq_len = seq_len or len(ids[0])
            dtype = dtype or values.dtype
            tok_f.write(values.astype(dtype, copy=False).tobytes())
            mask_f.write(table.column("loss_mask").combine_chunks().values.to_numpy(zero_copy_only=False)
                         .astype(np.uint8).tobytes())
            cu = table.column("cu_seqlens").combine_chunks()
            bounds, per_row = cu.values.to_numpy(zero_copy_only=False).astype(np.int64), np.diff(cu.offsets.to_numpy())
            starts = np.ones(len(bounds), bool)   # a row's last boundary starts no segment
            starts[np.cumsum(per_row) - 1] = False
            rows = np.repeat(np.arange(n_rows, n_rows + table.num_rows, dtype=np.int64), per_row)[starts]
            segments.append(np.stack([rows, bounds[starts], np.diff(bounds)[starts[:-1]]], axis=1))
            n_rows += table.num_rows
    (target / ".tokens.bin.tmp").replace(target / "tokens.bin")
    (target / ".loss_mask.bin.tmp").replace(target / "loss_mask.bin")
    with open(target / ".segments.npy.tmp", "wb") as f:  # np.save to a file object: no suffix added
        segments = np.concatenate(segments) if segments else np.zeros((0, 3), np.int64)
        np.save(f, segments)
    (target / ".segments.npy.tmp").replace(target / "segments.npy")
    meta = {"dtype": str(np.dtype(dtype or np.uint16)), "seq_len": seq_len or 0, "n_rows": n_rows,
            "n_segments": len(segments), "source": str(stage_dir), **(extra or {})}
    write_bytes_atomic(json.dumps(meta, indent=1).encode(), target / "index.json")
    return meta


def write_megatron(documents: Iterable[np.ndarray], prefix: Path) -> None:
    """Write `documents` (1-D token arrays, one dtype) as `<prefix>.bin` and `<prefix>.idx`, streaming:
    one document in memory at a time, plus 4 bytes a document for the lengths the index needs."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # each file under a temporary name, renamed when complete: a killed run never leaves a short file
    # under the final name (the caller's marker, written after both, says the pair is whole)
    bin_tmp, idx_tmp = prefix.with_name(f".{prefix.name}.bin.tmp"), prefix.with_name(f".{prefix.name}.idx.tmp")
    dtype, sizes = None, array("i")
    with open(bin_tmp, "wb") as f:
        for d in documents:
            dtype = dtype or np.dtype(d.dtype)
            f.write(np.ascontiguousarray(d, dtype=dtype).tobytes())
            sizes.append(len(d))
    dtype = dtype or np.dtype(np.uint16)
    lengths = np.frombuffer(sizes, np.int32) if len(sizes) else np.zeros(0, np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * dtype.itemsize)[:-1]]).astype(np.int64) \
        if len(lengths) else np.zeros(0, np.int64)
    header = MEGATRON_HEADER + struct.pack("<Q", 1) + struct.pack("<B", MEGATRON_CODES[dtype]) + \
        struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(lengths) + 1)
    with open(idx_tmp, "wb") as f:
        f.write(header)
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
    bin_tmp.replace(prefix.with_suffix(".bin"))
    idx_tmp.replace(prefix.with_suffix(".idx"))


def read_megatron(prefix: Path) -> list[np.ndarray]:
    """Read `<prefix>.idx/.bin` back by the format's description; raises on anything malformed."""
    raw = Path(prefix).with_suffix(".idx").read_bytes()
    if raw[:9] != MEGATRON_HEADER:
        raise ValueError(f"{prefix}.idx: not a Megatron indexed dataset (header {raw[:9]!r})")
    version, = struct.unpack_from("<Q", raw, 9)
    code, = struct.unpack_from("<B", raw, 17)
    n_seq, n_doc = struct.unpack_from("<QQ", raw, 18)
    if version != 1 or code not in MEGATRON_DTYPES:
        raise ValueError(f"{prefix}.idx: version {version}, dtype code {code}")
    pos = 34
    lengths = np.frombuffer(raw, np.int32, n_seq, pos)
    pointers = np.frombuffer(raw, np.int64, n_seq, pos + 4 * n_seq)
    doc_index = np.frombuffer(raw, np.int64, n_doc, pos + 12 * n_seq)
    if n_doc != n_seq + 1 or doc_index[0] != 0 or doc_index[-1] != n_seq:
        raise ValueError(f"{prefix}.idx: document index does not cover the sequences")
    data = np.memmap(Path(prefix).with_suffix(".bin"), dtype=MEGATRON_DTYPES[code], mode="r")
    itemsize = np.dtype(MEGATRON_DTYPES[code]).itemsize
    return [np.asarray(data[p // itemsize:p // itemsize + n]) for p, n in zip(pointers, lengths, strict=True)]
