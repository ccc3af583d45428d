"""The compute multiplier: how much more training compute the baseline needs to match a curated run.

M = C_b(L*) / C_cur, where L* is the curated run's final held-out loss, C_cur its training FLOPs
(plus the curation's own FLOPs for the net figure), and C_b(L) the baseline's FLOPs-to-loss
curve, interpolated linearly in log FLOPs between its measured points (each point the final loss
of a separately annealed baseline run). Outside the measured range the answer is a bound:
"not reached" (M > largest / C_cur) or "beyond the smallest run" (M < smallest / C_cur).
ALGORITHMS.md section 7; the term follows nonint.com's "compute multipliers" (2023).
"""

from __future__ import annotations

import math


def baseline_flops_for(loss: float, curve: list[tuple[float, float]]) -> tuple[float, str]:
    """FLOPs at which the baseline reaches `loss`; `curve` is (flops, final loss) per run.

    Returns (flops, status) with status "interpolated", "not_reached" (flops = largest run, a lower
    bound on the answer) or "below_range" (flops = smallest run, an upper bound).
    """
    pts = sorted(curve)
    best = []  # running minimum: more compute never makes the baseline worse
    for flops, value in pts:
        best.append((flops, min(value, best[-1][1]) if best else value))
    if loss < best[-1][1]:
        return best[-1][0], "not_reached"
    if loss >= best[0][1]:
        return best[0][0], "below_range"
    for (c0, l0), (c1, l1) in zip(best, best[1:], strict=False):
        if l1 <= loss <= l0:
            if l0 == l1:
                return c0, "interpolated"
            frac = (l0 - loss) / (l0 - l1)
            return math.exp(math.log(c0) + frac * (math.log(c1) - math.log(c0))), "interpolated"
    return best[-1][0], "not_reached"


def multiplier(curated_loss: float, curated_flops: float, curve: list[tuple[float, float]],
               curation_flops: float = 0.0) -> dict:
    flops, status = baseline_flops_for(curated_loss, curve)
    return {"multiplier": flops / curated_flops, "net_multiplier": flops / (curated_flops + curation_flops),
            "baseline_flops": flops, "status": status}
