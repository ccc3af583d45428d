"""Fuzzy deduplication with MinHash-LSH, out of core on Dask.

Steps (the same four as datatrove's MinHash pipeline, as one stage):
1. signatures (map, per shard): word n-gram shingles of the text after `normalize` (textnorm.py,
   datatrove's defaults: lower case, accents removed, numbers to 0, punctuation to spaces; so two
   copies of a page that differ in dates or prices, or in NFC vs NFD, have the same shingles); each
   word is hashed once, a shingle's hash is a polynomial over its n word hashes (numpy, no
   per-shingle Python), and its `b*r` MinHash values are min over shingles of seeded 32-bit
   permutations of the mixed shingle hash (`minhash_signatures` says why 32 bits are enough).
   A document shorter than n words is one shingle (all its words), so short documents only meet
   their exact copies; a document without words is keyed by its whole text.
2. buckets (shuffle): each band's `r` values become one 64-bit key, written to files partitioned by
   `key % P`, so no process holds every signature.
3. cluster (reduce, then connected components on the driver): every band bucket with two or more
   documents links them; the edges (only duplicates) are merged into components (scipy).
4. filter (apply): per component one survivor by `keep` (pipeline/keep.py: first in input order,
   longest, or by a column); the others are rejected with `dup_of` and `dup_cluster_size`, and
   kept rows carry `dup_count`.

Optional `verify`: a candidate pair is linked only if the exact shingle Jaccard of its two documents
reaches `threshold`, removing LSH false positives. Without verify a bucket is a star from its first
member (the same components); with it every pair of a bucket is compared, because a star whose
centre is a false positive would cut its true pairs apart. Buckets above `verify_max_bucket`
members are compared by leader rounds instead (each round, the first unlinked member against the
rest): linear in the bucket per true group. Defaults are FineWeb's: 5-grams, 14 bands x 8 rows
(P(candidate) = 1 - (1 - s^8)^14: 0.56 at s=0.7, 0.92 at 0.8).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from winnow.filters.textnorm import TextNorm, normalize_texts
from winnow.pipeline.dupfind import Duplicates
from winnow.pipeline.keep import KEEP_HELP, check_keep, dup_weights, keep_columns, keep_scores
from winnow.pipeline.stage import Context, ShardRef, Stage

# the (shingles x hashes) matrix of one batch: 4k x 112 x 4 B = 1.8 MB stays in cache through its three
# passes; at 20k (9 MB) the same work took 1.6-2x the CPU time (3,000 web pages)
MAX_SHINGLES_PER_BATCH = 4_000
# band keys per shuffle partition: (key, shard, row) = 24 B each, ~48 MB a partition before its sort
KEYS_PER_PARTITION = 2_000_000
MAX_PARTITIONS = 1024
SHINGLES_PER_CHUNK = 1_000_000   # words hashed in one vectorised pass (~8 B per word in each of a few arrays)


class MinhashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ngram: int = Field(5, ge=1, description="words per shingle")
    bands: int | None = Field(14, ge=1, description="LSH bands (b)")
    rows: int | None = Field(8, ge=1, description="hashes per band (r)")
    threshold: float | None = Field(None, gt=0, lt=1, description="target Jaccard: derive b and r for "
                                    "`num_hashes` (used when bands/rows are null) and the `verify` cut")
    num_hashes: int = Field(112, ge=1, description="b*r when derived from `threshold`")
    verify: bool = Field(False, description="drop candidate pairs whose exact shingle Jaccard < threshold")
    verify_max_bucket: int = Field(200, ge=2, description="with verify: buckets up to this size compare "
                                   "every pair; larger ones use leader rounds")
    normalize: TextNorm = Field(default_factory=TextNorm, description="text normalisation before shingling")
    keep: str = Field("first", description=KEEP_HELP)
    seed: int = 1

    _keep = field_validator("keep")(check_keep)
    partitions: int | None = Field(None, gt=0, description="shuffle partitions (default: ~2M band keys each, "
                                   "at least two per worker)")

    @model_validator(mode="after")
    def _derive(self) -> MinhashParams:
        if self.bands is None or self.rows is None:
            if self.threshold is None:
                raise ValueError("give bands and rows, or a threshold")
            self.bands, self.rows = bands_rows_for(self.threshold, self.num_hashes)
        if self.verify and self.threshold is None:
            self.threshold = (1 / self.bands) ** (1 / self.rows)  # the S-curve's midpoint
        return self


def bands_rows_for(threshold: float, num_hashes: int) -> tuple[int, int]:
    """(b, r) with b*r <= num_hashes whose S-curve midpoint (1/b)^(1/r) is closest to `threshold`."""
    best = None
    for r in range(1, num_hashes + 1):
        b = num_hashes // r
        if b < 1:
            break
        err = abs((1 / b) ** (1 / r) - threshold)
        if best is None or err < best[0]:
            best = (err, b, r)
    return best[1], best[2]


def candidate_probability(s: float, bands: int, rows: int) -> float:
    return 1 - (1 - s**rows) ** bands


def _word_hashes(words: pa.Array) -> np.ndarray:
    """xxh3-64 of each word of an Arrow string array. Words are dictionary-encoded first (a C++ hash
    table) and only the distinct ones cross into Python for xxh3 (pyarrow has no vectorised string
    hash): the web sample x 8 in 88 shards holds 50.2M words, 3.9M of them distinct within their shard."""
    if len(words) == 0:
        return np.zeros(0, np.uint64)
    encoded = pc.dictionary_encode(words)
    distinct = encoded.dictionary.to_pylist()
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in distinct), np.uint64, len(distinct))
    return hashes[encoded.indices.to_numpy(zero_copy_only=False)]


def as_strings(texts: list[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        return texts.combine_chunks()
    return texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())


def words_of(text: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """The whitespace-separated words of every row, flat, and the row each came from.

    Trailing whitespace is trimmed first: pyarrow's `utf8_split_whitespace` (26.0.1) decodes one
    code point past a row's end when the row ends in whitespace, and when those bytes are not valid
    UTF-8 (never the next row's; whatever follows the last row's buffer may be) it keeps the trailing
    whitespace as a word: one extra shingle, depending on memory the document does not own."""
    split = pc.utf8_split_whitespace(pc.utf8_rtrim_whitespace(text))
    flat = pc.list_flatten(split)
    nonempty = pc.greater(pc.binary_length(flat), 0)          # a leading separator leaves an empty piece
    doc_of_word = pc.list_parent_indices(split).to_numpy()[nonempty.to_numpy(zero_copy_only=False)]
    return pc.filter(flat, nonempty), doc_of_word


def shingle_hashes(texts: list[str] | pa.Array | pa.ChunkedArray, ngram: int,
                   norm: TextNorm) -> tuple[np.ndarray, np.ndarray]:
    """64-bit shingle hashes of every document, concatenated, and each document's start offset.

    Vectorised over the whole batch: the words of every document are hashed in one flat array and
    the shingle polynomial runs over all of it; windows that cross a document boundary are dropped."""
    text = as_strings(texts)
    words, doc_of_word = words_of(normalize_texts(text, norm, split_after=True))
    counts = np.bincount(doc_of_word, minlength=len(text)).astype(np.int64)
    wh = _word_hashes(words)
    powers = np.array([pow(0x100000001B3, ngram - 1 - i, 1 << 64) for i in range(ngram)], np.uint64)
    word_start = np.zeros(len(text) + 1, np.int64)
    np.cumsum(counts, out=word_start[1:])
    per_doc = np.maximum(counts - ngram + 1, 1)                # a short or empty document is one shingle
    starts = np.zeros(len(text) + 1, np.int64)
    np.cumsum(per_doc, out=starts[1:])
    hashes = np.empty(starts[-1], np.uint64)
    with np.errstate(over="ignore"):
        if len(wh) >= ngram:
            window = np.zeros(len(wh) - ngram + 1, np.uint64)
            for i in range(ngram):                             # Horner over the flat word hashes
                window *= np.uint64(0x100000001B3) if i else np.uint64(1)
                window += wh[i:i + len(window)]
            first = np.arange(len(window))
            whole = first + ngram <= word_start[1:][doc_of_word[:len(window)]]   # inside one document
            hashes[np.repeat(counts >= ngram, per_doc)] = window[whole]
        for d in np.flatnonzero(counts < ngram).tolist():      # the whole word sequence is the shingle
            n = int(counts[d])
            if n:
                w = wh[word_start[d]:word_start[d] + n]
                hashes[starts[d]] = (w * powers[-n:]).sum(dtype=np.uint64) ^ np.uint64(n)
            else:                                              # no words at all: the raw text is the key
                raw = text[d].as_py() or ""
                hashes[starts[d]] = xxhash.xxh3_64_intdigest(raw.encode("utf-8", "surrogatepass"))
    return hashes, starts


def mix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: a full-avalanche mix in five vector operations.

    The shingle polynomial's bits are far from uniform (its low bits follow the words' low bits alone);
    the affine permutations in `minhash_signatures` need uniform inputs, and their ordering is decided
    by the top bits, which this mix makes depend on every input bit."""
    shift, tmp = np.uint64(33), np.empty_like(x)
    with np.errstate(over="ignore"):
        for mult in (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), None):
            np.right_shift(x, shift, out=tmp)
            np.bitwise_xor(x, tmp, out=x)
            if mult is not None:
                np.multiply(x, mult, out=x)
    return x


