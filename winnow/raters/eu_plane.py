"""Q-Tuning's error-uncertainty plane (Wang et al. 2025, "Winning the Pruning Gamble"), as plain numpy.

A pool of samples, each with a perplexity (error) and a mean predictive entropy (uncertainty) under
a reference model, is split into four quadrants by quantile thresholds:

    Q1 harmful noise          high PPL, high entropy   dropped
    Q2 valuable misconception high PPL, low entropy    kept; its response tokens are pruned
    Q3 redundant knowledge    low PPL,  low entropy    dropped
    Q4 calibration data       low PPL,  high entropy   kept whole

The thresholds are the pool's alpha / 1-alpha quantiles of PPL and beta / 1-beta quantiles of
entropy, with alpha = beta found by bisection on [0, 0.49] (20 halvings; the paper stops under 10,
which leaves a few samples of slack on pools of hundreds) so that |Q2 ∪ Q4| comes as close to
`r_sample` x pool as it can (samples in a middle band of either axis belong to no quadrant).
Short of the target, the pool is topped up from Q1 ∪ Q3 only (Algorithm 1: a sample in a middle
band belongs to no quadrant and is never kept) by how far a sample sits from the diagonal of the
min-max-normalised plane, max(PPL^ - Ent^, Ent^ - PPL^), highest first (with log PPL normalised:
ours, so that one outlier does not flatten the axis). When Q1 ∪ Q3 is too small to fill the budget
(only for `r_sample` near 1: the widest bands still leave about 4% of a pool in middle bands) the
pool keeps fewer than `r_sample` x pool.

Inside a Q2 sample, token i scores s_i = (1 - lambda) PPL_i + lambda (PPL_{i-1} + PPL_{i+1}) (per-token
perplexity exp(NLL), neighbours outside the response count as 0) and the `r_token` share of tokens
with the lowest scores is kept: a token is pruned when it and its neighbours are surprising.
"""

from __future__ import annotations

import numpy as np

QUADRANT_NAMES = {1: "q1_harmful_noise", 2: "q2_valuable_misconception", 3: "q3_redundant_knowledge",
                  4: "q4_calibration", 0: "middle_band"}


def quadrants(ppl: np.ndarray, ent: np.ndarray, level: float) -> np.ndarray:
    """Quadrant 1-4 of each sample at quantile level `level` (0: in a middle band)."""
    ppl_hi, ppl_lo = np.quantile(ppl, 1 - level), np.quantile(ppl, level)
    ent_hi, ent_lo = np.quantile(ent, 1 - level), np.quantile(ent, level)
    hi_p, lo_p = ppl >= ppl_hi, ppl <= ppl_lo
    hi_e, lo_e = ent >= ent_hi, ent <= ent_lo
    q = np.zeros(len(ppl), np.int8)
    q[hi_p & hi_e] = 1
    q[hi_p & lo_e] = 2
    q[lo_p & lo_e] = 3
    q[lo_p & hi_e] = 4
    return q


def bisect_level(ppl: np.ndarray, ent: np.ndarray, r_sample: float, iterations: int = 20) -> float:
    """The quantile level whose Q2 ∪ Q4 share is closest to `r_sample` (bisection on [0, 0.49]):
    a higher level widens the outer bands and puts more samples in quadrants."""
    lo, hi = 0.0, 0.49
    best, best_gap = hi, np.inf
    for _ in range(iterations):
        level = (lo + hi) / 2
        q = quadrants(ppl, ent, level)
        share = float(np.isin(q, (2, 4)).mean())
        if abs(share - r_sample) < best_gap:
            best, best_gap = level, abs(share - r_sample)
        if share < r_sample:
            lo = level
        else:
            hi = level
    return best


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def select(ppl: np.ndarray, ent: np.ndarray, r_sample: float) -> tuple[np.ndarray, np.ndarray]:
    """(quadrant of each sample, kept mask): Q2 ∪ Q4 at the bisected level, topped up towards
    round(r_sample x n) from Q1 ∪ Q3 by distance from the plane's diagonal; a pool above the target
    keeps the Q2 ∪ Q4 samples farthest from the diagonal. Middle-band samples (quadrant 0) are never kept."""
    n = len(ppl)
    target = int(round(r_sample * n))
    if n == 0:
        return np.zeros(0, np.int8), np.zeros(0, bool)
    level = bisect_level(ppl, ent, r_sample)
    q = quadrants(ppl, ent, level)
    # max(a - b, b - a) on the min-max-normalised plane; PPL is taken in log space, so one document
    # with an absurd perplexity does not squash every other onto the same end of the axis
    support = np.abs(_minmax(np.log(ppl)) - _minmax(ent))
    kept = np.isin(q, (2, 4))
    if kept.sum() < target:
        # the paper's top-up pool is Q1 ∪ Q3: a middle-band sample sits in no quadrant, however far
        # from the diagonal it is
        candidates = np.flatnonzero(np.isin(q, (1, 3)))
        kept[candidates[np.argsort(-support[candidates], kind="stable")[: target - kept.sum()]]] = True
    elif kept.sum() > target:
        inside = np.flatnonzero(kept)
        kept[inside[np.argsort(-support[inside], kind="stable")[target:]]] = False
    return q, kept


def token_keep(nll: np.ndarray, r_token: float, lam: float = 0.5) -> np.ndarray:
    """Which response tokens a Q2 sample keeps: the `r_token` share with the lowest neighbour-smoothed
    perplexity score (at least one token when there is any)."""
    n = len(nll)
    if n == 0:
        return np.zeros(0, bool)
    tok_ppl = np.exp(np.minimum(nll.astype(np.float64), 50.0))
    padded = np.concatenate([[0.0], tok_ppl, [0.0]])
    score = (1 - lam) * tok_ppl + lam * (padded[:-2] + padded[2:])
    keep_n = max(1, int(round(r_token * n)))
    keep = np.zeros(n, bool)
    keep[np.argsort(score, kind="stable")[:keep_n]] = True
    return keep


def spans(offsets: np.ndarray, drop: np.ndarray) -> list[list[int]]:
    """Character spans [start, end) covering the dropped tokens, adjacent ones merged."""
    out: list[list[int]] = []
    for (a, b), d in zip(offsets.tolist(), drop.tolist(), strict=True):
        if not d:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def kept_tokens(nll: np.ndarray, r_token: float, lam: float, rule: str = "lowest") -> np.ndarray:
    """Which response tokens of a Q2 sample are kept: eu_plane.token_keep, or for `rule` "highest" the
    same number of tokens from the other end of its score order (the reversed rule)."""
    if rule == "lowest":
        return token_keep(nll, r_token, lam)
    n = len(nll)
    keep_n = max(1, int(round(r_token * n))) if n else 0
    if keep_n >= n:
        return np.ones(n, bool)
    # the n - keep_n lowest scores are exactly the ones the reversed rule drops
    return ~token_keep(nll, (n - keep_n) / n, lam)
