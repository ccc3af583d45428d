"""How related the documents sharing a packed row are: mean TF-IDF cosine over document pairs.

Used by bench/tokens.py and the tests to show BM25Chunk's rows are more related than concat's.
Written with scipy.sparse (no scikit-learn in the stack); words are lower-cased \\w+ runs.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pyarrow as pa

WORD = re.compile(r"\w+")


def tfidf(texts: list[str]):
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for i, text in enumerate(texts):
        counts: dict[int, int] = {}
        for w in WORD.findall(text.lower()):
            j = vocab.setdefault(w, len(vocab))
            counts[j] = counts.get(j, 0) + 1
        rows.extend([i] * len(counts))
        cols.extend(counts)
        vals.extend(counts.values())
    m = sparse.csr_matrix((np.asarray(vals, float), (rows, cols)), shape=(len(texts), len(vocab)))
    df = np.bincount(m.indices, minlength=len(vocab))
    m = m.multiply(np.log((1 + len(texts)) / (1 + df)) + 1).tocsr()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
    return sparse.diags(1 / np.maximum(norms, 1e-12)) @ m


def row_relatedness(packed: pa.Table, documents: pa.Table) -> float:
    """Mean cosine between every pair of distinct documents that share a row (rows of one document skip)."""
    index = {d: i for i, d in enumerate(documents.column("id").to_pylist())}
    vectors = tfidf(documents.column("text").to_pylist())
    sims = []
    for docs in packed.column("doc_ids").to_pylist():
        unique = list(dict.fromkeys(docs))
        for a, b in itertools.combinations(unique, 2):
            sims.append(float(vectors[index[a]].multiply(vectors[index[b]]).sum()))
    return float(np.mean(sims)) if sims else 0.0
