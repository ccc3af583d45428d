"""What the driver receives from the global dedup fits must not grow with the number of documents.

A million-document run holds on the driver only what follows the duplicates (bench/scale.py measures
it); these tests check the structure behind that on a real cluster: every result a fit's map
returns to the driver is pickled and counted, for two corpora of the same shards, one four times the
documents of the other and neither with a duplicate.
"""

from __future__ import annotations

import functools
import json
import pickle
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import web_files

from winnow.filters.minhash_dedup import band_keys, minhash_signatures
from winnow.pipeline.stage import Context, ShardRef


class CountingContext(Context):
    """The run's Context, counting the pickled bytes of every result that comes back to the driver."""

    received: int = 0

    def map(self, fn, items: list, **kwargs) -> list:
        results = super().map(fn, items, **kwargs)
        self.received += sum(len(pickle.dumps(r, protocol=5)) for r in results)
        return results


@functools.cache
def distinct_documents(n: int) -> list[str]:
    """`n` distinct documents of 3 real web paragraphs each, no two of them near-duplicates."""
    paragraphs: list[str] = []
    for path in web_files(8):
        for line in Path(path).read_text().splitlines():
            paragraphs += [p.strip() for p in re.split(r"\n\s*\n", json.loads(line)["text"]) if len(p.split()) >= 10]
    paragraphs = sorted(set(paragraphs))
    random.Random(0).shuffle(paragraphs)
    docs = ["\n\n".join(paragraphs[3 * i:3 * i + 3]) for i in range(len(paragraphs) // 3)]
    # real pages quote each other: keep only documents that share no LSH bucket with an earlier one
    seen: set[int] = set()
    distinct: list[str] = []
    for start in range(0, len(docs), 200):
        chunk = docs[start:start + 200]
        for doc, row in zip(chunk, band_keys(minhash_signatures(chunk, 5, 112, 1), 14, 8).tolist(), strict=True):
            if not seen & set(row):
                distinct.append(doc)
            seen.update(row)
        if len(distinct) >= n:
            return distinct[:n]
    raise AssertionError(f"only {len(distinct)} distinct documents")


def shards_of(folder: Path, texts: list[str], n_shards: int = 4) -> list[ShardRef]:
    folder.mkdir(parents=True)
    refs, per = [], -(-len(texts) // n_shards)
    for s in range(n_shards):
        chunk = texts[s * per:(s + 1) * per]
        path = folder / f"part-{s:05d}.parquet"
        pq.write_table(pa.table({"id": [f"s{s}-{i}" for i in range(len(chunk))], "text": chunk}), path)
        refs.append(ShardRef(name=f"part-{s:05d}", path=str(path), fingerprint=f"{s}"))
    return refs


def received_by_fit(stage, texts: list[str], folder: Path, client) -> int:
    ctx = CountingContext(client=client, seed=0, workdir=str(folder / "_fit"))
    state = stage.fit(shards_of(folder / "in", texts), ctx)
    assert not state  # no duplicates in either corpus: nothing to drop
    return ctx.received


def test_minhash_fit_sends_the_driver_nothing_per_document(tmp_path, client):
    from winnow.filters.minhash_dedup import MinhashDedupStage, MinhashParams

    texts = distinct_documents(800)
    stage = MinhashDedupStage(MinhashParams(partitions=4))
    small = received_by_fit(stage, texts[:200], tmp_path / "small", client)
    large = received_by_fit(stage, texts, tmp_path / "large", client)
    # before: each shard's keep scores and dup_count weights came back, 16 bytes a document (9.6 kB more)
    assert large <= small * 1.1 + 1000, (small, large)


def test_exact_fit_sends_the_driver_nothing_per_document(tmp_path, client):
    from winnow.filters.exact_dedup import ExactDedupParams, ExactDedupStage

    texts = distinct_documents(800)
    stage = ExactDedupStage(ExactDedupParams())
    small = received_by_fit(stage, texts[:200], tmp_path / "small", client)
    large = received_by_fit(stage, texts, tmp_path / "large", client)
    assert large <= small * 1.1 + 1000, (small, large)
