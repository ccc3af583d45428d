"""Q-Tuning implementation check: do answers swapped between GSM8K problems land in the high-error
quadrants (Q1/Q2) of the `prune` stage, and how much of them does the stage keep?

1. N GSM8K train problems (seeded sample); the answers of `--swap` of them are permuted among
   themselves (a derangement: no swapped problem keeps its own answer) and the rows carry `swapped`.
2. `winnow run` with the real `prune` stage (question = prompt, answer = response) and a reference model:
   the SmolLM2-135M-Instruct default, or a winnow proxy checkpoint (`--model`, e.g. the `tiny` base
   that bench/prune.py pre-trains).
3. From the stage's kept and rejected rows (`quadrant`, `ppl`, `entropy`, `pruned_tokens`,
   `response_tokens`) and its stored per-token NLLs (`01-prune/_fit/tokens-*.parquet`): the share of
   swapped rows per quadrant against their base share, the share among kept rows, enrichment ratios
   (share / base share; 1 = blind, > 1 = the swap is favoured), and the ROC AUC of each axis for
   swapped vs intact (does the reference model see the swap at all?).
4. Ablations at the same sample retention, scored on the same stored statistics: `r_token` 1 (no token
   pruning), the reversed token rule (eu_plane.kept_tokens(..., "highest"), the stage's `token_rule`),
   random samples (seeded) and the lowest-perplexity samples (a plain loss filter). For each: the share
   of swapped rows among kept samples and the share of kept response tokens (training targets) that
   come from swapped rows.

    python bench/qtuning_check.py                                 # SmolLM2 reference, 800 problems
    python bench/qtuning_check.py --model out/bench-prune/base    # the tiny proxy as the reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WINNOW_SHARED_DATA", REPO.parent / "shared" / "data"))
GSM8K = SHARED / "sft" / "gsm8k" / "train.jsonl"
QUADRANTS = ("q1_harmful_noise", "q2_valuable_misconception", "q3_redundant_knowledge", "q4_calibration",
             "middle_band")


def swapped_pool(n: int, swap: float, seed: int) -> list[dict]:
    """`n` seeded GSM8K train problems; a `swap` share of them get another swapped problem's answer."""
    lines = GSM8K.read_text().splitlines()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(lines), n, replace=False))
    rows = [{"id": f"gsm-{int(i)}", **json.loads(lines[i]), "swapped": False} for i in pick]
    chosen = rng.permutation(n)[: int(round(swap * n))]
    answers = [rows[i]["answer"] for i in chosen]
    for k, i in enumerate(chosen):   # a cyclic shift of a random order: nobody keeps its own answer
        rows[i]["answer"] = answers[(k + 1) % len(chosen)]
        rows[i]["swapped"] = True
    return rows


def run_prune(rows: list[dict], out: Path, prune: dict, workers: int) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    src = out / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"input": {"paths": [str(src)], "text_field": "answer"}, "output": str(out / "run"),
              "engine": {"n_workers": workers},
              "stages": [{"prune": {"prompt_field": "question", "response_field": "text", **prune}}]}
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--quiet"], cwd=REPO, check=True)


