"""The arms of `winnow eval`: documents or packed rows, under the same guarantees.

An arm is a folder of documents (a winnow stage folder, JSONL files or globs) or a winnow pack
stage folder. Either way:
- no document of any held-out set trains an arm, and neither does any document in the pool's
  held-out id-hash slice (packed rows holding one are dropped, checked by `doc_ids`);
- `max_docs` caps the documents an arm trains on (packed arms: whole rows, in order, until the
  cap is reached);
- one tokenizer for all: a packed arm's tokenizer (the `tokenizer.json` its run saved) must have
  the same hash as every other packed arm's and as the configured one; otherwise a clear error
  names both files;
- a folder of documents with loss masks (`masked_spans`, e.g. a `prune` stage) is refused: a text
  arm trains on every token of `text`, so its masks would be lost; tokenize and pack it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from winnow.pipeline.documents import in_heldout_slice, is_derived, read_sourced_documents, source_document
from winnow.pipeline.errors import ConfigError
from winnow.proxy.cost import CurationCost, chain_flops
from winnow.proxy.data import PackedRows, pack_tokenized, rows_from_table, tokenize_documents
from winnow.tokenize.pack import unpack
from winnow.tokenize.tokenize_stage import TokenizerState
from winnow.tokenize.tokenizer import load_tokenizer, tokenizer_hash
from winnow.tokenize.writers import is_packed


@dataclass
class Arm:
    name: str
    path: str
    packed: bool
    ids: list[str] = field(default_factory=list)      # text arms: every document, in order
    texts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # text arms: each document's source (pool stratification)
    table: pa.Table | None = None                     # packed arms: the pack stage's rows
    rows: PackedRows | None = None                    # what the proxy trains on
    cost: CurationCost = field(default_factory=CurationCost)


def run_tokenizer(packed_stage: str) -> str | None:
    """The tokenizer.json a winnow run trained or loaded, found beside its pack stage."""
    found = sorted(Path(packed_stage).parent.glob("[0-9][0-9]-tokenize/tokenizer.json"))
    return str(found[-1]) if found else None


def read_arms(arms: dict[str, str], stratify: dict[str, str] | None = None) -> dict[str, Arm]:
    """Every arm's documents or rows; `stratify` names the source rule per arm (the baseline's pool)."""
    out = {}
    for name, path in arms.items():
        if is_packed(Path(path)):
            table = pa.concat_tables(pq.read_table(p) for p in sorted(Path(path).glob("train-*.parquet")))
            out[name] = Arm(name, path, True, table=table)
        else:
            refuse_loss_masks(name, path)
            ids, texts, sources = read_sourced_documents(path, key=f"arms.{name}",
                                                         stratify=(stratify or {}).get(name, "auto"))
            out[name] = Arm(name, path, False, ids=ids, texts=texts, sources=sources)
    return out


def refuse_loss_masks(name: str, path: str) -> None:
    """A text arm reads `id` and `text` only: a folder whose rows carry loss masks must come packed."""
    folder = Path(path)
    files = (sorted(folder.glob("train-*.parquet")) or sorted(folder.glob("*.parquet"))) if folder.is_dir() else []
    masked = next((f for f in files if "masked_spans" in pq.read_schema(f).names), None)
    if masked is not None:
        raise ConfigError(f"arms.{name}: {path} has loss masks (a `masked_spans` column in {masked.name}, as a "
                          "`prune` stage writes) that a text arm would ignore, training on the masked tokens; add "
                          "`tokenize` and `pack` stages after it and give the pack stage folder as the arm",
                          key=f"arms.{name}")


def check_tokenizers(arms: dict[str, Arm], configured: str | None) -> str | None:
    """The tokenizer every packed arm shares (or the configured one); raises naming two files that differ."""
    seen: dict[str, str] = {}  # hash -> file
    files = [configured] if configured else []
    for arm in arms.values():
        if arm.packed:
            found = run_tokenizer(arm.path)
            if found is None:
                raise ConfigError(f"arms.{arm.name}: no tokenizer.json beside {arm.path} (looked for "
                                  f"{Path(arm.path).parent}/NN-tokenize/tokenizer.json)", key=f"arms.{arm.name}")
            files.append(found)
    for f in files:
        h = tokenizer_hash(load_tokenizer(f))
        if seen and h not in seen:
            other = next(iter(seen.values()))
            raise ConfigError(f"tokenizers differ: {other} and {f} (hashes {next(iter(seen))} vs {h}); every arm "
                              "must be tokenized by the same tokenizer", key="tokenizer")
        seen.setdefault(h, f)
    return files[0] if files else None


def pool_candidates(baseline: Arm, tokenizer: TokenizerState, fraction: float) -> tuple[pa.Table, list[str]]:
    """The baseline's real documents in the pool's held-out slice (never a rewrite), tokenized, and their sources.
    A packed baseline is unpacked (its segments give every document back, their text decoded from the
    tokens); its documents have one source."""
    if baseline.packed:
        docs = {d: t for d, t in unpack(baseline.table).items() if in_heldout_slice(d, fraction) and not is_derived(d)}
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in docs.values()])]).astype(np.int32)
        values = np.concatenate(list(docs.values())) if docs else np.zeros(0, np.uint16)
        texts = tokenizer.tokenizer.decode_batch([t.tolist() for t in docs.values()], skip_special_tokens=True)
        table = pa.table({"id": list(docs), "text": pa.array(texts, pa.string()),
                          "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                          "n_tokens": pa.array(np.diff(offsets), pa.int32())})
        return table, ["pool"] * len(docs)
    picked = [i for i, d in enumerate(baseline.ids) if in_heldout_slice(d, fraction) and not is_derived(d)]
    table = tokenize_documents([baseline.ids[i] for i in picked], [baseline.texts[i] for i in picked], tokenizer)
    return table, [baseline.sources[i] for i in picked]


def without_documents(table: pa.Table, drop, max_docs: int | None) -> pa.Table:
    """A pack stage's rows with the segments of dropped documents cut out (the row's other segments
    close up, padding at the end), keeping whole rows until `max_docs` documents are in. The rows keep
    the packing strategy that made them; only the dropped documents' tokens leave."""
    width = len(table.column("input_ids")[0]) if table.num_rows else 0

    def matrix(name: str) -> np.ndarray:
        return table.column(name).combine_chunks().values.to_numpy(zero_copy_only=False).reshape(table.num_rows, width)

    cols = {k: matrix(k) for k in ("input_ids", "segment_ids", "position_ids", "loss_mask")}
    out = {k: [] for k in cols}
    out_docs, seen = [], set()
    for r, (docs, cu) in enumerate(zip(table.column("doc_ids").to_pylist(), table.column("cu_seqlens").to_pylist(),
                                       strict=True)):
        if max_docs and len(seen) >= max_docs:
            break
        keep = [k for k, d in enumerate(docs) if not drop(d)]
        if not keep:
            continue
        if len(keep) == len(docs):
            for k in cols:
                out[k].append(cols[k][r])
        else:
            pieces = np.concatenate([np.arange(cu[k], cu[k + 1]) for k in keep])
            for k, values in cols.items():
                row = np.zeros(width, values.dtype)
                row[:len(pieces)] = values[r, pieces]
                out[k].append(row)
            segments = np.concatenate([np.full(cu[k + 1] - cu[k], j + 1) for j, k in enumerate(keep)])
            out["segment_ids"][-1][:len(pieces)] = segments
            out["loss_mask"][-1][0] = 0        # a row's first token has no context in the row
        out_docs.append([docs[k] for k in keep])
        seen.update(out_docs[-1])

    def fixed(rows: list[np.ndarray], dtype) -> pa.Array:
        flat = np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype)
        return pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, max(width, 1), dtype=np.int32)),
                                        pa.array(flat))

    return pa.table({"input_ids": fixed(out["input_ids"], cols["input_ids"].dtype),
                     "segment_ids": fixed(out["segment_ids"], np.uint16),
                     "position_ids": fixed(out["position_ids"], np.uint16),
                     "loss_mask": fixed(out["loss_mask"], np.uint8),
                     "doc_ids": pa.array(out_docs, pa.list_(pa.string()))})


