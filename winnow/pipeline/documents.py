"""Documents read in one process: positives for a quality classifier, arms and held-out sets of
`winnow eval`. From JSONL files and globs or from a winnow stage folder (its Parquet shards).

`in_heldout_slice` picks a fixed slice of any document set by a hash of the id, so the documents
that evaluate a model are never among those that train it (a classifier's positives, a proxy's
training pool), whatever the order or sharding of the files.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import xxhash

from winnow.pipeline.errors import ConfigError


def in_heldout_slice(doc_id: str, fraction: float) -> bool:
    return xxhash.xxh64_intdigest(doc_id.encode()) % 10_000 < fraction * 10_000


def read_documents(spec: str | list[str], max_docs: int | None = None, key: str = "paths",
                   heldout: float = 0.0, side: str = "train") -> tuple[list[str], list[str]]:
    """(ids, texts) from a folder of Parquet shards (`train-*` first) or JSONL files/globs, in order.

    With `heldout` > 0 only one side of the id-hash slice comes back: `train` (outside the slice)
    or `heldout` (inside it). `max_docs` caps what is returned; `key` names the setting in errors.
    """
    import orjson
    import pyarrow.parquet as pq

    def wanted(doc_id: str) -> bool:
        return heldout <= 0 or in_heldout_slice(doc_id, heldout) == (side == "heldout")

    specs = [spec] if isinstance(spec, str) else spec
    ids, texts = [], []
    for s in specs:
        if os.path.isdir(s):
            files = sorted(glob.glob(os.path.join(s, "train-*.parquet"))) or sorted(glob.glob(os.path.join(s, "*.parquet")))
            for f in files:
                t = pq.read_table(f, columns=["id", "text"])
                for i, text in zip(t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True):
                    if wanted(i):
                        ids.append(i)
                        texts.append(text)
        else:
            files = sorted(glob.glob(s, recursive=True))
            if not files:
                raise ConfigError(f"no documents at {s!r}", key=key)
            for f in files:
                for n, line in enumerate(Path(f).read_bytes().splitlines()):
                    try:
                        rec = orjson.loads(line)
                        doc_id, text = str(rec.get("id", f"{f}:{n + 1}")), rec["text"]
                    except (orjson.JSONDecodeError, KeyError, AttributeError) as e:
                        raise ConfigError(f"{f}, line {n + 1}: not a JSON object with a `text` field ({e})",
                                          key=key) from e
                    if wanted(doc_id):
                        ids.append(doc_id)
                        texts.append(text)
        if max_docs and len(ids) >= max_docs:
            break
    if max_docs:
        ids, texts = ids[:max_docs], texts[:max_docs]
    return ids, texts