def minhash_signatures(texts: list[str] | pa.Array | pa.ChunkedArray, ngram: int, num_hashes: int, seed: int,
                       norm: TextNorm | None = None) -> np.ndarray:
    """(n_docs, num_hashes) uint32 MinHash signatures.

    Each shingle hash is mixed once (`mix64`, full avalanche) and its top 32 bits go through
    `num_hashes` seeded affine maps `a*x + b mod 2**32` (a odd: a permutation); a signature value is
    the minimum over the document's shingles. Why not a seeded 64-bit mix per (shingle, hash), as
    before: that is 10 passes over the (shingles x hashes) matrix against 3 here, on half the bytes,
    and the estimates are as good: on 300 web pages against copies with 2-20% of words replaced
    (exact 5-gram Jaccard 0.53 on average), 5 seeds x 112 hashes, the estimate's error divided by its
    binomial standard error had mean +0.001 / +0.022 and s.d. 0.97 / 1.03 (64-bit mix / this)."""
    gen = np.random.RandomState(seed)
    seeds = gen.randint(0, 2**63, size=num_hashes, dtype=np.uint64)
    mult = ((seeds & np.uint64(0xFFFFFFFF)) | np.uint64(1)).astype(np.uint32)[None, :]
    add = (seeds >> np.uint64(32)).astype(np.uint32)[None, :]
    out = np.empty((len(texts), num_hashes), np.uint32)
    texts = as_strings(texts)    # sliced below without copies
    approx_shingles = np.cumsum(pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False) // 5 + 1)
    start = 0
    while start < len(texts):    # chunks of ~SHINGLES_PER_CHUNK for the vectorised word hashing
        end = max(int(np.searchsorted(approx_shingles, approx_shingles[start] + SHINGLES_PER_CHUNK)), start + 1)
        hashes, starts = shingle_hashes(texts[start:end], ngram, norm or TextNorm())
        mixed = (mix64(hashes) >> np.uint64(32)).astype(np.uint32)
        first = 0
        with np.errstate(over="ignore"):
            while first < end - start:   # batches of ~MAX_SHINGLES_PER_BATCH shingles, whole documents
                last = int(np.searchsorted(starts, starts[first] + MAX_SHINGLES_PER_BATCH, "right")) - 1
                last = min(max(last, first + 1), end - start)
                permuted = mixed[starts[first]:starts[last], None] * mult    # (shingles, num_hashes)
                permuted += add
                out[start + first:start + last] = np.minimum.reduceat(permuted, starts[first:last] - starts[first],
                                                                      axis=0)
                first = last
        start = end
    return out


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64 keys; the band index is mixed in so bands never share buckets."""
    mult = np.array([pow(0x9E3779B97F4A7C15, i + 1, 1 << 64) for i in range(rows)], np.uint64)
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    with np.errstate(over="ignore"):
        keys = (sig * mult).sum(axis=2, dtype=np.uint64)
        keys ^= np.arange(bands, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    return keys


def _bucket_map(args: tuple) -> int:
    ref, shard_idx, params, workdir, n_parts = args
    names = pq.read_schema(ref.path).names
    wanted = {"text", *keep_columns(params.keep)} | ({"dup_count"} & set(names))
    table = pq.read_table(ref.path, columns=[c for c in names if c in wanted])
    texts = table.column("text")
    sig = minhash_signatures(texts, params.ngram, params.bands * params.rows, params.seed, params.normalize)
    keys = band_keys(sig, params.bands, params.rows).ravel()           # (n_docs * bands,)
    rows = np.repeat(np.arange(len(texts), dtype=np.int64), params.bands)
    part = (keys % np.uint64(n_parts)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    keys, rows, part = keys[order], rows[order], part[order]
    bounds = np.searchsorted(part, np.arange(n_parts + 1))
    for p in range(n_parts):
        if bounds[p + 1] > bounds[p]:
            out = Path(workdir) / f"p{p:04d}" / f"{ref.name}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            sl = slice(bounds[p], bounds[p + 1])
            pq.write_table(pa.table({"key": keys[sl], "shard": np.full(sl.stop - sl.start, shard_idx, np.int64),
                                     "row": rows[sl]}), out)
    return len(texts)  # only the count: per-document scores stay in the shard (`_member_scores`)


def _member_scores(args: tuple[ShardRef, np.ndarray, str]) -> tuple[np.ndarray, np.ndarray]:
    """`keep` scores and `dup_count` weights of some rows of one shard (those with a duplicate), read
    on a worker: the driver receives numbers for duplicated documents only, never one per document."""
    ref, rows, keep = args
    names = pq.read_schema(ref.path).names
    wanted = {*keep_columns(keep)} | ({"dup_count"} & set(names))
    table = pq.read_table(ref.path, columns=[c for c in names if c in wanted] or ["id"]).take(pa.array(rows))
    return keep_scores(table, keep), dup_weights(table)


def _bucket_reduce(args: tuple[str, np.ndarray, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique candidate edges of one key partition as one uint64 per edge, `a << 32 | b` (global
    document numbers; eight bytes an edge: the driver holds every edge of the corpus), and the
    buckets too large to pair out (their members), which only verify asks for.

    `complete_up_to` 0: star edges from each bucket's first document (enough for components);
    otherwise every pair inside buckets of up to that many members."""
    folder, offsets, complete_up_to = args
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        return np.zeros(0, np.uint64), []
    t = pa.concat_tables(pq.read_table(f) for f in files)
    key = np.asarray(t.column("key"))
    doc = offsets[np.asarray(t.column("shard"))] + np.asarray(t.column("row"))
    order = np.lexsort((doc, key))
    key, doc = key[order], doc[order].astype(np.uint64)
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    if not complete_up_to:
        head = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
        dup = ~first
        return np.unique((doc[head[dup]] << np.uint64(32)) | doc[dup]), []
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(key)))
    codes, big = [], []
    for size in np.unique(sizes[sizes >= 2]).tolist():
        at = starts[sizes == size]
        if size > complete_up_to:
            big.extend(doc[a:a + size].astype(np.int64) for a in at.tolist())
            continue
        members = doc[at[:, None] + np.arange(size)]      # (buckets, size), ascending per row
        i, j = np.triu_indices(size, 1)
        codes.append(((members[:, i] << np.uint64(32)) | members[:, j]).ravel())
    return (np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.uint64)), big


