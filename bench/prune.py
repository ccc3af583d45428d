"""Q-Tuning on GSM8K: does pruning samples and tokens by the model's own error and uncertainty beat
random pruning at the same token budget, and what does it buy against full-data SFT?

1. Base model: a winnow `tiny` proxy LM (0.8M non-embedding parameters, BPE of 4,096) pre-trained
   on the reference + web sample (`--base-flops`), saved as a winnow proxy checkpoint.
2. Q-Tuning: `winnow run` with the `prune` stage on GSM8K train (`question` prompt, `answer`
   response), the base model as the reference (the paper scores with the model being tuned),
   `r_sample` 0.25 x `r_token` 0.5, pools of 256; then `tokenize` (the base model's tokenizer) and
   `pack`. Random: documents of the full set in a seeded order until they hold as many response
   targets as the Q-Tuning arm (no token pruning). Full: every document, prompt masked.
3. SFT from the base checkpoint, seeds x arms; the full set also at 0.25x, 0.5x, 2x and 4x the budget
   (its FLOPs-to-loss curve). Loss: mean NLL of GSM8K test responses (prompts masked). Multiplier:
   full-data FLOPs to reach an arm's loss / the arm's FLOPs, where the curve brackets it; the net
   figure adds the reference model's scoring FLOPs. Exact-match accuracy is not reported: a model
   this small produces no correct GSM8K answers.

4. `--dynamic`: Q-Tuning as published instead (winnow/raters/qtuning_dynamic.py): every batch of the
   full set scored by the model being tuned and pruned with the same rule, `r_sample` and `r_token`,
   then stepped; beside it the same per-batch count of documents drawn at random (whole). Arms are
   compared at equal epochs over their own rows, as the paper does (full, static Q-Tuning, static
   random, dynamic, dynamic random), seeds x arms, final test response NLL; no FLOP curve.

    python bench/prune.py                    # CPU: about 15-25 minutes on 2 cores
    python bench/prune.py --quick            # a smoke run (1 seed, tiny budgets)
    python bench/prune.py --dynamic --n-train 400 --epochs 2 --seeds 3 --batch-size 32
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
GSM8K = SHARED / "sft" / "gsm8k"


def winnow_run(config: dict, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--quiet"], cwd=REPO, check=True)


def base_model(out: Path, flops: float, device: str, size: str, seq_len: int) -> Path:
    from winnow.pipeline.documents import read_documents
    from winnow.raters.perplexity_rater import train_reference_lm

    folder = out / "base"
    if (folder / "model.safetensors").exists():
        return folder
    _, texts = read_documents([str(p) for p in sorted((SHARED / "reference").rglob("*.jsonl"))]
                              + [str(p) for p in sorted((SHARED / "web").rglob("*.jsonl"))], 6000)
    t0 = time.perf_counter()
    train_reference_lm(texts, str(folder), size, 4096, seq_len, flops, lr=4e-3 if size == "tiny" else 1e-3,
                       device=device, log=lambda *a: None)
    print(f"base model: {size} proxy on {len(texts)} reference + web documents, {flops:.2g} FLOPs, "
          f"{time.perf_counter() - t0:.0f} s")
    return folder


def gsm8k_jsonl(split: str, out: Path, n: int | None) -> str:
    lines = (GSM8K / f"{split}.jsonl").read_text().splitlines()[:n]
    path = out / f"gsm8k-{split}-{n or 'all'}.jsonl"
    path.write_text("".join(json.dumps({"id": f"{split}-{k}", **json.loads(x)}) + "\n" for k, x in enumerate(lines)))
    return str(path)


def packed(folder: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("train-*.parquet")))


def arms(out: Path, base: Path, n_train: int | None, n_test: int, seq_len: int) -> tuple[dict, dict, float]:
    """{arm: packed table} for full, qtuning and random; the test set's packed rows; the scoring FLOPs."""
    import pyarrow as pa

    from winnow.tokenize.pack import PackParams, PackStage

    train_file = gsm8k_jsonl("train", out, n_train)
    test_file = gsm8k_jsonl("test", out, n_test)
    tokenizer = str(base / "tokenizer.json")
    common = [{"tokenize": {"tokenizer": tokenizer, "prompt_field": "question"}},
              {"pack": {"seq_len": seq_len, "strategy": "best_fit"}}]
    out = out / f"train{n_train or 'all'}-test{n_test}"
    for name, src, first in (("full", train_file, []), ("test", test_file, []),
                             ("qtuning", train_file, [{"prune": {
                                 "model": str(base), "prompt_field": "question", "response_field": "text",
                                 "r_sample": 0.25, "r_token": 0.5, "lambda": 0.5, "pool_size": 256,
                                 "max_tokens": 512}}])):
        if not (out / name / "_run.json").exists():   # runs are kept: a rerun reuses them
            winnow_run({"input": {"paths": [src], "text_field": "answer"}, "output": str(out / name),
                        "stages": first + common}, out / f"{name}.yaml")
    tables = {"full": packed(out / "full" / "02-pack"), "qtuning": packed(out / "qtuning" / "03-pack")}
    prune = json.loads((out / "qtuning" / "01-prune" / "_manifest.json").read_text())
    print(f"q-tuning: kept {prune['totals']['kept']} of {prune['totals']['rows_in']} samples; quadrants "
          f"{prune['quadrants']}; scoring {prune['scoring_flops']:.3g} FLOPs")

    # random: whole documents of the full set's tokenized rows, seeded order, up to the same targets
    tokenized = packed(out / "full" / "01-tokenize")
    target = int(sum(sum(m) for m in packed(out / "qtuning" / "02-tokenize").column("loss_mask").to_pylist()))
    order = np.random.default_rng(0).permutation(tokenized.num_rows)
    masks = tokenized.column("loss_mask").to_pylist()
    chosen, total = [], 0
    for i in order:
        if total >= target:
            break
        chosen.append(int(i))
        total += sum(masks[i])
    rows = tokenized.take(pa.array(sorted(chosen), pa.int64()))
    tables["random"], _ = PackStage(PackParams(seq_len=seq_len, strategy="best_fit")).apply(rows, 0)
    print(f"targets: full {sum(sum(m) for m in masks):,}, q-tuning {target:,}, random {total:,} "
          f"({len(chosen)} samples)")
    return tables, {"test": packed(out / "test" / "02-pack")}, float(prune["scoring_flops"])


