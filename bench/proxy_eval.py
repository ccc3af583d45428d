"""Compute multiplier of winnow's rule-based curation on the web sample, with proxy LMs.

Arms: the raw web sample (winnow's ingest output, `00-ingest`) against the same after normalize,
exact dedup and the four datatrove heuristics (`03-heuristics`), both from `configs/web.yaml`
(run first if its output is missing; resumable). Held-out: the reference set
(../shared/data/reference: books, Wikipedia, Python docs, speeches) is what the multiplier uses;
a 5% slice of the raw pool that no arm trains on is reported beside it. Baseline runs at 0.5x,
1x, 2x and 4x the budget, each annealed; 2 seeds.

    python bench/proxy_eval.py                       # CPU: tiny proxies, a few minutes
    python bench/proxy_eval.py --size small --seq-len 1024 --budget 2e15 --device cuda   # GPU
Prints tokens/s, the FLOP utilisation estimate (achieved FLOP/s over a measured matmul peak on
CPU, over the H200's 989 TFLOP/s dense bf16 on CUDA) and ends with
`compute multiplier: X.XX ± Y.YY`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

# bench/tokenize.py shares its name with the standard library's `tokenize`; keep this folder off
# the import path so that `import tokenize` (inspect, dill, linecache) finds the real one.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web-out", default=str(REPO / "out" / "web"), help="output folder of configs/web.yaml")
    ap.add_argument("--out", default=str(REPO / "out" / "proxy-eval"))
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--budget", type=float, default=1.5e12, help="training FLOPs per curated run")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--baseline-budgets", default="0.5,1,2,4", help="multiples of --budget for the baseline runs")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    web = Path(args.web_out)
    if not (web / "03-heuristics" / "_manifest.json").exists():
        print(f"running configs/web.yaml into {web} first")
        subprocess.run([sys.executable, "-m", "winnow", "run", "configs/web.yaml", "--set", f"output={web}",
                        "--quiet"], cwd=REPO, check=True)

    from winnow.proxy.evaluate import EvalConfig, run_eval

    ref = [str(p) for p in sorted(REFERENCE.rglob("*.jsonl"))]
    cfg = EvalConfig(arms={"raw": str(web / "00-ingest"), "curated": str(web / "03-heuristics")},
                     output=args.out, pool_heldout_fraction=0.05, primary_eval="reference",
                     heldout={"reference": {"paths": ref, "max_docs": 300}},
                     vocab_size=args.vocab, size=args.size, seq_len=args.seq_len, batch_size=args.batch_size,
                     lr=args.lr, flop_budget=args.budget, seeds=list(range(args.seeds)), n_evals=3,
                     baseline_budgets=[float(b) for b in args.baseline_budgets.split(",")],
                     max_eval_rows=128, device=args.device)
    t0 = time.perf_counter()
    report = run_eval(cfg)
    wall = time.perf_counter() - t0
    runs = report["runs"]
    flops = sum(r["flops"] for r in runs)
    train_seconds = sum(r["seconds"] for r in runs)
    tok_s = sum(r["tokens_per_second"] * r["seconds"] for r in runs) / train_seconds
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and _cuda()) else "cpu"
    peak = matmul_peak(device)
    print(f"\n{len(runs)} runs, {flops:.3g} training FLOPs in {train_seconds:.0f} s of training ({wall:.0f} s wall)")
    print(f"throughput {tok_s:,.0f} tokens/s; achieved {flops / train_seconds / 1e9:,.1f} GFLOP/s = "
          f"{100 * flops / train_seconds / peak:.1f}% of {peak / 1e9:,.0f} GFLOP/s "
          f"({'H200 dense bf16 peak' if device == 'cuda' else 'measured fp32 matmul peak on this CPU'})")
    print(f"unique target tokens: {report['unique_tokens']}")
    for name, arm in report["arms"].items():
        finals = ", ".join(f"seed {p['seed']}: loss {p['final_loss']:.3f} -> M {p['multiplier']:.2f} ({p['status']})"
                           for p in arm["per_seed"])
        print(f"{name} vs {report['baseline']} on {report['eval_set']}: {finals}")
        for eval_set, m in arm["by_eval_set"].items():
            print(f"  on {eval_set}: M {m['multiplier']:.2f} ({', '.join(m['status'])})")
    print(f"plot: {report['plot']}")
    arm = report["arms"]["curated"]
    print(f"multiplier on {report['eval_set']}: {arm['note']}")
    print(f"compute multiplier: {arm['multiplier']:.2f} ± {arm['multiplier_std']:.2f}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
