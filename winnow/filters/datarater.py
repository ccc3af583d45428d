"""`datarater`: filter by a DataRater meta-learned through a proxy LM's own updates (Calian et al. 2025).

    - datarater:
        target: {paths: ["../shared/data/reference/**/*.jsonl"]}   # optional: what to train faster on
        keep_top: 0.75                # discard the lowest-rated 25% of the corpus
        meta: {meta_steps: 200}       # winnow.raters.datarater.MetaConfig fields

`fit` meta-trains a rater (raters/datarater.py) in one worker task (the GPU worker when there is
one) on `pool_docs` documents drawn from the input pool by seeded id hash, or loads one with
`model: PATH` (a folder this stage wrote). The outer objective is the `target` documents when
given (they never feed the inner models), otherwise a held-out id-hash slice of the pool sample
(`outer_fraction`: the paper's setting, "train faster on this distribution"). Every row is then
scored; `datarater_score` (raw score, higher = better) lands on kept and rejected rows, and
`keep_top`/`band` cut at corpus-wide percentiles like the other quality stages.

`acceptance: oversample` applies the paper's deployment rule instead of a hard cut: a batch of N
kept documents is formed by drawing B = N / keep_top and keeping the best N, which keeps a document
whose score sits at corpus quantile p with probability P = sum_{s<N} C(B-1, s) (1-p)^s p^(B-1-s);
the draw per document is a seeded id hash, so the result is deterministic and independent of sharding.

The manifest records meta-training FLOPs (`training_flops`, one-off), scoring FLOPs, meta-steps and
the meta-loss curve, and `uniform_control: {weighted_outer_loss, uniform_outer_loss, delta}`: at every
meta-step each inner model also takes the same updates with uniform weights from the same state on the
same batches, and the outer losses after the two are compared (means over the second half of
meta-training; delta = weighted - uniform, negative when the rater's weights help). A delta near 0
says the rater changes nothing about training at this scale, whatever it separates. Measured on a planted pool (tests/test_datarater.py): a clean target gives
ROC AUC >= 0.95 clean vs corrupted; the pool's own held-out slice as the outer set was unstable at
CPU scale (bench/LOG.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from winnow.filters.quality import Positives, QualityParams, QualityStage
from winnow.pipeline.documents import id_unit
from winnow.pipeline.stage import Context, ShardRef
from winnow.raters.datarater_scorer import HISTORY, DataRaterScorer, train_datarater


class DataRaterParams(QualityParams):
    positives_required: ClassVar[bool] = False
    target: Positives | None = Field(None, description="documents to train faster on (the outer objective); "
                                     "null: a held-out id-hash slice of the pool")
    pool_docs: int = Field(1000, gt=1, description="pool documents drawn (seeded id hash) to meta-train on")
    outer_fraction: float = Field(0.2, gt=0, lt=1, description="without a target: the share of the pool "
                                  "sample held out as the outer set")
    vocab_size: int = Field(2048, ge=260, description="the rater's BPE, trained on the sample")
    meta: dict[str, Any] = Field(default_factory=dict, description="MetaConfig overrides (meta_steps, n_models, "
                                 "unroll, seq_len, inner_d, first_order, ...)")
    max_chunks: int | None = Field(8, gt=0, description="rater-context chunks scored per document (its start)")
    acceptance: Literal["percentile", "oversample"] = Field("percentile", description="percentile: a hard "
                                                            "cut at the band; oversample: the paper's top-N-of-B rule")
    oversample_batch: int = Field(128, gt=0, description="N, the kept batch of the oversample rule")

    @model_validator(mode="after")
    def _datarater(self) -> DataRaterParams:
        if self.positives is not None:
            raise ValueError("the datarater trains without positives: name what to train faster on as `target`")
        if self.acceptance == "oversample" and self.keep_top is None:
            raise ValueError("acceptance: oversample needs keep_top (the kept fraction 1 - rho)")
        return self


def thinned(curve: list[float], points: int = 50) -> list[float]:
    """About `points` means of consecutive steps: the manifest keeps the curve's shape, not every step."""
    every = max(1, len(curve) // points)
    return [round(float(np.mean(curve[i:i + every])), 4) for i in range(0, len(curve), every)]


def acceptance_probability(p: np.ndarray, kept: int, drawn: int) -> np.ndarray:
    """P(a document at quantile p is among the best `kept` of `drawn` documents drawn with it):
    fewer than `kept` of the other drawn-1 score above it (ALGORITHMS.md section 1, step 8)."""
    from scipy.stats import binom

    return binom.cdf(kept - 1, drawn - 1, 1.0 - np.clip(p, 0.0, 1.0))


class DataRaterStage(QualityStage):
    name = "datarater"
    Params = DataRaterParams
    score_column = "datarater_score"
    model_file = "datarater"

    def scorer(self, model: str) -> DataRaterScorer:
        p = self.params
        return DataRaterScorer(model, p.device, p.max_chunks, p.threads)

    def training_texts(self, shards: list[ShardRef], rows: int, ctx: Context) -> tuple[list[str], list[str]]:
        """(target, pool sample): the pool sample comes in seeded id-hash order, so its tail is an id-hash slice."""
        p = self.params
        target, matched = self.read_positives(p.target, shards, ctx, "target") if p.target is not None else ([], 0)
        return target, self._negatives(shards, rows - matched, min(p.pool_docs, rows - matched), ctx,
                                       p.target.where if p.target is not None else None,
                                       p.target.heldout_fraction if p.target is not None else 0.0)

    def train(self, positives: list[str], negatives: list[str], path: str) -> float:
        p = self.params
        summary = train_datarater(negatives, positives, path, p.meta, p.vocab_size, p.outer_fraction,
                                  seed=p.seed, device=p.device, threads=p.threads, log=lambda *a: None)
        return float(summary["flops"]["total"])

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict[str, Any]:
        state = super().fit(shards, ctx)
        history = Path(state["model"] or "") / HISTORY
        if state["model"] and history.exists():
            h = json.loads(history.read_text())
            state["meta"] = {"steps": h["meta_steps"], "outer": h["outer"], "inner_documents": h["inner_documents"],
                             "outer_documents": h["outer_documents"], "meta_loss": thinned(h["meta_loss"]),
                             "uniform_outer_loss": thinned(h.get("uniform_outer_loss", [])),
                             "scoring_flops_per_token": h["scoring_flops_per_token"]}
            if h.get("uniform_control"):
                state["uniform_control"] = h["uniform_control"]
        return state

    def flat_advice(self, state: dict) -> str:
        if "positives" not in state and "negatives" not in state:
            return super().flat_advice(state)
        from winnow.raters.datarater import MetaConfig  # torch: imported only where a rater is at hand

        p = self.params
        steps = p.meta.get("meta_steps", MetaConfig.meta_steps)
        return (f"The rater meta-trained {steps} steps on {state['negatives']:,} pool documents gives every document "
                f"nearly the same score: raise meta.meta_steps above {steps}, or pool_docs above {p.pool_docs}.")

    def manifest_extra(self, state: dict) -> dict:
        extra = super().manifest_extra(state)
        if "meta" in state:
            extra["meta"] = state["meta"]
        if "uniform_control" in state:
            extra["uniform_control"] = state["uniform_control"]
        extra["acceptance"] = self.params.acceptance
        return extra

    def shard_state(self, state: dict, ref: ShardRef) -> dict:
        out = super().shard_state(state, ref)
        if self.params.acceptance == "oversample":
            out["cdf"] = state["cdf"]
        return out

    def apply(self, table: pa.Table, state: dict) -> tuple[pa.Table, pa.Table]:
        if self.params.acceptance == "percentile" or state["keep_all"]:   # flat scores: no cut (quality.py)
            return super().apply(table, state)
        p = self.params
        scores = np.load(state["scores"])
        if len(scores) != table.num_rows:
            raise ValueError(f"{state['scores']} holds {len(scores)} scores for {table.num_rows} rows: rerun with --force")
        ranks, values = state["cdf"]
        quantile = np.interp(np.nan_to_num(scores, nan=-np.inf), values, ranks, left=0.0, right=1.0)
        drawn = int(round(p.oversample_batch / p.keep_top))
        accept = acceptance_probability(quantile, p.oversample_batch, drawn)
        draw = id_unit(table.column("id").to_pylist(), p.seed, purpose="datarater_accept")
        keep = draw < accept
        table = self.with_scores(table, scores)
        dropped = np.flatnonzero(~keep)
        rejected = self.reject(table.take(pa.array(dropped, pa.int64())), ["datarater_not_accepted"] * len(dropped))
        return table.filter(pa.array(keep)), rejected