def shuffle_partitions(shards: list[ShardRef], bands: int, n_workers: int) -> int:
    """Key partitions of the bucket shuffle: about KEYS_PER_PARTITION band keys each, at least two per
    worker. Every map task writes one file per partition, so partitions are not free: at 4 per input shard
    (the old rule) the web sample x 8 made 22,528 files of a few kB, and writing and reading them was
    half of the stage's fit (40 s; 22 s at 4 partitions)."""
    keys = bands * sum(pq.read_metadata(ref.path).num_rows for ref in shards)
    return max(2 * n_workers, min(MAX_PARTITIONS, math.ceil(keys / KEYS_PER_PARTITION)))


class MinhashDedupStage(Stage):
    name = "minhash_dedup"
    # 2: text normalisation before shingling, all-pairs verify, `dup_count`; 3: 32-bit affine hash family
    # (other signatures, so a run made with 2 is not resumed with 3); 4: trailing whitespace trimmed before
    # the word split (pyarrow's split could add a word that depended on memory after the row)
    version = 4
    Params = MinhashParams
    reject_columns = {"dup_of": pa.string(), "dup_cluster_size": pa.int64()}

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict[str, Duplicates]:
        p: MinhashParams = self.params
        workdir = Path(ctx.workdir) / "buckets"
        shutil.rmtree(workdir, ignore_errors=True)
        n_parts = p.partitions or shuffle_partitions(shards, p.bands, ctx.n_workers())
        mapped = ctx.map(_bucket_map, [(ref, i, p, str(workdir), n_parts) for i, ref in enumerate(shards)])
        offsets = np.concatenate([[0], np.cumsum(mapped)]).astype(np.int64)
        if offsets[-1] >= 2**32:
            raise ValueError(f"minhash_dedup packs document numbers in 32 bits; {offsets[-1]:,} documents "
                             "is more: split the input")
        complete = p.verify_max_bucket if p.verify else 0
        reduced = ctx.map(_bucket_reduce, [(str(workdir / f"p{q:04d}"), offsets, complete) for q in range(n_parts)])
        shutil.rmtree(workdir, ignore_errors=True)
        codes = np.unique(np.concatenate([c for c, _ in reduced])) if reduced else np.zeros(0, np.uint64)
        big = [b for _, bs in reduced for b in bs]
        del reduced
        pairs = np.stack([(codes >> np.uint64(32)).astype(np.int64),
                          (codes & np.uint64(0xFFFFFFFF)).astype(np.int64)])
        del codes
        if p.verify and (pairs.shape[1] or big):
            pairs = self._verify(pairs, big, offsets, shards)
        return self._survivors(pairs, offsets, None, None, shards, ctx)

    def manifest_extra(self, state: dict[str, Duplicates]) -> dict:
        p: MinhashParams = self.params
        return {"normalize": p.normalize.model_dump(), "bands": p.bands, "rows": p.rows, "ngram": p.ngram,
                "verify_threshold": p.threshold if p.verify else None}

    def _verify(self, pairs: np.ndarray, big: list[np.ndarray], offsets: np.ndarray,
                shards: list[ShardRef]) -> np.ndarray:
        """The pairs whose exact shingle Jaccard reaches the threshold, plus the links leader rounds find
        inside the oversized buckets `big` (reads only the documents involved)."""
        docs = np.unique(np.concatenate([pairs.ravel(), *big]))
        shard_of = np.searchsorted(offsets, docs, side="right") - 1
        shingles: dict[int, set[int]] = {}
        for s in np.unique(shard_of).tolist():
            mine = docs[shard_of == s]
            texts = pq.read_table(shards[s].path, columns=["text"]).column("text").take(pa.array(mine - offsets[s]))
            hashes, starts = shingle_hashes(texts, self.params.ngram, self.params.normalize)
            for k, d in enumerate(mine.tolist()):
                shingles[d] = set(hashes[starts[k]:starts[k + 1]].tolist())

        def similar(a: int, b: int) -> bool:
            sa, sb = shingles[a], shingles[b]
            return len(sa & sb) / max(len(sa | sb), 1) >= self.params.threshold

        keep = [similar(a, b) for a, b in pairs.T.tolist()]
        linked = [pairs[:, np.asarray(keep, bool)]]
        for members in big:
            rest = members.tolist()
            while len(rest) > 1:  # the first unlinked member against the others, until none is left
                head, unlinked = rest[0], []
                for m in rest[1:]:
                    if similar(head, m):
                        linked.append(np.array([[head], [m]], np.int64))
                    else:
                        unlinked.append(m)
                rest = unlinked
        return np.concatenate(linked, axis=1)

    def _survivors(self, pairs: np.ndarray, offsets: np.ndarray, scores: list[np.ndarray] | None,
                   weights: list[np.ndarray] | None, shards: list[ShardRef],
                   ctx: Context | None = None) -> dict[str, Duplicates]:
        """Connected components of the candidate pairs (2, n_edges) of global document numbers, one
        survivor each by `keep`; a survivor's `dup_count` sums its component's weights (documents
        each member already stood for). scipy's connected_components: memory follows the duplicates,
        and so do the scores and weights: given per shard (every row) by a caller that has them, else
        fetched through `ctx` from the shards for the documents in a component only."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if pairs.shape[1] == 0:
            return {}
        nodes, inverse = np.unique(pairs.ravel(), return_inverse=True)  # only documents with a duplicate
        inverse = inverse.reshape(2, -1)
        graph = coo_matrix((np.ones(inverse.shape[1], np.int8), (inverse[0], inverse[1])),
                           shape=(len(nodes), len(nodes)))
        _, label = connected_components(graph, directed=False)
        shard_of = np.searchsorted(offsets, nodes, side="right") - 1
        row_of = nodes - offsets[shard_of]
        if scores is None or weights is None:
            present = np.unique(shard_of)  # nodes ascend, so each shard's rows are a run, ascending
            bounds = np.searchsorted(shard_of, np.append(present, len(shards)))
            fetched = ctx.map(_member_scores, [(shards[s], row_of[bounds[k]:bounds[k + 1]], self.params.keep)
                                               for k, s in enumerate(present.tolist())])
            score = np.concatenate([f[0] for f in fetched]).astype(np.float64)
            weight = np.concatenate([f[1] for f in fetched]).astype(np.int64)
        else:
            score = np.array([scores[s][r] for s, r in zip(shard_of.tolist(), row_of.tolist(), strict=True)],
                             np.float64)
            weight = np.array([weights[s][r] for s, r in zip(shard_of.tolist(), row_of.tolist(), strict=True)],
                              np.int64)
        order = np.lexsort((nodes, -score, label))  # per component: best score, then earliest document
        first = np.ones(len(order), bool)
        first[1:] = label[order][1:] != label[order][:-1]
        survivor_of_label = np.empty(label.max() + 1, np.int64)
        survivor_of_label[label[order[first]]] = order[first]
        size = np.bincount(label, weights=weight).astype(np.int64)
        loser = np.ones(len(nodes), bool)
        loser[order[first]] = False
        survivor = survivor_of_label[label]  # index into nodes
        survivor_id = np.empty(len(nodes), object)
        for s in np.unique(shard_of[order[first]]).tolist():
            idx = order[first][shard_of[order[first]] == s]
            ids = pq.read_table(shards[s].path, columns=["id"]).column("id").take(pa.array(row_of[idx]))
            survivor_id[idx] = ids.to_pylist()
        out = {}
        for s in np.unique(shard_of).tolist():
            idx = np.flatnonzero(loser & (shard_of == s))  # nodes are sorted, so rows ascend
            won = np.flatnonzero(~loser & (shard_of == s))
            out[shards[s].name] = Duplicates(row_of[idx].astype(np.int64), survivor_id[survivor[idx]].tolist(),
                                             size[label[idx]], row_of[won].astype(np.int64), size[label[won]])
        return out

    def shard_state(self, state: dict[str, Duplicates], ref: ShardRef) -> Duplicates | None:
        return state.get(ref.name)

    def apply(self, table: pa.Table, state: Duplicates | None) -> tuple[pa.Table, pa.Table]:
        return (state or Duplicates.none()).split(self, table, "near_duplicate")


def describe(params: MinhashParams) -> str:
    b, r = params.bands, params.rows
    probs = ", ".join(f"P({s})={candidate_probability(s, b, r):.2f}" for s in (0.5, 0.7, 0.8, 0.9))
    return f"minhash: {params.ngram}-grams, {b} bands x {r} rows = {b * r} hashes; {probs}; " \
           f"midpoint {math.pow(1 / b, 1 / r):.2f}"