def held_by_id(excluded: set[str], pool_fraction: float):
    """The id rule: a held-out document (or a rewrite of one), or a document in the pool's id-hash slice."""
    def held(doc_id: str) -> bool:
        return source_document(doc_id) in excluded or in_heldout_slice(doc_id, pool_fraction)
    return held


def training_rows(arm: Arm, tokenizer: TokenizerState, seq_len: int, excluded: set[str],
                  pool_fraction: float, max_docs: int | None, baseline_path: str | None = None,
                  copies: frozenset[str] | set[str] = frozenset()) -> PackedRows:
    """The rows an arm trains on: held-out documents removed (by id, and `copies`: this arm's documents
    that share n-grams with a held-out set, overlap.py), `max_docs` applied; sets `arm.cost` (the
    curation after the baseline's own stage when both come from one run)."""
    by_id = held_by_id(excluded, pool_fraction)

    def held(doc_id: str) -> bool:
        return doc_id in copies or by_id(doc_id)

    scoring, once = chain_flops(arm.path, after=baseline_path)
    if arm.packed:
        width = len(arm.table.column("input_ids")[0]) if arm.table.num_rows else seq_len
        if width != seq_len:
            raise ConfigError(f"{arm.path} holds rows of {width} tokens but seq_len is {seq_len}", key="seq_len")
        padding = pc.sum(arm.table.column("n_pad").cast(pa.int64())).as_py() or 0
        kept_tokens = arm.table.num_rows * width - padding
        kept = without_documents(arm.table, held, max_docs)
        rows = rows_from_table(kept) if kept.num_rows else None
    else:
        tokenized = tokenize_documents(arm.ids, arm.texts, tokenizer)
        kept_tokens = int(pc.sum(tokenized.column("n_tokens")).as_py() or 0)
        keep = [i for i, d in enumerate(arm.ids) if not held(d)]
        keep = keep[:max_docs] if max_docs else keep
        rows = pack_tokenized(tokenized.take(pa.array(keep, pa.int64())), seq_len) if keep else None
    if rows is None or len(rows) == 0:
        raise ConfigError(f"arm {arm.name!r} ({arm.path}) has no documents left to train on once the held-out "
                          "documents are removed", key=f"arms.{arm.name}")
    arm.cost = CurationCost(scoring, once, kept_tokens)
    return rows
