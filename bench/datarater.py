"""The DataRater against fastText at equal kept fractions, on a planted pool and on the web sample.

1. Planted: reference passages, 30% corrupted (token-shuffled, random characters, mojibake); a rater
   meta-trained with winnow's CPU defaults (the `datarater` stage's own training function) against
   clean target passages; ROC AUC clean vs corrupted on passages it never saw:
   `datarater auc: X.XXX`.
2. Web: the sample after configs/web-quality.yaml's rule stages (`03-heuristics`) is the baseline.
   The `datarater` stage (target: the reference set less its 20% eval slice) and `fasttext_quality`
   (the same positives) each keep 90 / 75 / 50% of it (one model each, fit once, reused with
   `model:`), and `winnow eval` compares all seven arms with seeds on the pool's held-out slice and
   on the reference slice neither model saw: multipliers with t-intervals, training-only and net of
   scoring and of the models' fit. Then what the rater learned: Spearman correlations of its score
   with simple features, and the lowest- and highest-rated documents.

3. `--speed` (issue 25): the `datarater` stage with its CPU defaults on the quickstart pool (the rows
   `configs/quickstart.yaml` keeps after `fasttext_quality`; target: the standard library's docstrings,
   keep 80%), run by `winnow run` on its embedded cluster: `datarater fit seconds: X` (the manifest's
   fit_seconds), `system time share: Y` (sys / (user + sys) of the whole `winnow run` process tree,
   workers included), meta-steps/s, and GFLOP/s of the fit against a measured fp32 matmul peak.

    python bench/datarater.py                 # CPU: about 30-40 minutes on 2 cores
    python bench/datarater.py --skip-web      # the planted AUC only (~6 minutes)
    python bench/datarater.py --speed         # the quickstart-pool fit (--meta-steps 20 for a quick look)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"
REFERENCE_SETS = [str(REFERENCE / s / "*.jsonl") for s in ("gutenberg_books", "wikipedia", "python_docs", "speeches")]


def planted_auc(out: Path, meta: dict) -> float:
    import numpy as np

    from winnow.raters.corrupt import planted_pool, roc_auc
    from winnow.raters.datarater_scorer import DataRaterScorer, train_datarater

    texts, clean, kinds = planted_pool(REFERENCE, 900, seed=0)
    inner, target = texts[:500], [t for t, c in zip(texts[500:700], clean[500:700], strict=True) if c]
    t0 = time.perf_counter()
    summary = train_datarater(inner, target, str(out / "planted"), {"threads": 1, **meta}, vocab_size=1024,
                              log=print)
    scores = DataRaterScorer(str(out / "planted"), meta.get("device", "auto"), threads=1).score(texts[700:])
    test_clean, test_kinds = clean[700:], np.array(kinds[700:])
    per_kind = {k: roc_auc(scores[test_clean | (test_kinds == k)], test_clean[test_clean | (test_kinds == k)])
                for k in ("shuffled", "random_chars", "mojibake")}
    curve = summary["meta_loss"]
    fifth = max(1, len(curve) // 5)
    print(f"planted: {summary['meta_steps']} meta-steps in {time.perf_counter() - t0:.0f} s, "
          f"{summary['flops']['total']:.3g} FLOPs; meta-loss by fifth: "
          + ", ".join(f"{np.mean(curve[i:i + fifth]):.3f}" for i in range(0, len(curve), fifth)))
    print("planted AUC per corruption: " + ", ".join(f"{k} {v:.3f}" for k, v in per_kind.items()))
    return roc_auc(scores, test_clean)


def winnow_run(config: dict, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--quiet"], cwd=REPO, check=True)


def curate(web: Path, out: Path, keeps: list[float], meta: dict) -> dict[str, str]:
    """Arms name -> stage folder: the DataRater and fastText at each kept fraction."""
    source = {"paths": [str(web / "03-heuristics" / "train-*.parquet")]}
    target = {"paths": REFERENCE_SETS, "heldout_fraction": 0.2}
    arms = {}
    device = meta.pop("device", "auto")
    for kind, first in (("datarater", {"target": target, "pool_docs": 1000, "meta": meta, "device": device}),
                        ("fasttext_quality", {"positives": target, "train_args": {"bucket": 200000}})):
        model = None
        for keep in keeps:
            name = f"{'dr' if kind == 'datarater' else 'ft'}{round(100 * keep)}"
            block = dict(first) if model is None else {"model": model}
            cfg = {"input": source, "output": str(out / name), "stages": [{kind: {**block, "keep_top": keep}}]}
            t0 = time.perf_counter()
            winnow_run(cfg, out / "configs" / f"{name}.yaml")
            print(f"{name}: {time.perf_counter() - t0:.0f} s")
            stage = out / name / f"01-{kind}"
            model = model or str(stage / ("datarater" if kind == "datarater" else "model.bin"))
            arms[name] = str(stage)
    return arms


def matmul_peak_gflops(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """Measured fp32 matmul rate (n x n x n, best of `repeats`) on `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats + 3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def quickstart_pool(out: Path) -> Path:
    """The quickstart's rows after `fasttext_quality`: its stages up to there are run once into `out` (the
    quickstart's own `datarater` stage, which comes next, is what this bench times on its own)."""
    import yaml

    stages = sorted(out.glob("*-fasttext_quality"))
    if not stages or not (stages[0] / "_manifest.json").exists():
        config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
        names = [next(iter(stage)) for stage in config["stages"]]
        config["stages"] = config["stages"][:names.index("fasttext_quality") + 1]
        config["output"] = str(out)
        path = out.parent / "configs" / "quickstart-pool.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--quiet"], cwd=REPO, check=True)
        stages = sorted(out.glob("*-fasttext_quality"))
    return stages[0]


def speed(out: Path, meta: dict) -> None:
    """The datarater stage's fit on the quickstart pool, with the CPU defaults, as `winnow run` runs it."""
    pool = quickstart_pool(out / "quickstart")
    stage = {"target": {"where": {"package": "python"}, "heldout_fraction": 0.2}, "keep_top": 0.8,
             "meta": meta}
    cfg = {"input": {"paths": [str(pool / "train-*.parquet")]}, "output": str(out / "speed"), "seed": 0,
           "stages": [{"datarater": stage}]}
    import yaml

    # from scratch: the stage resumes meta-training from a checkpoint in its folder, even a finished one (only
    # `run --force` discards it), and a second run into the same --out would time that instead of a fit
    shutil.rmtree(out / "speed", ignore_errors=True)
    path = out / "configs" / "speed.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--force", "--quiet"], cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)   # the run and every worker it reaped
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    manifest = json.loads(next((out / "speed").glob("*-datarater/_manifest.json")).read_text())
    fit, flops, steps = manifest["fit_seconds"], manifest["training_flops"], manifest["meta"]["steps"]
    peak = matmul_peak_gflops(os.cpu_count() or 1)
    print(f"quickstart pool: {manifest['meta']['inner_documents']} inner documents, "
          f"{manifest['meta']['outer_documents']} target documents; {steps} meta-steps, {flops:.3g} FLOPs")
    print(f"datarater fit seconds: {fit:.1f}")
    print(f"system time share: {system / max(user + system, 1e-9):.3f}")
    print(f"whole run {wall:.1f} s: user {user:.1f} s, sys {system:.1f} s (process tree)")
    print(f"meta-steps/s: {steps / fit:.3f} (the fit includes the tokenizer and the models' plain pre-training)")
    print(f"GFLOP/s: {flops / fit / 1e9:.1f} of a measured fp32 matmul peak {peak:.1f} "
          f"({os.cpu_count()} threads, 1024^3): {flops / fit / 1e9 / peak:.0%}")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web-out", default=str(REPO / "out" / "web-quality"))
    ap.add_argument("--out", default=str(REPO / "out" / "bench-datarater"))
    ap.add_argument("--meta-steps", type=int, default=None, help="default: MetaConfig's (the CPU default the "
                    "speed target names)")
    ap.add_argument("--keeps", default="0.9,0.75,0.5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1e12)
    ap.add_argument("--heldout-tokens", type=int, default=50_000)
    ap.add_argument("--skip-web", action="store_true")
    ap.add_argument("--speed", action="store_true", help="only the quickstart-pool fit, timed (issue 25)")
    ap.add_argument("--device", default="auto", help="meta-training, scoring and proxy runs (cuda on a GPU box)")
    ap.add_argument("--meta-json", default="{}", help='MetaConfig overrides, e.g. \'{"inner_d": 256, "n_models": 4}\'')
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "base"], help="proxy size for winnow eval")
    ap.add_argument("--seq-len", type=int, default=256, help="proxy row length for winnow eval")
    args = ap.parse_args()
    out = Path(args.out)
    steps = {} if args.meta_steps is None else {"meta_steps": args.meta_steps}
    meta = {**steps, "device": args.device, **json.loads(args.meta_json)}
    if args.speed:
        speed(out, {**steps, **json.loads(args.meta_json)})
        return

    print(f"datarater auc: {planted_auc(out, meta):.3f}")
    if args.skip_web:
        return
    web = Path(args.web_out)
    if not (web / "03-heuristics" / "_manifest.json").exists():
        subprocess.run([sys.executable, "-m", "winnow", "run", "configs/web-quality.yaml", "--set", f"output={web}",
                        "--quiet"], cwd=REPO, check=True)
    arms = {"rules": str(web / "03-heuristics"),
            **curate(web, out, [float(k) for k in args.keeps.split(",")], dict(meta))}

    from winnow.proxy.evaluate import EvalConfig, run_eval
    from winnow.proxy.summary import describe

    cfg = EvalConfig(arms=arms, output=str(out / "eval"), pool_heldout_fraction=0.05, pool_tokens=args.heldout_tokens,
                     heldout={"reference": {"paths": REFERENCE_SETS, "tokens": args.heldout_tokens,
                                            "heldout_fraction": 0.2}},
                     primary_eval="pool", vocab_size=4096, size=args.size, seq_len=args.seq_len, batch_size=8,
                     lr=4e-3 if args.size == "tiny" else 1e-3, device=args.device,
                     flop_budget=args.budget, baseline_budgets=[0.5, 1.0, 2.0, 4.0], seeds=list(range(args.seeds)),
                     n_evals=1)
    t0 = time.perf_counter()
    report = run_eval(cfg, log=lambda *a: None)
    print(f"\nwinnow eval: {len(report['runs'])} runs in {time.perf_counter() - t0:.0f} s; baseline {report['baseline']}")
    for name, cost in report["curation"].items():
        if cost["scoring_flops"] or cost["one_off_flops"]:
            print(f"  {name}: scoring {cost['flops_per_kept_token']:,.0f} FLOPs per kept token, with the fit "
                  f"{cost['flops_per_kept_token_with_fit']:,.0f}")
    print(f"{'arm':6} {'set':10} {'multiplier ± std [95% CI]':32} {'net':>6} {'w/ fit':>7}  per seed")
    for name, by_set in report["arms"].items():
        for eval_set, s in by_set.items():
            seeds = " ".join(f"{p['multiplier']:.2f}{'' if p['status'] == 'interpolated' else '*'}" for p in s["per_seed"])
            print(f"{name:6} {eval_set:10} {describe(s):32} {s['net_multiplier']:6.2f} {s['net_multiplier_with_fit']:7.2f}  {seeds}")
    print("(* = a bound: the baseline's runs did not bracket that loss)")

    from winnow.raters.analysis import stage_scores

    learned = stage_scores(arms["dr75"])["datarater_score"]
    print("\nwhat the rater learned (web pool after the rules, Spearman with the score): "
          + ", ".join(f"{k} {v:+.2f}" for k, v in learned["spearman"].items()))
    for label in ("lowest", "highest"):
        for ex in learned[label]:
            print(f"  {label} {ex['score']:+.3f}: {ex['first_line']}")
    (out / "summary.json").write_text(json.dumps({"arms": report["arms"], "learned": learned}, indent=1))


if __name__ == "__main__":
    main()
