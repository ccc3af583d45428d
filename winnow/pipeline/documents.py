"""Documents read in one process: positives for a quality classifier, arms and held-out sets of
`winnow eval`. From JSONL files and globs or from a winnow stage folder (its Parquet shards).

`in_heldout_slice` picks a fixed slice of any document set by a hash of the id, so the documents
that evaluate a model are never among those that train it (a classifier's positives, a proxy's
training pool), whatever the order or sharding of the files. A document a stage derived from
another (a rephrase: id `<source id>/rephrase/<style>/<chunk>`) falls in its source's slice, so a
rewrite of an evaluation document never trains a model either.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import xxhash

from winnow.pipeline.errors import ConfigError

DERIVED_MARK = "/rephrase/"   # rephrase ids: f"{source id}{DERIVED_MARK}{style}/{chunk index}"


def source_document(doc_id: str) -> str:
    """The id of the real document `doc_id` was derived from (itself when it is real)."""
    return doc_id.split(DERIVED_MARK, 1)[0]


def is_derived(doc_id: str) -> bool:
    return DERIVED_MARK in doc_id


def in_heldout_slice(doc_id: str, fraction: float) -> bool:
    return xxhash.xxh64_intdigest(source_document(doc_id).encode()) % 10_000 < fraction * 10_000


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
