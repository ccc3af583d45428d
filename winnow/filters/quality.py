"""Model-based quality filtering: the part every classifier stage shares.

A quality stage (fasttext_quality, embedding_quality, perplexity_quality) supplies a scorer and a
way to train it; this base does the rest, as one `fit` and a cheap `apply`:

1. model: `model:` reuses a saved one by path; otherwise positives are read from `positives.paths`
   (less an id-hash slice kept for evaluation) and as many negatives are drawn from the input pool
   (the documents with the lowest seeded id hashes: the same sample however the pool is sharded),
   and the model is trained in one worker task and saved in the stage's folder.
2. scores: one Dask task per shard scores its rows (on the GPU worker when the cluster has one),
   writes them beside the fit state, and returns a percentile sketch (percentile.py).
3. cut: the sketches merge into corpus-wide keys for the band to keep: `band: [lo, hi]` keeps the
   rows between the score's lo and hi quantiles; `keep_top: 0.3` is [0.7, 1.0], or [0.0, 0.3] for
   perplexity, where low is good. `apply` then only reads a shard's scores and compares.
4. flat scores: when every score lies within FLAT_SPREAD of the others the model does not tell the
   documents apart and a cut would be noise, so the stage keeps every row and says so (manifest
   `flat_scores` and a warning naming what to change), unless `allow_flat_scores: true`.

No model trains on a document an evaluation uses: every training document (positives, negatives,
a DataRater's pool sample and target) lies outside `winnow eval`'s pool slice (`eval_pool_fraction`)
and outside the positives' own held-out slice (winnow.pipeline.documents.excluded_from_training).

Kept and rejected rows carry the score as a column; rejected rows say which side of the band
they fell on. The manifest records the model, the cut, and the FLOPs of training and scoring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from winnow.filters import percentile
from winnow.pipeline.documents import EVAL_POOL_FRACTION, excluded_from_training, id_hashes
from winnow.pipeline.shards import write_npy_atomic
from winnow.pipeline.stage import Context, ShardRef, Stage
from winnow.raters.scorer import Scorer

FIT_COST = ".fit.json"   # beside a trained model: its training FLOPs, charged again when a run reuses it
FLAT_SPREAD = 0.01       # every score within this of the others: the model ranks on noise, nothing is cut


class Positives(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] | None = Field(None, description="JSONL files/globs or a stage folder of high-quality documents")
    where: dict[str, Any] | None = Field(None, description="or: the pool's own rows whose columns hold these values "
                                         "({column: value or [values]}), e.g. {source: wikipedia}; negatives are "
                                         "then drawn from the other rows")
    max_docs: int | None = Field(20_000, gt=0, description="cap on positives read (the lowest seeded id hashes when "
                                 "`where` selects more)")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="id-hash slice of the positives never trained "
                                    "on: `winnow eval` and bench/quality.py evaluate on it")

    @model_validator(mode="after")
    def _one_source(self) -> Positives:
        if (self.paths is None) == (self.where is None):
            raise ValueError("positives: give exactly one of `paths` (files) and `where` (rows of the pool)")
        if self.where is not None and not self.where:
            raise ValueError("positives.where: name at least one column")
        return self


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="a saved model to reuse (path); null: train one on `positives`")
    positives: Positives | None = None
    negatives: int | None = Field(None, gt=0, description="pool documents drawn as negatives (default: as many "
                                  "as there are positives)")
    keep_top: float | None = Field(None, gt=0, le=1, description="fraction of the corpus kept, best scores first")
    band: tuple[float, float] | None = Field(None, description="[lo, hi]: keep the rows whose score lies between "
                                             "the corpus's lo and hi quantiles (0-1, ascending score)")
    device: str = Field("auto", description="auto: CUDA when present, else CPU")
    threads: int | None = Field(None, gt=0, description="CPU threads of a torch scorer (default: the worker's: 1)")
    seed: int = 0
    allow_flat_scores: bool = Field(False, description="cut even when every score lies within "
                                    f"{FLAT_SPREAD} (default: such a stage keeps every row: the cut would be noise)")
    eval_pool_fraction: float = Field(EVAL_POOL_FRACTION, ge=0, lt=0.5, description="`winnow eval`'s "
                                      "pool_heldout_fraction: the id-hash slice of the pool no model here trains on")
    positives_required: ClassVar[bool] = True   # a stage that trains without positives sets False

    @model_validator(mode="after")
    def _check(self) -> QualityParams:
        if (self.keep_top is None) == (self.band is None):
            raise ValueError("set exactly one of keep_top and band")
        if self.band is not None and not 0 <= self.band[0] < self.band[1] <= 1:
            raise ValueError(f"band must be [lo, hi] with 0 <= lo < hi <= 1, got {list(self.band)}")
        if self.model is None and self.positives is None and self.positives_required:
            raise ValueError("give `model` (a saved model) or `positives` (to train one)")
        return self

def where_mask(table: pa.Table, where: dict[str, Any], path: str) -> np.ndarray:
    """Rows whose every named column holds one of the given values (a null matches nothing).
    `table` holds the columns (`_read_for` checks that); `path` names the shard in errors."""
    import pyarrow.compute as pc

    mask = np.ones(table.num_rows, bool)
    for column, wanted in where.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        col = table.column(column)
        try:
            value_set = pa.array(values).cast(col.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"where: {values!r} do not fit column {column!r} of type {col.type} in {path}: "
                             f"{e}") from e
        mask &= np.asarray(pc.fill_null(pc.is_in(col, value_set=value_set, skip_nulls=True), False), bool)
    return mask


def _read_for(ref: ShardRef, where: dict[str, Any] | None) -> pa.Table:
    """id, text and the columns `where` names, of one shard."""
    columns = [c for c in (where or {}) if c not in ("id", "text")]
    names = pq.read_schema(ref.path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"where: {ref.path} has no column {missing[0]!r} (it has {names})")
    return pq.read_table(ref.path, columns=["id", "text", *columns])


def _sample_negatives(args: tuple) -> tuple[np.ndarray, list[str]]:
    """The rows of one shard whose seeded id hash is under `cutoff`, that `where` does not select as
    positives and that no evaluation holds out (`heldout`, `pool`: excluded_from_training's slices):
    (hashes, texts)."""
    ref, cutoff, seed, where, heldout, pool = args
    t = _read_for(ref, where)
    ids = t.column("id").to_pylist()
    h = id_hashes(ids, seed, purpose="negatives")
    chosen = (h < np.uint64(cutoff)) & ~np.fromiter((excluded_from_training(i, heldout, pool) for i in ids), bool,
                                                     len(ids))
    if where:
        chosen &= ~where_mask(t, where, ref.path)
    rows = np.flatnonzero(chosen)
    return h[rows], t.column("text").take(pa.array(rows, pa.int64())).to_pylist()


def _select_positives(args: tuple) -> tuple[np.ndarray, list[str], int]:
    """The rows of one shard that `where` selects, outside the held-out slice and `winnow eval`'s pool
    slice: (hashes, texts, rows selected in all); at most `limit` of them, the lowest hashes, so the
    driver holds no more than it keeps."""
    ref, where, heldout, pool, seed, limit = args
    t = _read_for(ref, where)
    ids = t.column("id").to_pylist()
    matched = np.flatnonzero(where_mask(t, where, ref.path))
    rows = np.array([r for r in matched if not excluded_from_training(ids[r], heldout, pool)], np.int64)
    h = id_hashes([ids[r] for r in rows], seed, purpose="positives")
    if limit is not None and len(rows) > limit:
        best = np.argsort(h, kind="stable")[:limit]
        rows, h = rows[best], h[best]
    return h, t.column("text").take(pa.array(rows, pa.int64())).to_pylist(), len(matched)


def _train(args: tuple) -> float:
    stage, positives, negatives, path = args
    return stage.train(positives, negatives, path)


def _score_shard(args: tuple) -> dict[str, Any]:
    stage, model, ref, out = args
    return stage.score_shard(model, ref, out)


class QualityStage(Stage):
    """Base of the classifier stages. Subclasses set `name`, `Params`, `score_column`, `model_file`
    and implement `scorer(model)` and `train(positives, negatives, path) -> training FLOPs`."""

    Params = QualityParams
    score_column: str = "quality_score"
    model_file: str = "model"
    higher_is_better: bool = True
    needs_negatives: bool = True

    def scorer(self, model: str) -> Scorer:
        raise NotImplementedError

    def train(self, positives: list[str], negatives: list[str], path: str) -> float:
        raise NotImplementedError

    def trained_model_path(self, ctx: Context) -> Path:
        """Where `fit` trains this stage's model (`model_file` in the stage folder)."""
        return Path(ctx.workdir).parent / self.model_file

    # fit: model, scores, cut
    def fit(self, shards: list[ShardRef], ctx: Context) -> dict[str, Any]:
        p = self.params
        gpu = ctx.gpu_resources()
        facts: dict[str, Any] = {"training_flops": 0.0, "scoring_flops": 0.0}
        rows = sum(pq.ParquetFile(ref.path).metadata.num_rows for ref in shards)
        if rows == 0:  # earlier stages kept nothing
            return {"model": p.model, "cut": {"lo": None, "hi": None}, "scores": {}, "documents": 0, "cdf": ([], []),
                    **facts}
        if p.model is not None:
            model = p.model
            if not os.path.exists(model):
                raise FileNotFoundError(f"{self.name}: model {model!r} does not exist")
            if os.path.exists(model + FIT_COST):  # what training this model cost when another run fit it
                facts["reused_model_training_flops"] = json.loads(Path(model + FIT_COST).read_text())["training_flops"]
        else:
            pos, neg = self.training_texts(shards, rows, ctx)
            model = str(self.trained_model_path(ctx))
            texts = ctx.client.scatter([pos, neg])  # tens of MB: sent once as data, not inside the task graph
            facts["training_flops"] = ctx.map(_train, [(self, *texts, model)], resources=gpu)[0]
            facts.update(positives=len(pos), negatives=len(neg))
            Path(model + FIT_COST).write_text(json.dumps({"training_flops": facts["training_flops"]}))
        model = self.scoring_model(model, shards, rows, ctx, facts)
        score_dir = Path(ctx.workdir) / "scores"
        score_dir.mkdir(parents=True, exist_ok=True)
        paths = {ref.name: str(score_dir / f"{ref.name}.{ref.fingerprint[:16]}.npy") for ref in shards}
        results = ctx.map(_score_shard, [(self, model, ref, paths[ref.name]) for ref in shards], resources=gpu)
        merged = percentile.merge([r["sketch"] for r in results])
        lo, hi = self.kept_band()
        cut = {"lo": percentile.key_at(merged, lo), "hi": percentile.key_at(merged, hi)}
        finite = [r["range"] for r in results if r["range"]]
        facts["scoring_flops"] = float(sum(r["flops"] for r in results))
        state = {"model": model, "cut": cut, "scores": paths, "documents": merged.rows, **facts,
                 "cdf": percentile.cdf(merged),
                 "score_range": [min(a for a, _ in finite), max(b for _, b in finite)] if finite else None}
        spread = state["score_range"][1] - state["score_range"][0] if finite else 0.0   # no finite score: no order
        if spread < FLAT_SPREAD:
            kept_all = not p.allow_flat_scores
            if kept_all:
                state["cut"] = {"lo": None, "hi": None}
            state["flat_scores"] = {"spread": float(spread), "kept_all": kept_all,
                                    "message": self.flat_message(state, spread, kept_all)}
        return state

    def scoring_model(self, model: str, shards: list[ShardRef], rows: int, ctx: Context, facts: dict) -> str:
        """The model that scores the corpus, given the trained (or reused) one: the same by default; a stage
        may put a cheaper one in its place (the DataRater's `distill`), adding what that cost to `facts`."""
        return model

    def flat_message(self, state: dict, spread: float, kept_all: bool) -> str:
        """What the manifest and the funnel say about flat scores: the spread, what the stage did, and
        what to change (`flat_advice`, naming this config's values)."""
        where = "every score is missing" if state["score_range"] is None else \
            "every {} lies in [{:.6g}, {:.6g}]".format(self.score_column, *state["score_range"])
        did = (f"the stage kept all {state['documents']:,} documents (a cut would be noise; allow_flat_scores: "
               "true cuts anyway)") if kept_all else "allow_flat_scores: true, so the stage cut on noise"
        return f"{where} (spread {spread:.3g} < {FLAT_SPREAD}): {did}. {self.flat_advice(state)}"

    def flat_advice(self, state: dict) -> str:
        """Why the scores may be flat and what to change; subclasses name their own settings."""
        if "positives" not in state:
            return f"The model {state['model']} does not tell these documents apart: train one on this corpus."
        return (f"The model trained on {state['positives']:,} positives and {state.get('negatives', 0):,} "
                f"negatives barely separates them: give more (or more distinct) positives than {state['positives']:,}.")

    def training_texts(self, shards: list[ShardRef], rows: int, ctx: Context) -> tuple[list[str], list[str]]:
        """(positives, negatives) to train on: the positives less their held-out slice, and as many pool
        documents (or `negatives`) by seeded id hash."""
        p = self.params
        pos, matched = self.read_positives(p.positives, shards, ctx, "positives")
        neg = self._negatives(shards, rows - matched, p.negatives or len(pos), ctx, p.positives.where,
                              p.positives.heldout_fraction) if self.needs_negatives else []
        return pos, neg

    def read_positives(self, spec: Positives, shards: list[ShardRef], ctx: Context,
                       key: str) -> tuple[list[str], int]:
        """(the texts `spec` names less its held-out slice and `winnow eval`'s pool slice, how many pool
        rows it selects in all): from its files (0 pool rows), or from the pool's own rows its `where`
        selects (the lowest seeded id hashes first, so sharding does not change them)."""
        from winnow.pipeline.documents import read_documents

        pool = self.params.eval_pool_fraction
        if spec.where:
            parts = ctx.map(_select_positives, [(ref, spec.where, spec.heldout_fraction, pool, self.params.seed,
                                                 spec.max_docs) for ref in shards])
            hashes = np.concatenate([h for h, _, _ in parts]) if parts else np.zeros(0, np.uint64)
            texts = [t for _, ts, _ in parts for t in ts]
            chosen = [texts[i] for i in np.argsort(hashes, kind="stable")[:spec.max_docs]]
            if not chosen:
                raise ValueError(f"{self.name}: {key}.where {spec.where} selects no row of the pool outside "
                                 "its held-out slice")
            return chosen, sum(m for _, _, m in parts)
        # one id-hash slice holds both held-out sets (excluded_from_training): the larger covers the other
        _, chosen = read_documents(spec.paths, spec.max_docs, f"{self.name}/{key}/paths",
                                   max(spec.heldout_fraction, pool), "train")
        if not chosen:
            raise ValueError(f"{self.name}: no {key} left in {spec.paths}")
        return chosen, 0

    def kept_band(self) -> tuple[float, float]:
        """The quantiles of the score to keep between; `keep_top` counts from the good end."""
        p = self.params
        if p.keep_top is None:
            return tuple(p.band)
        return (1 - p.keep_top, 1.0) if self.higher_is_better else (0.0, p.keep_top)

    def _negatives(self, shards: list[ShardRef], rows: int, n: int, ctx: Context,
                   where: dict[str, Any] | None = None, heldout: float = 0.0) -> list[str]:
        """`n` texts of the pool's `rows` (those `where` does not select as positives), the lowest seeded
        id hashes whatever the sharding, none in an evaluation's slice: `winnow eval`'s pool slice, or
        the positives' held-out slice `heldout` (a positive may also sit in the pool under its id)."""
        if rows <= 0:
            raise ValueError(f"{self.name}: `where` selects every row of the pool: no negatives are left")
        # oversample, then take the n lowest hashes; short by chance: once more, over the whole pool
        for fraction in dict.fromkeys((min(1.0, 1.5 * n / rows), 1.0)):
            cutoff = min(2**64 - 1, int(fraction * 2**64))
            parts = ctx.map(_sample_negatives, [(ref, cutoff, self.params.seed, where, heldout,
                                                 self.params.eval_pool_fraction) for ref in shards])
            hashes = np.concatenate([h for h, _ in parts])
            if len(hashes) >= n:
                break
        texts = [t for _, ts in parts for t in ts]
        return [texts[i] for i in np.argsort(hashes, kind="stable")[:n]]

    def score_shard(self, model: str, ref: ShardRef, out: str) -> dict[str, Any]:
        """Score one shard and save the scores at `out`; its sketch, FLOPs and finite score range."""
        scorer = self.scorer(model)
        table = pq.read_table(ref.path, columns=["id", "text"])
        scores = np.asarray(self.score_table(scorer, ref, table), np.float64)
        write_npy_atomic(scores, out)
        finite = scores[np.isfinite(scores)]
        return {"sketch": percentile.sketch(scores, percentile.id_hashes(table.column("id").to_pylist())),
                "flops": scorer.flops,
                "range": (float(finite.min()), float(finite.max())) if len(finite) else None}

    def score_table(self, scorer: Scorer, ref: ShardRef, table: pa.Table) -> np.ndarray:
        return scorer.score(table.column("text").to_pylist())

    # apply: compare with the cut
    def manifest_extra(self, state: dict) -> dict:
        lo, hi = self.kept_band()
        extra = {k: state[k] for k in ("model", "documents", "training_flops", "reused_model_training_flops",
                                       "scoring_flops", "score_range", "positives", "negatives") if k in state} | {
            "band": [lo, hi], "score_column": self.score_column,
            "cut": {k: None if v is None else {"score": v[0] if np.isfinite(v[0]) else str(v[0]), "id_hash": v[1]}
                    for k, v in state["cut"].items()}}
        if "flat_scores" in state:   # the funnel prints `warnings`; the report reads `flat_scores`
            extra["flat_scores"] = state["flat_scores"]
            extra["warnings"] = [state["flat_scores"]["message"]]
        return extra

    def shard_state(self, state: dict, ref: ShardRef) -> dict:
        return {"cut": state["cut"], "scores": state["scores"][ref.name],
                "keep_all": state.get("flat_scores", {}).get("kept_all", False)}

    def with_scores(self, table: pa.Table, scores: np.ndarray) -> pa.Table:
        """`table` with the score column set (replaced when an earlier stage of the same kind scored it)."""
        column = pa.array(scores, pa.float64())
        if self.score_column in table.column_names:
            return table.set_column(table.column_names.index(self.score_column), self.score_column, column)
        return table.append_column(self.score_column, column)

    def apply(self, table: pa.Table, state: dict) -> tuple[pa.Table, pa.Table]:
        scores = np.load(state["scores"])
        if len(scores) != table.num_rows:
            raise ValueError(f"{state['scores']} holds {len(scores)} scores for {table.num_rows} rows: "
                             "rerun with --force")
        hashes = percentile.id_hashes(table.column("id").to_pylist())
        above_lo = percentile.at_or_above(scores, hashes, state["cut"]["lo"])
        hi = state["cut"]["hi"]
        below_hi = np.ones(len(scores), bool) if hi is None else ~percentile.at_or_above(scores, hashes, hi)
        table = self.with_scores(table, scores)
        keep = above_lo & below_hi
        reasons = np.where(~above_lo, f"{self.score_column}_below_band",
                           np.where(~below_hi, f"{self.score_column}_above_band", ""))
        dropped = np.flatnonzero(~keep)
        rejected = self.reject(table.take(pa.array(dropped, pa.int64())), reasons[dropped].tolist())
        return table.filter(pa.array(keep)), rejected
