"""Documents read in one process: positives for a quality classifier, arms and held-out sets of
`winnow eval`. From JSONL files and globs or from a winnow stage folder (its Parquet shards).

`in_heldout_slice` picks a fixed slice of any document set by a hash of the id, so the documents
that evaluate a model are never among those that train it (a classifier's positives, a proxy's
training pool), whatever the order or sharding of the files. `in_eval_pool_slice` is `winnow eval`'s
pool slice, and `excluded_from_training` what no curation model may train on. A document a stage derived from
another (a rephrase: id `<source id>/rephrase/<style>/<chunk>`) falls in its source's slice, so a
rewrite of an evaluation document never trains a model either.

Every seeded choice or order by document id in winnow (held-out slices, negatives, rephrase and
DataRater draws, prune pools, percentile tie-breaks, held-out samples) goes through `id_hash` /
`id_hashes` / `id_unit`: xxh3-64 of the id's UTF-8 bytes. Each caller names its `purpose`, which
turns (purpose, seed) into the xxh3 seed, so two choices made with the same user seed are
independent: without it the documents a rephrase stage picks (fraction f, seed 0) would be the
held-out slice itself, and a held-out evaluation document's rewrites never train anything.
Content hashes (dedup keys, shingles, shard fingerprints) are not id hashes and live elsewhere.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import xxhash

from winnow.pipeline.errors import ConfigError

DERIVED_MARK = "/rephrase/"   # rephrase ids: f"{source id}{DERIVED_MARK}{style}/{chunk index}"


def source_document(doc_id: str) -> str:
    """The id of the real document `doc_id` was derived from (itself when it is real)."""
    return doc_id.split(DERIVED_MARK, 1)[0]


def is_derived(doc_id: str) -> bool:
    return DERIVED_MARK in doc_id


@lru_cache(maxsize=256)
def _hash_seed(seed: int, purpose: str) -> int:
    """The xxh3 seed of a (seed, purpose) pair: `seed` itself without a purpose."""
    return xxhash.xxh3_64_intdigest(purpose.encode(), seed=seed) if purpose else seed


def id_hash(doc_id: str, seed: int = 0, purpose: str = "") -> int:
    """The seeded hash of one document id, an int in [0, 2**64): xxh3-64 of its UTF-8 bytes."""
    return xxhash.xxh3_64_intdigest(doc_id.encode("utf-8", "surrogatepass"), seed=_hash_seed(seed, purpose))


def id_hashes(ids: Sequence[str], seed: int = 0, purpose: str = "") -> np.ndarray:
    """`id_hash` of each id, as a uint64 array."""
    key = _hash_seed(seed, purpose)
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode("utf-8", "surrogatepass"), seed=key) for i in ids),
                       np.uint64, len(ids))


def hash_unit(hashes: np.ndarray | int) -> np.ndarray | float:
    """Hashes mapped to [0, 1) (their top 53 bits: float64 holds them exactly, 1.0 is never reached)."""
    if isinstance(hashes, int):
        return (hashes >> 11) * 2.0**-53
    return (np.asarray(hashes, np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def id_unit(ids: Sequence[str], seed: int = 0, purpose: str = "") -> np.ndarray:
    """A uniform draw in [0, 1) per id (float64), a pure function of (id, seed, purpose)."""
    return hash_unit(id_hashes(ids, seed, purpose))


def in_heldout_slice(doc_id: str, fraction: float) -> bool:
    """Whether `doc_id` (a rewrite: its source document) is in the held-out slice of size `fraction`."""
    return hash_unit(id_hash(source_document(doc_id), purpose="heldout")) < fraction


EVAL_POOL_FRACTION = 0.05   # `winnow eval`'s default pool_heldout_fraction


def in_eval_pool_slice(doc_id: str, fraction: float = EVAL_POOL_FRACTION) -> bool:
    """Whether `doc_id` is in the slice of the baseline pool that `winnow eval` evaluates on (its `pool`
    held-out set) and that no arm trains on: the one definition `winnow eval` and the curation models share."""
    return in_heldout_slice(doc_id, fraction)


def excluded_from_training(doc_id: str, heldout_fraction: float = 0.0,
                           pool_fraction: float = EVAL_POOL_FRACTION) -> bool:
    """Whether a curation model (a quality classifier, a reference LM, the DataRater) must not train on
    `doc_id`: it is in `winnow eval`'s pool slice or in its positives'/target's held-out slice of size
    `heldout_fraction`. Both are the same id-hash slice at two sizes, so the larger holds the smaller."""
    return in_eval_pool_slice(doc_id, pool_fraction) or in_heldout_slice(doc_id, heldout_fraction)


def read_documents(spec: str | list[str], max_docs: int | None = None, key: str = "paths",
                   heldout: float = 0.0, side: str = "train") -> tuple[list[str], list[str]]:
    """(ids, texts) from a folder of Parquet shards (`train-*` first) or JSONL files/globs, in order.

    With `heldout` > 0 only one side of the id-hash slice comes back: `train` (outside the slice)
    or `heldout` (inside it). `max_docs` caps what is returned; `key` names the setting in errors.
    """
    ids, texts, _ = read_sourced_documents(spec, max_docs, key, heldout, side)
    return ids, texts


MAX_AUTO_SOURCES = 64   # a column with more values names documents, not sources: no use as strata
STRATIFY_HELP = ("what a source is: auto (each path given when there are several; else the sub-folder when "
                 "the files span several; else the `source` column, or the domain of `url`, when it has at most "
                 f"{MAX_AUTO_SOURCES} values; else one source), path, folder, file, or a column name")


def read_sourced_documents(spec: str | list[str], max_docs: int | None = None, key: str = "paths",
                           heldout: float = 0.0, side: str = "train",
                           stratify: str = "auto") -> tuple[list[str], list[str], list[str]]:
    """`read_documents` plus the source of each document, by the `stratify` rule (STRATIFY_HELP)."""
    import orjson
    import pyarrow.parquet as pq

    def wanted(doc_id: str) -> bool:
        return heldout <= 0 or in_heldout_slice(doc_id, heldout) == (side == "heldout")

    specs = [spec] if isinstance(spec, str) else spec
    column = stratify if stratify not in ("auto", "path", "folder", "file") else None
    ids, texts, origins = [], [], []   # origin: (path given, file, {source, url, column} values)
    for s in specs:
        if os.path.isdir(s):
            files = sorted(glob.glob(os.path.join(s, "train-*.parquet"))) or sorted(glob.glob(os.path.join(s, "*.parquet")))
            for f in files:
                names = set(pq.read_schema(f).names)
                extra = [c for c in ("source", "url", column) if c and c in names and c not in ("id", "text")]
                t = pq.read_table(f, columns=["id", "text", *dict.fromkeys(extra)])
                cols = {c: t.column(c).to_pylist() for c in extra}
                for n, (i, text) in enumerate(zip(t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True)):
                    if wanted(i):
                        ids.append(i)
                        texts.append(text)
                        origins.append((s, f, {c: v[n] for c, v in cols.items()}))
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
                        origins.append((s, f, {c: rec.get(c) for c in ("source", "url", column) if c}))
        if max_docs and len(ids) >= max_docs:
            break
    if max_docs:
        ids, texts, origins = ids[:max_docs], texts[:max_docs], origins[:max_docs]
    return ids, texts, _sources(origins, specs, stratify, key)


def _sources(origins: list[tuple[str, str, dict]], specs: list[str], stratify: str, key: str) -> list[str]:
    from urllib.parse import urlsplit

    def folder(f: str) -> str:
        return os.path.basename(os.path.dirname(f))

    def from_columns(values: dict) -> str:
        if values.get("source") is not None:
            return str(values["source"])
        if values.get("url"):
            return urlsplit(str(values["url"])).netloc or "unknown"
        return "all"

    if stratify == "auto":
        if len(specs) > 1:
            stratify = "path"
        elif len({folder(f) for _, f, _ in origins}) > 1:
            stratify = "folder"
        else:
            values = [from_columns(v) for _, _, v in origins]
            return values if len(set(values)) <= MAX_AUTO_SOURCES else ["all"] * len(values)
    if stratify == "path":
        return [s for s, _, _ in origins]
    if stratify == "folder":
        return [folder(f) for _, f, _ in origins]
    if stratify == "file":
        return [f for _, f, _ in origins]
    missing = next((f for _, f, v in origins if v.get(stratify) is None), None)
    if missing:
        raise ConfigError(f"{missing}: a document has no {stratify!r} column to stratify by", key=key)
    values = [v[stratify] for _, _, v in origins]
    return [urlsplit(str(v)).netloc or "unknown" if stratify == "url" else str(v) for v in values]
