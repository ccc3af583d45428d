"""From the runs of `winnow eval` to multipliers with their uncertainty, per arm and held-out set.

Per seed, an arm's multiplier is multiplier.py's M against that seed's baseline curve (so seed
noise shared by both arms partly cancels). Over seeds: the mean, the sample standard deviation
(ddof = 1: with two seeds ddof = 0 would understate the spread by sqrt 2) and a Student-t 95%
interval for the mean (none with one seed). Std and interval are given only when every seed's
multiplier is interpolated: a seed outside the baseline's runs contributes a bound (capped at the
largest or smallest run), which shrinks the spread; the note then names the seeds that bound it.
The net multipliers charge the arm's curation per
trained token (cost.py). Downstream accuracy comes per arm with a binomial standard error.
"""

from __future__ import annotations

import math

import numpy as np

from winnow.proxy.cost import CurationCost
from winnow.proxy.multiplier import multiplier


def interval(values: list[float], level: float = 0.95) -> dict:
    """Mean, sample std (ddof=1) and the t-interval of the mean; std and interval are None for one value."""
    x = np.asarray(values, np.float64)
    if len(x) == 0:
        return {"mean": None, "std": None, "interval": None, "n": 0}
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "std": None, "interval": None, "n": 1}
    from scipy import stats

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return {"mean": mean, "std": std, "interval": [mean - half, mean + half], "n": int(len(x))}


def describe(stats: dict) -> str:
    """An arm's multiplier on one set as text: `1.23 ± 0.10 [0.98, 1.48]` (std and interval when known)."""
    text = f"{stats['multiplier']:.2f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.2f}"
    if stats["interval"] is not None:
        text += f" [{stats['interval'][0]:.2f}, {stats['interval'][1]:.2f}]"
    return text


def note_for(per_seed: list[dict]) -> str:
    """`interpolated`, or which kind of bound the mean is and the seeds that make it one."""
    def seeds(status: str) -> str:
        return ", ".join(str(p["seed"]) for p in per_seed if p["status"] == status)

    beyond, below = seeds("not_reached"), seeds("below_range")
    if beyond and below:
        return (f"mixed bounds: seeds {beyond} beyond the baseline's largest run, seeds {below} below its smallest; "
                "no interval")
    if beyond:
        return (f"a lower bound: the baseline never reached this loss in seeds {beyond} (capped at its largest "
                "run); no interval")
    if below:
        return f"an upper bound: below the smallest baseline run in seeds {below}; no interval"
    return "interpolated"


def seed_stats(per_seed: list[dict]) -> dict:
    """One arm's multipliers on one set over its seeds' entries (each with seed, multiplier, status,
    net_multiplier, net_multiplier_with_fit): mean, std and interval, or a bound with no interval."""
    stats = interval([p["multiplier"] for p in per_seed])
    net = interval([p["net_multiplier"] for p in per_seed])
    statuses = {p["status"] for p in per_seed}
    if statuses != {"interpolated"}:   # a capped seed shrinks the spread: no std or interval is honest
        stats["std"] = stats["interval"] = net["interval"] = None
    return {
        "multiplier": stats["mean"], "std": stats["std"], "interval": stats["interval"],
        "net_multiplier": net["mean"],
        "net_multiplier_with_fit": interval([p["net_multiplier_with_fit"] for p in per_seed])["mean"],
        "net_interval": net["interval"],
        "status": sorted(statuses), "note": note_for(per_seed),
        "bounded_seeds": [p["seed"] for p in per_seed if p["status"] != "interpolated"], "per_seed": per_seed}


def arm_summary(runs: list[dict], arm: str, baseline: str, eval_sets: list[str], cost: CurationCost) -> dict:
    """{set: {multiplier, std, interval, per_seed, net_multiplier, net_multiplier_with_fit, status, note}}."""
    out = {}
    for eval_set in eval_sets:
        per_seed = []
        for run in (r for r in runs if r["arm"] == arm and r["budget"] == 1.0):
            curve = [(r["flops"], r["final"][eval_set]) for r in runs if r["arm"] == baseline and r["seed"] == run["seed"]]
            loss = run["final"][eval_set]
            m = multiplier(loss, run["flops"], curve, cost.net_flops(run["flops"], run["tokens"]) - run["flops"])
            with_fit = m["baseline_flops"] / cost.net_flops(run["flops"], run["tokens"], with_fit=True)
            per_seed.append({"seed": run["seed"], "final_loss": loss, **m, "net_multiplier_with_fit": with_fit})
        out[eval_set] = seed_stats(per_seed)
    return out


def downstream_summary(runs: list[dict]) -> dict:
    """{arm: {task: {accuracy, stderr, items, chance, per_seed}}} over the runs that scored downstream."""
    out: dict = {}
    for run in runs:
        for task, res in run.get("downstream", {}).items():
            out.setdefault(run["arm"], {}).setdefault(task, []).append({"seed": run["seed"], **res})
    for arm, tasks in out.items():
        for task, per_seed in tasks.items():
            acc = float(np.mean([p["accuracy"] for p in per_seed]))
            items = per_seed[0]["items"]
            # the seeds score the same items, so the binomial error over items is the honest one
            stderr = math.sqrt(acc * (1 - acc) / items) if items else None
            tasks[task] = {"accuracy": acc, "stderr": stderr, "items": items, "chance": per_seed[0]["chance"],
                           "per_seed": per_seed}
        out[arm] = tasks
    return out
