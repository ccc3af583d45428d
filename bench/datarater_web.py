"""The DataRater on the raw web pool (issue 24 §1): does it replace the hand rules, and does it beat a
filter on the two features it correlates with?

Pools: `raw` = the web sample after normalize + exact_dedup (configs/web-quality.yaml's stage 02),
`rules` = after its heuristics stage (03). One rater is meta-trained on the raw pool (the `datarater`
stage, target: the reference set less its 20% eval slice, 1,000 pool documents, CPU defaults) and
reused with `model:` everywhere below, so every arm ranks by the same rater.

The two-feature filter: a least-squares fit of the rater's own scores on the raw pool to
log(characters) and the non-alphanumeric fraction (the two features its scores track: Spearman +0.47
and -0.38 on the rules pool); documents are ranked by that fit. It costs nothing to score.

Arms, all at equal kept fractions where they are compared:
  rules       the rule stages (they keep a fraction f of raw)
  dr_raw      the DataRater alone on raw, keeping f        tf_raw     the two-feature filter on raw, keeping f
  rules_dr75  rules, then the DataRater keeping 75%         rules_tf75 rules, then the two-feature filter
  rules_dr50  rules, then the DataRater keeping 50%         rules_tf50 ...
  rules_dd50  rules, then `distill: fasttext` (a fastText classifier of the rater's best vs worst) keeping 50%
`winnow eval` trains tiny proxies on each (3 seeds, 1e12 FLOPs) against the raw pool at 0.5-4x and
prints multipliers on the `pool` and `reference` held-out sets.

    python bench/datarater_web.py               # CPU: about 60 minutes on 2 quiet cores
    python bench/datarater_web.py --seeds 1 --meta-steps 50    # a quicker, noisier look
    python bench/datarater_web.py --rater-seeds 3    # three rater fits, rater k with proxy seed k

With `--rater-seeds`, seed 0's rater is the one-rater run's (reused from OUT if there), raters 1 and 2 are
fit under OUT/rater-seed1, OUT/rater-seed2, and each rater's arms are trained with the proxy seed of the
same number, so an arm's spread holds both the rater's fit-to-fit variance and the proxy's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"
REFERENCE_SETS = [str(REFERENCE / s / "*.jsonl") for s in ("gutenberg_books", "wikipedia", "python_docs", "speeches")]


def winnow_run(config: dict, path: Path) -> None:
    import yaml

    if (Path(config["output"]) / "_run.json").exists():   # kept: a rerun reuses it
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--quiet"], cwd=REPO, check=True)


def stage_table(stage: Path, rejected: bool = True):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(stage.glob("train-*.parquet")) + (sorted((stage / "rejected").glob("*.parquet")) if rejected else [])
    tables = [pq.read_table(f) for f in files]
    columns = set.intersection(*(set(t.column_names) for t in tables))
    return pa.concat_tables([t.select(sorted(columns)) for t in tables], promote_options="default")


def two_features(texts: list[str]) -> np.ndarray:
    from winnow.raters.analysis import text_features

    f = text_features(texts)
    return np.column_stack([np.log1p(f["chars"]), f["non_alnum_fraction"], np.ones(len(texts))])


def top_fraction(table, scores: np.ndarray, keep: float, folder: Path) -> str:
    """The `keep` best-scored rows of `table` written as a folder of documents (a `winnow eval` arm)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    n = int(round(keep * table.num_rows))
    best = np.sort(np.argsort(-scores, kind="stable")[:n])
    keep_cols = [c for c in table.column_names if c not in ("stage", "reason", "datarater_score")]
    pq.write_table(table.select(keep_cols).take(pa.array(best, pa.int64())), folder / "train-00000.parquet")
    return str(folder)


