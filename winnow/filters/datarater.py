"""`datarater`: filter by a DataRater meta-learned through a proxy LM's own updates (Calian et al. 2025).

    - datarater:
        target: {paths: ["../shared/data/reference/**/*.jsonl"]}   # optional: what to train faster on
        keep_top: 0.75                # discard the lowest-rated 25% of the corpus
        meta: {meta_steps: 100}       # winnow.raters.datarater_config.MetaConfig fields

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

`distill: fasttext` scores the corpus at fastText's cost instead of the rater's: the rater rates its
own pool sample, a fastText classifier (DCLM's recipe) learns its top vs its bottom `distill_fraction`
on the first 80% of that sample, and the classifier's P(top) is `datarater_score`. The manifest's
`distill` says how far the two rankings agree on the last 20% (Spearman, and the overlap of the kept
top at this stage's keep fraction); the rating and the classifier's training count as fit FLOPs.

The manifest records meta-training FLOPs (`training_flops`, one-off), scoring FLOPs, meta-steps and
the meta-loss curve, and `uniform_control: {weighted_outer_loss, uniform_outer_loss, delta}`: at every
meta-step of the second half of meta-training (`meta.control_tail`) each inner model also takes the same
updates with uniform weights from the same state on the same batches, and the outer losses after the two
are compared (means over those steps; delta = weighted - uniform, negative when the rater's weights
help). A delta near 0
says the rater changes nothing about training at this scale, whatever it separates. Measured on a planted pool (tests/test_datarater.py): a clean target gives
ROC AUC >= 0.95 clean vs corrupted; the pool's own held-out slice as the outer set was unstable at
CPU scale (bench/LOG.md).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator, model_validator

from winnow.filters.quality import Positives, QualityParams, QualityStage
from winnow.pipeline import fit_progress
from winnow.pipeline.documents import id_unit
from winnow.pipeline.errors import KeyedValueError
from winnow.pipeline.stage import Context, ShardRef
from winnow.raters.datarater_config import MetaConfig
from winnow.raters.datarater_scorer import CHECKPOINTS, GPU_META, HISTORY, DataRaterScorer, train_datarater
from winnow.raters.fasttext_rater import FastTextScorer, fasttext_training_flops, train_fasttext

DISTILLED = "distilled_fasttext.bin"   # the classifier `distill: fasttext` trains, in the stage folder


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
    distill: Literal["fasttext"] | None = Field(None, description="fasttext: score the corpus with a fastText "
                                                 "classifier trained on the rater's best vs worst scores over its "
                                                 "pool sample (fastText's cost per document instead of the rater's)")
    distill_fraction: float = Field(0.3, gt=0, le=0.5, description="with distill: the top and the bottom fraction "
                                    "of the rated sample that are the classifier's two classes")

    @classmethod
    def accepted_keys(cls, field: str) -> list[str] | None:
        """`meta:` takes MetaConfig's fields; the config loader reports any other key at its own line."""
        return sorted(f.name for f in fields(MetaConfig)) if field == "meta" else None

    @field_validator("meta")
    @classmethod
    def _meta(cls, meta: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Meta-training's settings are checked here (`winnow validate`), not first in a worker after ingest,
        over the defaults of where the fit runs: a GPU worker's (GPU_META) differ. With `device: auto` that is
        known only at fit time, so a block valid over either set passes here (the fit checks it again)."""
        device = str(meta.get("device", info.data.get("device", "auto")))
        defaults = [{}] if device == "cpu" else [GPU_META] if device.startswith("cuda") else [{}, GPU_META]
        errors = []
        for base in defaults:
            try:
                MetaConfig.from_overrides(meta, **base)
                return meta
            except KeyedValueError as e:
                errors.append(e)
        raise errors[0]

    @model_validator(mode="after")
    def _datarater(self) -> DataRaterParams:
        if self.positives is not None:
            raise ValueError("the datarater trains without positives: name what to train faster on as `target`")
        if self.acceptance == "oversample" and self.keep_top is None:
            raise ValueError("acceptance: oversample needs keep_top (the kept fraction 1 - rho)")
        return self


def thinned(curve: list[float | None], points: int = 50) -> list[float | None]:
    """About `points` means of consecutive steps: the manifest keeps the curve's shape, not every step.
    Steps without a value (None: the uniform control before its `control_tail`) stay None."""
    values = np.asarray([np.nan if v is None else v for v in curve], np.float64)
    every = max(1, len(values) // points)
    chunks = (values[i:i + every] for i in range(0, len(values), every))
    return [round(float(c[np.isfinite(c)].mean()), 4) if np.isfinite(c).any() else None for c in chunks]


def acceptance_probability(p: np.ndarray, kept: int, drawn: int) -> np.ndarray:
    """P(a document at quantile p is among the best `kept` of `drawn` documents drawn with it):
    fewer than `kept` of the other drawn-1 score above it (ALGORITHMS.md section 1, step 8)."""
    from scipy.stats import binom

    return binom.cdf(kept - 1, drawn - 1, 1.0 - np.clip(p, 0.0, 1.0))


def _distill(args: tuple) -> dict[str, Any]:
    stage, model, sample, path = args
    return stage.distill_into(model, sample, path)


class DataRaterStage(QualityStage):
    name = "datarater"
    Params = DataRaterParams
    score_column = "datarater_score"
    model_file = "datarater"

    def __getstate__(self) -> dict[str, Any]:
        # the pool sample kept for `distill` stays on the driver: this object is pickled into every task
        return {k: v for k, v in self.__dict__.items() if k != "_pool_sample"}

    def scorer(self, model: str) -> DataRaterScorer | FastTextScorer:
        p = self.params
        if model.endswith(DISTILLED):
            return FastTextScorer(model)
        return DataRaterScorer(model, p.device, p.max_chunks, p.threads)

    def scoring_model(self, model: str, shards: list[ShardRef], rows: int, ctx: Context, facts: dict) -> str:
        if self.params.distill is None:
            return model
        # the pool sample the rater meta-trained on (read here when the rater was reused with `model:`)
        sample = getattr(self, "_pool_sample", None) or self.training_texts(shards, rows, ctx)[1]
        path = str(Path(ctx.workdir).parent / DISTILLED)
        report = ctx.map(_distill, [(self, model, ctx.client.scatter(sample), path)], resources=ctx.gpu_resources())[0]
        facts["training_flops"] += report.pop("flops")      # rating the sample and training the classifier
        facts["distill"] = {"rater": model, **report}
        return path

    def distill_into(self, rater: str, sample: list[str], path: str) -> dict[str, Any]:
        """Rate `sample` with the rater in folder `rater`, train fastText on the top vs the bottom
        `distill_fraction` of its first 80% (seeded id-hash order, so a slice), save it at `path`, and
        measure on the last 20% how the classifier's ranking agrees with the rater's."""
        from scipy.stats import spearmanr

        p = self.params
        rated = DataRaterScorer(rater, p.device, p.max_chunks, p.threads)
        scores = rated.score(sample)
        cut = int(round(0.8 * len(sample)))
        order = np.argsort(scores[:cut], kind="stable")
        k = max(1, int(p.distill_fraction * cut))
        best, worst = [sample[i] for i in order[-k:]], [sample[i] for i in order[:k]]
        train_fasttext(best, worst, path, p.seed)
        flops = rated.flops + fasttext_training_flops(best + worst)
        held_rater, held = scores[cut:], FastTextScorer(path)
        held_fasttext = held.score(sample[cut:])
        keep = p.keep_top if p.keep_top is not None else 1 - p.band[0]
        top = max(1, int(round(keep * len(held_rater))))
        both = len(set(np.argsort(held_rater)[-top:]) & set(np.argsort(held_fasttext)[-top:]))
        return {"model": "fasttext", "rated_documents": len(sample), "trained_on": 2 * k, "agreement_documents":
                len(held_rater), "spearman": round(float(spearmanr(held_rater, held_fasttext).statistic), 4),
                "top_overlap": round(both / top, 4), "flops": float(flops + held.flops)}

    def training_texts(self, shards: list[ShardRef], rows: int, ctx: Context) -> tuple[list[str], list[str]]:
        """(target, pool sample): the pool sample comes in seeded id-hash order, so its tail is an id-hash slice."""
        p = self.params
        target, matched = self.read_positives(p.target, shards, ctx, "target") if p.target is not None else ([], 0)
        self._pool_sample = self._negatives(shards, rows - matched, min(p.pool_docs, rows - matched), ctx,
                                       p.target.where if p.target is not None else None,
                                       p.target.heldout_fraction if p.target is not None else 0.0)
        return target, self._pool_sample

    def train(self, positives: list[str], negatives: list[str], path: str) -> float:
        p = self.params
        summary = train_datarater(negatives, positives, path, p.meta, p.vocab_size, p.outer_fraction,
                                  seed=p.seed, device=p.device, threads=p.threads,
                                  log=functools.partial(fit_progress.report, path))   # on the driver's console
        return float(summary["flops"]["total"])

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict[str, Any]:
        if ctx.force:   # meta-training resumes from its checkpoint, even a finished one: --force trains afresh
            shutil.rmtree(self.trained_model_path(ctx) / CHECKPOINTS, ignore_errors=True)
        state = super().fit(shards, ctx)
        rater = state.get("distill", {}).get("rater", state["model"])
        history = Path(rater or "") / HISTORY
        if rater and history.exists():
            h = json.loads(history.read_text())
            state["meta"] = {"steps": h["meta_steps"], "averaged_steps": h.get("averaged_steps", 0),
                             "outer": h["outer"], "inner_documents": h["inner_documents"],
                             "outer_documents": h["outer_documents"], "meta_loss": thinned(h["meta_loss"]),
                             "uniform_outer_loss": thinned(h.get("uniform_outer_loss", [])),
                             "scoring_flops_per_token": h["scoring_flops_per_token"]}
            if h.get("uniform_control"):
                state["uniform_control"] = h["uniform_control"]
        return state

    def flat_advice(self, state: dict) -> str:
        if "positives" not in state and "negatives" not in state:
            return super().flat_advice(state)
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
        if "distill" in state:
            extra["distill"] = state["distill"]
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

