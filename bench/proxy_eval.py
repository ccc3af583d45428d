"""Compute multipliers of winnow's curation on the web sample, measured with proxy LMs.

Arms, all from `configs/web-quality.yaml` (run first if its output is missing; resumable): the raw
web sample (`00-ingest`, the baseline), the rule stages (`03-heuristics`: normalize, exact dedup,
datatrove's Gopher/C4/FineWeb filters) and the rule stages plus fastText top 30%
(`04-fasttext_quality`). Held-out sets, each a source-stratified sample of 100k tokens evaluated on
every token: `pool`, from the raw pool's 5% id-hash slice that no arm trains on, and `reference`,
equal shares of books, Wikipedia, Python docs and speeches from the 20% slice the classifier never
saw. Baseline runs at 0.5x, 1x, 2x and 4x the budget, each annealed; 3 seeds; 95% t-intervals.

    python bench/proxy_eval.py                       # CPU: tiny proxies, about 15-20 minutes on 2 cores
    python bench/proxy_eval.py --size small --seq-len 1024 --budget 1e16 --device cuda   # GPU
Prints tokens/s, the FLOP utilisation (achieved FLOP/s over a measured matmul peak on CPU, over the
H200's 989 TFLOP/s dense bf16 on CUDA), every multiplier, and ends with the full chain's
`pool multiplier: X.XX ± Y.YY` and `compute multiplier: X.XX ± Y.YY` (reference set).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"
REFERENCE_SOURCES = ("gutenberg_books", "wikipedia", "python_docs", "speeches")


def matmul_peak(device: str) -> float:
    """FLOP/s of a large fp32 matmul here (CPU), or the H200's dense bf16 peak (CUDA)."""
    import torch

    if device.startswith("cuda"):
        return 989e12
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    return n * 2 * 1024**3 / (time.perf_counter() - t0)


def pm(stats: dict) -> str:
    std = "n/a (one seed)" if stats["std"] is None else f"{stats['std']:.2f}"
    ci = "" if stats["interval"] is None else f" (95% CI {stats['interval'][0]:.2f}-{stats['interval'][1]:.2f})"
    return f"{stats['multiplier']:.2f} ± {std}{ci}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web-out", default=str(REPO / "out" / "web-quality"), help="output of configs/web-quality.yaml")
    ap.add_argument("--out", default=str(REPO / "out" / "proxy-eval"))
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--budget", type=float, default=1.5e12, help="training FLOPs per curated run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--heldout-tokens", type=int, default=100_000)
    ap.add_argument("--baseline-budgets", default="0.5,1,2,4", help="multiples of --budget for the baseline runs")
    ap.add_argument("--n-evals", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    web = Path(args.web_out)
    if not (web / "04-fasttext_quality" / "_manifest.json").exists():
        print(f"running configs/web-quality.yaml into {web} first")
        subprocess.run([sys.executable, "-m", "winnow", "run", "configs/web-quality.yaml", "--set", f"output={web}",
                        "--quiet"], cwd=REPO, check=True)

    from winnow.proxy.evaluate import EvalConfig, run_eval

    ref = [str(REFERENCE / s / "*.jsonl") for s in REFERENCE_SOURCES]
    cfg = EvalConfig(arms={"raw": str(web / "00-ingest"), "rules": str(web / "03-heuristics"),
                           "rules_fasttext": str(web / "04-fasttext_quality")},
                     output=args.out, pool_heldout_fraction=0.05, pool_tokens=args.heldout_tokens,
                     primary_eval="reference",
                     heldout={"reference": {"paths": ref, "tokens": args.heldout_tokens, "heldout_fraction": 0.2}},
                     vocab_size=args.vocab, size=args.size, seq_len=args.seq_len, batch_size=args.batch_size,
                     lr=args.lr, flop_budget=args.budget, seeds=list(range(args.seeds)), n_evals=args.n_evals,
                     baseline_budgets=[float(b) for b in args.baseline_budgets.split(",")], device=args.device)
    t0 = time.perf_counter()
    report = run_eval(cfg)
    wall = time.perf_counter() - t0
    runs = report["runs"]
    flops = sum(r["flops"] for r in runs)
    train_seconds = sum(r["seconds"] for r in runs)
    tok_s = sum(r["tokens_per_second"] * r["seconds"] for r in runs) / train_seconds
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and _cuda()) else "cpu"
    peak = matmul_peak(device)
    print(f"\n{len(runs)} runs, {flops:.3g} training FLOPs in {train_seconds:.0f} s of training and evaluation "
          f"({wall:.0f} s wall)")
    print(f"throughput {tok_s:,.0f} tokens/s (evaluation included); achieved {flops / train_seconds / 1e9:,.1f} "
          f"GFLOP/s = {100 * flops / train_seconds / peak:.1f}% of {peak / 1e9:,.0f} GFLOP/s "
          f"({'H200 dense bf16 peak' if device == 'cuda' else 'measured fp32 matmul peak on this CPU'})")
    for name, s in report["heldout"].items():
        print(f"held-out {name}: {s['documents']} documents, {s['tokens']:,} tokens, sources {s['sources']}")
    print(f"unique target tokens: {report['unique_tokens']}")
    for name, cost in report["curation"].items():
        if cost["scoring_flops"] or cost["one_off_flops"]:
            print(f"curation {name}: {cost['flops_per_kept_token']:,.0f} FLOPs per kept token "
                  f"({cost['flops_per_kept_token_with_fit']:,.0f} with the classifier's fit)")
    for name, by_set in report["arms"].items():
        for eval_set, stats in by_set.items():
            seeds = ", ".join(f"{p['multiplier']:.2f} ({p['status']})" for p in stats["per_seed"])
            print(f"{name} vs {report['baseline']} on {eval_set}: M {pm(stats)}; net {stats['net_multiplier']:.2f}, "
                  f"with fit {stats['net_multiplier_with_fit']:.2f}; per seed {seeds}; {stats['note']}")
    for arm, tasks in report["downstream"].items():
        for task, res in tasks.items():
            print(f"{arm} {task}: {res['accuracy']:.3f} ± {res['stderr']:.3f} ({res['items']} items)")
    print(f"plot: {report['plot']}")
    chain = report["arms"]["rules_fasttext"]
    for eval_set in ("pool", "reference"):
        print(f"rules_fasttext on {eval_set}: {pm(chain[eval_set])}")
    print(f"pool multiplier: {chain['pool']['multiplier']:.2f} ± {chain['pool']['std'] or 0:.2f}")
    print(f"compute multiplier: {chain['reference']['multiplier']:.2f} ± {chain['reference']['std'] or 0:.2f}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