def build_arms(out: Path, raw: Path, rules: Path, f: float, keeps: list[float], meta_steps: int,
               rater_seed: int) -> tuple[dict[str, str], dict, np.ndarray]:
    """Meta-train one rater (stage seed `rater_seed`: its pool sample and its models' initialisation) under
    `out` and build every arm from it: ({arm: folder}, the rater stage's manifest, the two-feature fit)."""
    t0 = time.perf_counter()
    target = {"paths": REFERENCE_SETS, "heldout_fraction": 0.2}
    winnow_run({"input": {"paths": [str(raw / "train-*.parquet")]}, "output": str(out / "dr_raw"), "seed": 0,
                "stages": [{"datarater": {"target": target, "pool_docs": 1000, "keep_top": round(f, 4),
                                          "meta": {"meta_steps": meta_steps},
                                          **({"seed": rater_seed} if rater_seed else {})}}]},
               out / "configs" / "dr_raw.yaml")
    dr_stage = out / "dr_raw" / "01-datarater"
    manifest = json.loads((dr_stage / "_manifest.json").read_text())
    model = str(dr_stage / "datarater")
    print(f"rater seed {rater_seed} fit: {manifest['fit_seconds']:.0f} s, {manifest['training_flops']:.3g} FLOPs; "
          f"uniform control {manifest.get('uniform_control')}", flush=True)
    arms = {"rules": str(rules), "dr_raw": str(dr_stage)}
    for keep in keeps:
        name = f"rules_dr{round(100 * keep)}"
        winnow_run({"input": {"paths": [str(rules / "train-*.parquet")]}, "output": str(out / name), "seed": 0,
                    "stages": [{"datarater": {"model": model, "keep_top": keep}}]}, out / "configs" / f"{name}.yaml")
        arms[name] = str(out / name / "01-datarater")
    # distilled: fastText trained on the rater's best vs worst 30% of the rules pool's sample the stage rates
    # (stage seed 0 for every rater: the spread over raters leaves out that sample's own variance), cheapest keep
    name = f"rules_dd{round(100 * keeps[-1])}"
    winnow_run({"input": {"paths": [str(rules / "train-*.parquet")]}, "output": str(out / name), "seed": 0,
                "stages": [{"datarater": {"model": model, "keep_top": keeps[-1], "distill": "fasttext"}}]},
               out / "configs" / f"{name}.yaml")
    arms[name] = str(out / name / "01-datarater")
    print(f"distilled: {json.loads((out / name / '01-datarater' / '_manifest.json').read_text())['distill']}")

    # the two-feature surrogate, fit to the rater's scores on the raw pool
    scored = stage_table(dr_stage)
    x = two_features(scored.column("text").to_pylist())
    y = scored.column("datarater_score").to_numpy()
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    from winnow.raters.analysis import spearman

    fitted = x @ coef
    print(f"two-feature fit: score ~ {coef[0]:+.4f} log(chars) {coef[1]:+.4f} non_alnum {coef[2]:+.4f}; "
          f"Spearman with the rater {spearman(fitted, y):.3f}, R^2 {1 - np.var(y - fitted) / np.var(y):.3f}", flush=True)
    raw_table = stage_table(raw, rejected=False)
    arms["tf_raw"] = top_fraction(raw_table, two_features(raw_table.column("text").to_pylist()) @ coef, f,
                                  out / "tf_raw")
    rules_table = stage_table(rules, rejected=False)
    rules_fit = two_features(rules_table.column("text").to_pylist()) @ coef
    for keep in keeps:
        arms[f"rules_tf{round(100 * keep)}"] = top_fraction(rules_table, rules_fit, keep,
                                                            out / f"rules_tf{round(100 * keep)}")
    # the same keep, different choices: how many documents the rater and the surrogate agree on
    for name in [a for a in arms if a.startswith(("rules_dr", "rules_dd"))] + ["dr_raw"]:
        twin = name.replace("dr", "tf").replace("dd", "tf")
        a, b = (set(stage_table(Path(arms[n]), rejected=False).column("id").to_pylist()) for n in (name, twin))
        print(f"  {name} vs {twin}: {len(a & b) / max(len(a), 1):.2f} of the kept documents in common")
    print(f"rater seed {rater_seed}: arms built in {time.perf_counter() - t0:.0f} s", flush=True)
    return arms, manifest, coef


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web-out", default=str(REPO / "out" / "web-quality"))
    ap.add_argument("--out", default=str(REPO / "out" / "bench-datarater-web"))
    ap.add_argument("--meta-steps", type=int, default=200)
    ap.add_argument("--keeps", default="0.75,0.5", help="kept fractions after the rules")
    ap.add_argument("--seeds", type=int, default=3, help="proxy seeds when one rater is fit")
    ap.add_argument("--rater-seeds", type=int, default=1,
                    help="meta-training seeds: with more than one, rater k's arms are trained with proxy seed k")
    ap.add_argument("--budget", type=float, default=1e12)
    ap.add_argument("--heldout-tokens", type=int, default=50_000)
    args = ap.parse_args()
    if args.rater_seeds < 1 or args.seeds < 1:
        ap.error("--rater-seeds and --seeds must be at least 1")
    out, web = Path(args.out), Path(args.web_out)
    if not (web / "03-heuristics" / "_manifest.json").exists():
        subprocess.run([sys.executable, "-m", "winnow", "run", "configs/web-quality.yaml", "--set", f"output={web}",
                        "--quiet"], cwd=REPO, check=True)
    raw, rules = web / "02-exact_dedup", web / "03-heuristics"
    n_raw = json.loads((raw / "_manifest.json").read_text())["totals"]["kept"]
    n_rules = json.loads((rules / "_manifest.json").read_text())["totals"]["kept"]
    f = n_rules / n_raw
    print(f"raw pool {n_raw} documents; the rules keep {n_rules} ({f:.3f})", flush=True)

    keeps = [float(k) for k in args.keeps.split(",")]
    built = [build_arms(out if k == 0 else out / f"rater-seed{k}", raw, rules, f, keeps, args.meta_steps, k)
             for k in range(args.rater_seeds)]

    from winnow.proxy.evaluate import EvalConfig, run_eval
    from winnow.proxy.summary import describe, seed_stats

    def evaluate(arms: dict[str, str], seeds: list[int], folder: str) -> dict:
        cfg = EvalConfig(arms={"raw": str(raw), **arms}, output=str(out / folder), pool_heldout_fraction=0.05,
                         pool_tokens=args.heldout_tokens,
                         heldout={"reference": {"paths": REFERENCE_SETS, "tokens": args.heldout_tokens,
                                                "heldout_fraction": 0.2}},
                         primary_eval="pool", vocab_size=4096, size="tiny", seq_len=256, batch_size=8, lr=4e-3,
                         flop_budget=args.budget, baseline_budgets=[0.5, 1.0, 2.0, 4.0], seeds=seeds, n_evals=1)
        t0 = time.perf_counter()
        report = run_eval(cfg, log=lambda *a: None)
        print(f"winnow eval {folder}: {len(report['runs'])} runs in {time.perf_counter() - t0:.0f} s", flush=True)
        return report

    sets = ("pool", "reference")
    if args.rater_seeds == 1:
        title = f"{args.seeds} proxy seeds, one rater"
        summary = evaluate(built[0][0], list(range(args.seeds)), "eval")["arms"]
    else:
        # rater k is paired with proxy seed k: the spread then holds both fit-to-fit and proxy variance
        title = f"{args.rater_seeds} raters, each with its own proxy seed"
        reports = [evaluate(arms, [k], f"eval-rater{k}") for k, (arms, _, _) in enumerate(built)]
        summary = {name: {s: seed_stats([p for r in reports for p in r["arms"][name][s]["per_seed"]]) for s in sets}
                   for name in reports[0]["arms"]}

    def per_seed(stats: dict) -> str:   # a capped seed is a bound: ≤ below the baseline's runs, ≥ beyond them
        mark = {"below_range": "≤", "not_reached": "≥"}
        return ", ".join(f"{mark.get(p['status'], '')}{p['multiplier']:.2f}" for p in stats["per_seed"])

    print(f"\n{title}; baseline raw")
    print("| arm | pool: M ± std [95% CI] | pool per seed | reference: M ± std [95% CI] | reference per seed | "
          "net with fit, pool / reference |")
    print("|---|---|---|---|---|---|")
    for name, by_set in summary.items():
        cells = [f"{describe(by_set[s])}{'' if by_set[s]['status'] == ['interpolated'] else ' (bound)'} | "
                 f"{per_seed(by_set[s])}" for s in sets]
        nets = " / ".join(f"{by_set[s]['net_multiplier_with_fit']:.2f}" for s in sets)
        print(f"| {name} | {cells[0]} | {cells[1]} | {nets} |")
    (out / ("summary.json" if args.rater_seeds == 1 else "summary-raters.json")).write_text(json.dumps(
        {"arms": summary, "coef": [c.tolist() for _, _, c in built],
         "uniform_control": [m.get("uniform_control") for _, m, _ in built]}, indent=1))


if __name__ == "__main__":
    main()
