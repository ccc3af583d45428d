"""Q-Tuning as published: every training batch scored by the model being tuned, then pruned, then stepped.

The `prune` stage (filters/prune.py) decides once, with a fixed reference model, before training.
The paper (Wang et al. 2025, Algorithm 1) re-scores each mini-batch with the *current* model: a
no-grad forward gives each sample's perplexity and mean predictive entropy over its response
targets and each target's NLL; the quadrant rule of raters/eu_plane.py (the stage's own `select`)
keeps Q2 ∪ Q4 (topped up from Q1 ∪ Q3 towards `r_sample`), and Q2 samples keep the `r_token`
share of their targets (eu_plane.kept_tokens, the stage's own rule). The step then trains on that.

Here a sample is a document (a segment of a packed row): its targets are the positions whose
loss_mask is 1 (the response; prompts are masked by `tokenize`). Pruning is a loss mask (ALGORITHMS.md:
physically deleting tokens would change the context of the rest), so a step still computes every
row; the scoring forward costs a third of a training step's FLOPs and is counted in `scoring_flops`.
`selection: random` keeps the same number of documents per batch, drawn at random, whole: the control.

    selector = DynamicSelector(DynamicParams(r_sample=0.25, r_token=0.5))
    result = train(cfg, vocab, rows, evals, select_batch=selector)    # winnow.proxy.train
    selector.summary()      # documents and targets seen and kept, per source when rows name sources
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from winnow.proxy.model import ProxyLM
from winnow.raters.eu_plane import QUADRANT_NAMES, kept_tokens, select


@dataclass
class DynamicParams:
    r_sample: float = 0.25          # share of a batch's documents kept
    r_token: float = 0.5            # share of targets kept inside Q2 documents
    lam: float = 0.5                # neighbour weight in a token's score
    token_rule: str = "lowest"      # eu_plane.kept_tokens: lowest (the paper) or highest (reversed)
    selection: str = "qtuning"      # qtuning | random (same count of documents, whole, at random)
    intra_doc: bool = True          # as the trainer's TrainConfig.intra_doc
    seed: int = 0


@dataclass
class BatchScores:
    """Per document of a batch: its (row, segment), mean NLL, mean entropy and target positions."""

    rows: np.ndarray                 # (D,) row of the batch
    segments: np.ndarray             # (D,) segment id in that row
    mean_nll: np.ndarray             # (D,)
    mean_entropy: np.ndarray         # (D,)
    positions: list[np.ndarray]      # per document, its target positions in the (T-1) target axis, in order
    nll: list[np.ndarray]            # per document, the NLL of each of those targets


@torch.no_grad()
def score_batch(model: ProxyLM, batch: dict[str, torch.Tensor], intra_doc: bool = True) -> BatchScores:
    """A gradient-free forward of the current model (eval mode): per-target NLL and full-vocabulary
    entropy, grouped by document over the targets where loss_mask is 1."""
    was_training = model.training
    model.eval()
    logits = model(batch["input_ids"], batch["segment_ids"] if intra_doc else None,
                   batch["position_ids"] if intra_doc else None)
    model.train(was_training)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = batch["input_ids"][:, 1:]
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1).cpu().numpy()
    ent = -(logp.exp() * logp).sum(-1).cpu().numpy()
    weights = batch["loss_mask"][:, 1:].cpu().numpy() > 0
    segments = batch["segment_ids"][:, 1:].cpu().numpy()     # the document of each predicted token
    rows, segs, m_nll, m_ent, positions, nlls = [], [], [], [], [], []
    for r in range(weights.shape[0]):
        for s in np.unique(segments[r][weights[r]]):
            where = np.flatnonzero(weights[r] & (segments[r] == s))
            rows.append(r)
            segs.append(int(s))
            m_nll.append(float(nll[r, where].mean()))
            m_ent.append(float(ent[r, where].mean()))
            positions.append(where)
            nlls.append(nll[r, where].astype(np.float64))
    return BatchScores(np.asarray(rows, np.int64), np.asarray(segs, np.int64), np.asarray(m_nll),
                       np.asarray(m_ent), positions, nlls)


@dataclass
class DynamicSelector:
    """The per-step hook for winnow.proxy.train.train: scores, selects, and returns the batch with its
    loss_mask narrowed to the kept documents and tokens. Keeps running counts for the report."""

    params: DynamicParams = field(default_factory=DynamicParams)
    flops_per_scored_position: float = 0.0   # forward FLOPs per row position (flops_per_token / 3)
    scoring_flops: float = 0.0
    counts: dict = field(default_factory=dict)
    history: list = field(default_factory=list)   # per step: {source: (documents, kept)} when rows name sources

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.params.seed)

    def decide(self, scores: BatchScores) -> tuple[np.ndarray, np.ndarray]:
        """(quadrant, kept) per document of the batch: the stage's rule, or random at the same count."""
        p = self.params
        n = len(scores.rows)
        if n == 0:
            return np.zeros(0, np.int8), np.zeros(0, bool)
        quadrant, kept = select(np.exp(np.minimum(scores.mean_nll, 700.0)), scores.mean_entropy, p.r_sample)
        if p.selection == "random":
            kept = np.zeros(n, bool)
            kept[self._rng.choice(n, int(round(p.r_sample * n)), replace=False)] = True
        elif p.selection != "qtuning":
            raise ValueError(f"selection must be qtuning or random, not {p.selection!r}")
        return quadrant, kept

    def __call__(self, model: ProxyLM, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.params
        scores = score_batch(model, batch, p.intra_doc)
        self.scoring_flops += self.flops_per_scored_position * batch["input_ids"].numel()
        quadrant, kept = self.decide(scores)
        mask = np.zeros(tuple(batch["loss_mask"][:, 1:].shape), np.float32)
        targets_kept = 0
        for d in np.flatnonzero(kept):
            where = scores.positions[d]
            if p.selection == "qtuning" and quadrant[d] == 2:   # Q2: only the r_token share of its targets
                where = where[kept_tokens(scores.nll[d], p.r_token, p.lam, p.token_rule)]
            mask[scores.rows[d], where] = 1.0
            targets_kept += len(where)
        self._count(batch, scores, quadrant, kept, targets_kept)
        loss_mask = batch["loss_mask"].clone()
        loss_mask[:, 1:] = torch.from_numpy(mask).to(loss_mask.device)
        return {**batch, "loss_mask": loss_mask}

    def _count(self, batch: dict, scores: BatchScores, quadrant: np.ndarray, kept: np.ndarray, targets_kept: int) -> None:
        c = self.counts
        c["steps"] = c.get("steps", 0) + 1
        c["documents"] = c.get("documents", 0) + len(kept)
        c["kept"] = c.get("kept", 0) + int(kept.sum())
        c["targets"] = c.get("targets", 0) + int(sum(len(x) for x in scores.positions))
        c["targets_kept"] = c.get("targets_kept", 0) + targets_kept
        for q, name in QUADRANT_NAMES.items():
            c[name] = c.get(name, 0) + int((quadrant == q).sum())
        if "source_index" in batch and len(kept):   # which source each document came from (its first target)
            src = batch["source_index"][:, 1:].cpu().numpy()
            doc_src = np.array([src[r, pos[0]] for r, pos in zip(scores.rows, scores.positions, strict=True)])
            step = {int(s): (int((doc_src == s).sum()), int((kept & (doc_src == s)).sum())) for s in np.unique(doc_src)}
            self.history.append(step)

    def summary(self) -> dict:
        """Running counts: documents and targets seen and kept, per quadrant, and the scoring FLOPs."""
        c = dict(self.counts)
        c["scoring_flops"] = self.scoring_flops
        c["kept_share"] = c.get("kept", 0) / max(c.get("documents", 0), 1)
        c["target_share"] = c.get("targets_kept", 0) / max(c.get("targets", 0), 1)
        return c
