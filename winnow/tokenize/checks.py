"""`winnow verify`'s checks of the files the token stages own: a tokenize folder's `tokenizer.json`,
and the run-level `tokens/` and `megatron/` that pack's `finalize` writes. They reach verify through
the stage protocol (`Stage.check_outputs`, `Stage.check_run_outputs`), so the engine layer reads no
token format. Each check returns problems as (path, what, kind); sizes come from indexes and headers,
no token is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from winnow.tokenize.writers import MEGATRON_DTYPES, MEGATRON_HEADER

Problem = tuple[Path, str, str]


def check_tokenizer(stage_dir: Path, manifest: dict) -> list[Problem]:
    """`tokenizer.json` is there, loads, and hashes to the manifest's `tokenizer_hash`."""
    if "tokenizer_hash" not in manifest:
        return []
    path = stage_dir / "tokenizer.json"
    expected = manifest["tokenizer_hash"]
    if not path.exists():
        return [(path, f"missing; _manifest.json has tokenizer_hash {expected}", "tokenizer")]
    try:
        from winnow.tokenize.tokenizer import load_tokenizer, tokenizer_hash

        digest = tokenizer_hash(load_tokenizer(path))
    except Exception as e:  # any load error means an unusable tokenizer file
        return [(path, f"unreadable: {type(e).__name__}: {e}", "tokenizer")]
    if digest != expected:
        return [(path, f"hash {digest} is not _manifest.json's tokenizer_hash {expected}: the tokens were made "
                 "with another tokenizer", "tokenizer")]
    return []


def check_token_files(out_dir: Path, stage_dir: Path, rows: int, documents: int, outputs: dict) -> list[Problem]:
    """tokens/ and megatron/ against the packed stage (`rows` packed rows holding `documents`)."""
    problems: list[Problem] = []
    tokens_in_segments = None
    folder = out_dir / "tokens"
    if not folder.exists():
        if outputs.get("token_files", True):
            problems.append((folder, "missing, though the last stage packs and outputs.token_files is on", "tokens"))
    else:
        tokens_in_segments = _check_tokens_folder(folder, stage_dir.name, rows, problems)
    prefix = out_dir / "megatron" / "text_document"
    if not prefix.with_suffix(".idx").exists():
        if outputs.get("megatron", True):
            problems.append((prefix.parent, "missing, though the last stage packs and outputs.megatron is on",
                             "megatron"))
    else:
        _check_megatron(prefix, documents, tokens_in_segments, stage_dir.name, problems)
    return problems


def _check_tokens_folder(folder: Path, stage: str, rows: int, problems: list[Problem]) -> int | None:
    index = folder / "index.json"
    try:
        meta = json.loads(index.read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        n_rows, seq_len, n_segments = int(meta["n_rows"]), int(meta["seq_len"]), int(meta["n_segments"])
        segments = np.load(folder / "segments.npy", mmap_mode="r")
    except Exception as e:  # any read error means a damaged token folder
        problems.append((folder, f"unreadable: {type(e).__name__}: {e}", "tokens"))
        return None
    if Path(str(meta.get("source", ""))).name != stage:
        problems.append((index, f"made from {meta.get('source')!r}, not {stage}", "tokens"))
    if n_rows != rows:
        problems.append((index, f"n_rows {n_rows:,}; {stage} holds {rows:,} packed rows", "tokens"))
    for name, size in (("tokens.bin", n_rows * seq_len * itemsize), ("loss_mask.bin", n_rows * seq_len)):
        path = folder / name
        actual = path.stat().st_size if path.exists() else None
        if actual != size:
            problems.append((path, f"{'missing' if actual is None else f'{actual:,} bytes'}; index.json implies "
                             f"{size:,} ({n_rows:,} rows x {seq_len} tokens)", "tokens"))
    if segments.shape != (n_segments, 3):
        problems.append((folder / "segments.npy", f"shape {segments.shape}, index.json says ({n_segments}, 3)",
                         "tokens"))
        return None
    return int(segments[:, 2].sum()) if n_segments else 0


def _check_megatron(prefix: Path, documents: int, tokens: int | None, stage: str, problems: list[Problem]) -> None:
    idx = prefix.with_suffix(".idx")
    try:
        raw = idx.read_bytes()
        if raw[:9] != MEGATRON_HEADER:
            raise ValueError(f"header {raw[:9]!r}")
        (version,), (code,) = np.frombuffer(raw, "<u8", 1, 9), np.frombuffer(raw, "<u1", 1, 17)
        n_seq, n_doc = (int(v) for v in np.frombuffer(raw, "<u8", 2, 18))
        lengths = np.frombuffer(raw, "<i4", n_seq, 34).astype(np.int64)
        pointers = np.frombuffer(raw, "<i8", n_seq, 34 + 4 * n_seq)
        doc_index = np.frombuffer(raw, "<i8", n_doc, 34 + 12 * n_seq)
        itemsize = np.dtype(MEGATRON_DTYPES[int(code)]).itemsize
    except Exception as e:  # any parse error means a damaged index
        problems.append((idx, f"not a Megatron indexed dataset: {type(e).__name__}: {e}", "megatron"))
        return
    if version != 1 or n_doc != n_seq + 1 or (n_doc and (doc_index[0] != 0 or doc_index[-1] != n_seq)):
        problems.append((idx, f"version {version}, {n_seq} sequences but {n_doc} document boundaries", "megatron"))
    if n_seq != documents:
        problems.append((idx, f"{n_seq:,} documents; {stage} packed {documents:,}", "megatron"))
    expected_pointers = np.concatenate([[0], np.cumsum(lengths * itemsize)[:-1]]) if n_seq else pointers
    if not np.array_equal(pointers, expected_pointers):
        problems.append((idx, "byte pointers do not follow the sequence lengths", "megatron"))
    total = int(lengths.sum())
    binary = prefix.with_suffix(".bin")
    size = binary.stat().st_size if binary.exists() else None
    if size != total * itemsize:
        problems.append((binary, f"{'missing' if size is None else f'{size:,} bytes'}; the index implies "
                         f"{total * itemsize:,}", "megatron"))
    if tokens is not None and tokens != total:
        problems.append((idx, f"{total:,} tokens; tokens/segments.npy holds {tokens:,}", "megatron"))