def stage_rows(stage: Path):
    """Kept and rejected rows of the prune stage, one table with `kept`, and the stored per-token NLLs by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["id", "swapped", "quadrant", "ppl", "entropy", "response_tokens", "pruned_tokens"]
    kept = pa.concat_tables(pq.read_table(p).select(cols) for p in sorted(stage.glob("train-*.parquet")))
    rejected = [pq.read_table(p) for p in sorted((stage / "rejected").glob("*.parquet"))]
    # rejected rows carry the stage's columns (quadrant, ppl, ...) as well; their pruned_tokens are 0
    rejected = pa.concat_tables(t.select(cols) for t in rejected) if rejected else kept.slice(0, 0)
    table = pa.concat_tables([kept, rejected]).to_pydict()
    table["kept"] = [True] * kept.num_rows + [False] * rejected.num_rows
    tokens = pa.concat_tables(pq.read_table(p, columns=["id", "nll"]) for p in sorted((stage / "_fit").glob("tokens-*")))
    nll = dict(zip(tokens.column("id").to_pylist(), tokens.column("nll").to_pylist(), strict=True))
    return {k: np.asarray(v) for k, v in table.items()}, nll


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of `score` ranking the positives first (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def arm_targets(t: dict, nll: dict, keep: np.ndarray, r_token: float, lam: float, rule: str | None) -> np.ndarray:
    """Response tokens each row contributes as training targets when `keep` rows are kept and Q2 rows
    are token-pruned with `rule` (None: no token pruning)."""
    from winnow.raters.eu_plane import kept_tokens

    out = np.zeros(len(keep), np.int64)
    for i in np.flatnonzero(keep):
        if rule is not None and t["quadrant"][i] == "q2_valuable_misconception":
            out[i] = int(kept_tokens(np.asarray(nll[t["id"][i]], np.float64), r_token, lam, rule).sum())
        else:
            out[i] = int(t["response_tokens"][i])
    return out


def report(t: dict, nll: dict, r_token: float, lam: float, seed: int) -> dict:
    swapped, kept = t["swapped"].astype(bool), t["kept"].astype(bool)
    base = float(swapped.mean())
    result: dict = {"rows": int(len(swapped)), "swapped": int(swapped.sum()), "base_share": base,
                    "auc_log_ppl": auc(np.log(t["ppl"]), swapped), "auc_entropy": auc(t["entropy"], swapped),
                    "quadrants": {}, "arms": {}}
    print(f"{len(swapped)} rows, {int(swapped.sum())} swapped (base share {base:.3f}); ROC AUC swapped vs intact: "
          f"log PPL {result['auc_log_ppl']:.3f}, entropy {result['auc_entropy']:.3f}")
    print(f"mean log PPL intact {np.log(t['ppl'][~swapped]).mean():.3f} swapped {np.log(t['ppl'][swapped]).mean():.3f};"
          f" mean entropy intact {t['entropy'][~swapped].mean():.3f} swapped {t['entropy'][swapped].mean():.3f}")
    print("| quadrant | rows | swapped | share swapped | enrichment | share of all swapped |")
    print("|---|---|---|---|---|---|")
    for name in QUADRANTS:
        here = t["quadrant"] == name
        n, s = int(here.sum()), int((here & swapped).sum())
        share = s / n if n else float("nan")
        result["quadrants"][name] = {"rows": n, "swapped": s, "share": share, "enrichment": share / base}
        print(f"| {name} | {n} | {s} | {share:.3f} | {share / base:.2f} | {s / swapped.sum():.3f} |")
    high = np.isin(t["quadrant"], QUADRANTS[:2])
    result["q1_q2_enrichment"] = float((high & swapped).sum() / max(high.sum(), 1) / base)
    # where the kept rows come from: Q2/Q4 by the rule, Q1/Q3 by the top-up towards r_sample
    result["kept_by_quadrant"] = {}
    print("\nkept rows by quadrant (Q1/Q3 ones are the top-up): " + ", ".join(
        f"{name} {int((kept & (t['quadrant'] == name)).sum())} ({int((kept & swapped & (t['quadrant'] == name)).sum())}"
        " swapped)" for name in QUADRANTS[:4]))
    for name in QUADRANTS[:4]:
        here = kept & (t["quadrant"] == name)
        result["kept_by_quadrant"][name] = {"kept": int(here.sum()), "swapped": int((here & swapped).sum())}

    n_keep = int(kept.sum())
    rng = np.random.default_rng(seed)
    random_keep = np.zeros(len(kept), bool)
    random_keep[rng.choice(len(kept), n_keep, replace=False)] = True
    low_ppl_keep = np.zeros(len(kept), bool)
    low_ppl_keep[np.argsort(t["ppl"], kind="stable")[:n_keep]] = True
    arms = {"q-tuning (stage output)": (kept, np.where(kept, t["response_tokens"] - t["pruned_tokens"], 0)),
            "q-tuning, recomputed": (kept, arm_targets(t, nll, kept, r_token, lam, "lowest")),
            "r_token 1 (no token pruning)": (kept, arm_targets(t, nll, kept, r_token, lam, None)),
            "token rule reversed": (kept, arm_targets(t, nll, kept, r_token, lam, "highest")),
            "random samples": (random_keep, arm_targets(t, nll, random_keep, r_token, lam, None)),
            "lowest PPL samples": (low_ppl_keep, arm_targets(t, nll, low_ppl_keep, r_token, lam, None))}
    print(f"\n| arm ({n_keep} of {len(kept)} samples kept) | swapped among kept | enrichment | kept targets | "
          f"swapped share of targets |")
    print("|---|---|---|---|---|")
    for name, (keep, targets) in arms.items():
        share = float(swapped[keep].mean())
        tok_share = float(targets[swapped].sum() / max(targets.sum(), 1))
        result["arms"][name] = {"kept": int(keep.sum()), "swapped_share": share, "enrichment": share / base,
                                "targets": int(targets.sum()), "swapped_target_share": tok_share}
        print(f"| {name} | {share:.3f} | {share / base:.2f} | {int(targets.sum()):,} | {tok_share:.3f} |")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=800, help="GSM8K train problems")
    ap.add_argument("--swap", type=float, default=0.25, help="share of problems whose answers are swapped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="reference model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--r-sample", type=float, default=0.25)
    ap.add_argument("--r-token", type=float, default=0.5)
    ap.add_argument("--lambda", dest="lam", type=float, default=0.5)
    ap.add_argument("--pool-size", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--workers", type=int, default=1, help="Dask worker processes (each loads the model)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = Path(args.model).name if args.model else "smollm2"
    out = Path(args.out or REPO / "out" / "bench-qtuning-check" / f"{name}-n{args.n}-s{args.seed}")
    prune = {"model": str(Path(args.model).resolve()) if args.model else None, "r_sample": args.r_sample,
             "r_token": args.r_token, "lambda": args.lam, "pool_size": args.pool_size,
             "max_tokens": args.max_tokens, "threads": args.threads, "seed": args.seed}
    t0 = time.perf_counter()
    run_prune(swapped_pool(args.n, args.swap, args.seed), out, prune, args.workers)
    print(f"prune stage ({name}): {time.perf_counter() - t0:.0f} s")
    t, nll = stage_rows(out / "run" / "01-prune")
    result = report(t, nll, args.r_token, args.lam, args.seed)
    (out / "result.json").write_text(json.dumps({"args": vars(args), **result}, indent=1))


if __name__ == "__main__":
    main()