def equal_epochs(args, base: Path, rows: dict, test: dict, vocab: int, scoring: float) -> None:
    """Each arm `args.epochs` passes over its own rows: full, static Q-Tuning, static random, and the
    dynamic rule (and its random control) over the full set; final test response NLL per seed."""
    from winnow.proxy.flops import flops_per_token
    from winnow.proxy.model import config_for
    from winnow.proxy.train import TrainConfig, train
    from winnow.raters.qtuning_dynamic import DynamicParams, DynamicSelector

    per_token = flops_per_token(config_for(args.size, vocab, args.seq_len), args.seq_len)
    arms = {"full": None, "qtuning": None, "random": None, "dynamic": "qtuning", "dynamic_random": "random"}
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for arm, selection in arms.items():
            data = rows["full"] if selection else rows[arm]
            steps = max(1, round(args.epochs * len(data) / args.batch_size))
            cfg = TrainConfig(size=args.size, seq_len=args.seq_len, batch_size=args.batch_size, lr=1e-3,
                              flop_budget=steps * args.batch_size * args.seq_len * per_token, n_evals=1, seed=seed,
                              device=args.device, init_checkpoint=str(base / "model.safetensors"))
            selector = None
            if selection:
                selector = DynamicSelector(DynamicParams(r_sample=0.25, r_token=0.5, lam=0.5, selection=selection,
                                                         seed=seed), flops_per_scored_position=per_token / 3)
            r = train(cfg, vocab, data, test, log=lambda *a: None, select_batch=selector)
            extra = selector.summary() if selector else {}
            scored = extra.get("scoring_flops", scoring if arm == "qtuning" else 0.0)
            row = {"loss": r["points"][-1]["eval"]["test"], "flops": r["flops"], "scoring_flops": scored,
                   "target_tokens": r["target_tokens"], "epochs": r["epochs"], "seconds": r["seconds"], **extra}
            results.setdefault(arm, []).append(row)
            print(f"  seed {seed} {arm:14} {r['epochs']:.2f} epochs of {len(data)} rows, {r['flops']:.3g} FLOPs "
                  f"+ {scored:.3g} scoring, {r['target_tokens']:,} targets trained: test response NLL "
                  f"{row['loss']:.4f}" + (f" (kept {extra['kept_share']:.3f} of documents, "
                                          f"{extra['target_share']:.3f} of targets)" if extra else ""), flush=True)
    print(f"SFT runs: {time.perf_counter() - t0:.0f} s")
    print(f"\n| arm ({args.epochs} epochs over its rows) | rows | targets trained | training FLOPs | scoring FLOPs | "
          f"test response NLL (mean ± sd over {args.seeds} seeds) | per seed |")
    print("|---|---|---|---|---|---|---|")
    for arm, runs in results.items():
        losses = np.array([x["loss"] for x in runs])
        sd = float(np.std(losses, ddof=1)) if len(losses) > 1 else float("nan")
        data = rows["full"] if arms[arm] else rows[arm]
        print(f"| {arm} | {len(data)} | {int(np.mean([x['target_tokens'] for x in runs])):,} | "
              f"{np.mean([x['flops'] for x in runs]):.3g} | {np.mean([x['scoring_flops'] for x in runs]):.3g} | "
              f"{losses.mean():.4f} ± {sd:.4f} | {', '.join(f'{x:.4f}' for x in losses)} |")
    (Path(args.out) / "equal_epochs.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "bench-prune"))
    ap.add_argument("--n-train", type=int, default=None, help="GSM8K train problems (default: all 7,473)")
    ap.add_argument("--base-flops", type=float, default=3e12)
    ap.add_argument("--n-test", type=int, default=300, help="GSM8K test problems evaluated (of 1,319)")
    ap.add_argument("--epochs", type=float, default=3.0, help="SFT budget: this many passes over the Q-Tuning "
                    "arm's rows (the paper trains 3 epochs); the random arm gets the same FLOPs")
    ap.add_argument("--budget", type=float, default=None, help="SFT FLOPs of each pruned arm's run (overrides --epochs)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--scales", default="0.25,0.5,1,2,4", help="budgets of the full-data curve, x the pruned runs'")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dynamic", action="store_true", help="equal-epochs comparison with Q-Tuning scored per batch "
                    "by the model being tuned (and its random control)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per SFT step (the dynamic rule's quantiles "
                    "come from the documents of one batch: 32 rows or more)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.quick:
        args.n_train, args.n_test, args.base_flops, args.epochs, args.seeds = 600, 100, 3e11, 1.0, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from winnow.proxy.data import rows_from_table
    from winnow.proxy.multiplier import multiplier
    from winnow.proxy.train import TrainConfig, train
    from winnow.tokenize.tokenizer import load_tokenizer

    base = base_model(out, args.base_flops, args.device, args.size, args.seq_len)
    tables, evals, scoring = arms(out, base, args.n_train, args.n_test, args.seq_len)
    rows = {k: rows_from_table(t) for k, t in tables.items()}
    if args.budget is None:
        from winnow.proxy.flops import flops_per_token
        from winnow.proxy.model import config_for

        per_token = flops_per_token(config_for(args.size, 4096, args.seq_len), args.seq_len)
        args.budget = args.epochs * len(rows["qtuning"]) * args.seq_len * per_token
        print(f"SFT budget: {args.epochs} epochs of the Q-Tuning arm's {len(rows['qtuning'])} rows = "
              f"{args.budget:.3g} FLOPs per pruned run")
    test = {k: rows_from_table(t) for k, t in evals.items()}
    vocab = load_tokenizer(str(base)).get_vocab_size()
    if args.dynamic:
        equal_epochs(args, base, rows, test, vocab, scoring)
        return
    results: dict[str, list[tuple[float, float]]] = {}
    curve_scales = tuple(sorted({float(x) for x in args.scales.split(",")} | {1.0}))
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for arm, scales in (("full", curve_scales), ("qtuning", (1.0,)), ("random", (1.0,))):
            for scale in scales:
                cfg = TrainConfig(size=args.size, seq_len=args.seq_len, batch_size=args.batch_size, lr=1e-3, flop_budget=args.budget * scale,
                                  n_evals=1, seed=seed, device=args.device,
                                  init_checkpoint=str(base / "model.safetensors"))
                r = train(cfg, vocab, rows[arm], test, log=lambda *a: None)
                loss = r["points"][-1]["eval"]["test"]
                results.setdefault(f"{arm}@{scale}", []).append((r["flops"], loss))
                print(f"  seed {seed} {arm:8} x{scale:<4} {r['flops']:.3g} FLOPs, {r['epochs']:.2f} epochs: "
                      f"test response NLL {loss:.4f}", flush=True)
    print(f"SFT runs: {time.perf_counter() - t0:.0f} s")
    for arm in ("qtuning", "random"):
        ms, nets, statuses = [], [], []
        for seed in range(args.seeds):
            curve = [results[f"full@{s}"][seed] for s in curve_scales]
            flops, loss = results[f"{arm}@1.0"][seed]
            m = multiplier(loss, flops, curve, scoring if arm == "qtuning" else 0.0)
            ms.append(m["multiplier"])
            nets.append(m["net_multiplier"])
            statuses.append(m["status"])
        mean, std = float(np.mean(ms)), float(np.std(ms, ddof=1)) if len(ms) > 1 else float("nan")
        print(f"compute multiplier [{arm} vs full SFT, GSM8K test response NLL]: {mean:.2f} ± {std:.2f} "
              f"(seeds {', '.join(f'{x:.2f}' for x in ms)}; {', '.join(statuses)}); net of scoring "
              f"{float(np.mean(nets)):.2f}")
    full = [loss for _, loss in results["full@1.0"]]
    for arm in ("qtuning", "random"):
        losses = [loss for _, loss in results[f"{arm}@1.0"]]
        print(f"  {arm:8} NLL {np.mean(losses):.4f} vs full at the same FLOPs {np.mean(full):.4f}")


if __name__ == "__main__":
    main()
