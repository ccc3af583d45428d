"""One ablation table: each curation stage alone on the raw web pool, and the stages cumulatively.

Arms (issue 24 §3), all built from `../shared/data/web` with `winnow run`:
- `raw`: the ingested pool (the baseline);
- each stage ALONE on raw: `rules` (normalize + exact dedup + datatrove's Gopher/C4/FineWeb filters,
  as configs/web-quality.yaml has them), `minhash`, `line_dedup`, `semdedup`, `fasttext30` (DCLM-style
  fastText, reference positives, top 30%), `perplexity` (lowest 70% perplexity), `datarater` (top 75%,
  target: the reference set), `decontam` (HellaSwag/PIQA/GSM8K 13-grams, drop);
- the stages CUMULATIVELY in that order, one run whose stage folders are the arms: `cum+minhash` is
  rules then MinHash, ..., `cum+decontam` is every stage. `rules` is that run's rule-stage folder.
The perplexity reference is a tiny LM trained on the reference set (`reference: trained`): SmolLM2-135M
costs ~1.4 s a passage on one CPU thread, about 4 hours for the raw pool. The DataRater is meta-trained
once, on the raw pool (the alone arm), and reused with `model:` in the cumulative chain (its fit cost
travels with it). `rephrase` is listed as skipped: SmolLM2-135M on CPU generates a few tokens/s and
its guard keeps 20% of rewrites (bench/LOG.md), hours for 10% of the pool, and it hurt at this scale.

Then ONE `winnow eval` over every arm (the evaluate API, its config also written as OUT/eval.yaml):
tiny proxies by default, the baseline at 0.25-4x the budget, `pool` (the raw pool's 5% id-hash slice)
and `reference` (books, Wikipedia, Python docs, speeches: the 20% slice no stage trained on) held-out
sets, training-only and net multipliers with 95% t-intervals over seeds. The table goes to stdout and
OUT/ablation.md; `winnow report OUT/cumulative --eval OUT/eval` renders the eval (the script writes
OUT/cumulative/report.html at the end).

    python bench/ablation.py --quick        # smoke run: 3 arms, 1 seed, tiny budget (a few minutes)
    python bench/ablation.py                # every arm, 3 seeds, tiny proxies at 1.5e12 FLOPs (see bench/LOG.md)
    python bench/ablation.py --arms rules,fasttext30,cum+fasttext30 --seeds 3
    python bench/ablation.py --size small --seq-len 1024 --budget 1e15 --device cuda   # bench/gpu/ablation.sh
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_SOURCES = ("gutenberg_books", "wikipedia", "python_docs", "speeches")
CHAIN = ["rules", "minhash", "line_dedup", "semdedup", "fasttext30", "perplexity", "datarater", "decontam"]
CUMULATIVE = [f"cum+{name}" for name in CHAIN[1:]]
SKIPPED = {"rephrase": "SmolLM2-135M on 2 CPU cores: a few tokens/s and the guard keeps ~20% of rewrites "
                       "(bench/LOG.md, session 4): hours for 10% of the pool, and it lowered the multiplier "
                       "(0.58 on reference) where it was measured"}
QUICK_ARMS = "rules,fasttext30,cum+minhash"


def stage_blocks(name: str, data: Path, meta_steps: int, device: str) -> list[dict]:
    """The winnow stages that make the curation step `name` (one of CHAIN)."""
    reference = {"paths": [str(data / "reference" / "**" / "*.jsonl")], "heldout_fraction": 0.2}
    eval_data = data / "eval"
    blocks = {
        "rules": [{"normalize": {}}, {"exact_dedup": {}},
                  {"heuristics": {"gopher_quality": {}, "gopher_repetition": {}, "c4_quality": {},
                                  "fineweb_quality": {}}}],
        "minhash": [{"minhash_dedup": {"ngram": 5, "bands": 14, "rows": 8}}],
        "line_dedup": [{"line_dedup": {}}],
        "semdedup": [{"semantic_dedup": {"eps": 0.05, "device": device}}],
        "fasttext30": [{"fasttext_quality": {"positives": reference, "keep_top": 0.3,
                                             "train_args": {"bucket": 200000}}}],
        "perplexity": [{"perplexity_quality": {"reference": "trained", "positives": reference, "keep_top": 0.7,
                                               "device": device}}],
        "datarater": [{"datarater": {"target": reference, "pool_docs": 1000, "keep_top": 0.75, "device": device,
                                     "meta": {"meta_steps": meta_steps}}}],
        "decontam": [{"decontaminate": {
            "benchmarks": [
                {"name": "hellaswag", "paths": [str(eval_data / "hellaswag" / "*.jsonl")], "fields": ["ctx", "endings"]},
                {"name": "piqa", "paths": [str(eval_data / "piqa" / "valid.jsonl")], "fields": ["goal", "sol1", "sol2"]},
                {"name": "gsm8k", "paths": [str(eval_data / "gsm8k" / "test.jsonl")], "fields": ["question", "answer"]}],
            "ngram": 13, "min_item_words": 8, "action": "drop"}}],
    }
    return blocks[name]


def stage_name(block: dict) -> str:
    return next(iter(block))


def winnow_run(stages: list[dict], data: Path, out: Path, configs: Path) -> float:
    """`winnow run` of these stages on the raw web pool into `out` (resumable); returns its wall seconds."""
    import yaml

    cfg = {"input": {"paths": [str(data / "web" / "**" / "*.jsonl")], "text_field": "text", "id_field": "id"},
           "output": str(out), "seed": 0, "stages": stages}
    path = configs / f"{out.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--quiet"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def stage_folder(run: Path, stage: str) -> Path:
    """The stage folder `NN-stage` of a finished run (the last one of that name)."""
    found = sorted(run.glob(f"[0-9][0-9]-{stage}"))
    if not found or not (found[-1] / "_manifest.json").exists():
        raise FileNotFoundError(f"no finished {stage} stage in {run}")
    return found[-1]


def build_arms(wanted: list[str], data: Path, out: Path, meta_steps: int, device: str,
               log=print) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    """(arm -> stage folder, skipped arm -> why, run -> wall seconds). Alone runs first (the cumulative
    chain reuses the DataRater and the perplexity reference they fit), then the cumulative run."""
    arms: dict[str, str] = {}
    skipped: dict[str, str] = {}
    walls: dict[str, float] = {}
    configs = out / "configs"
    models: dict[str, str] = {}
    for name in CHAIN[1:]:
        if name not in wanted:
            continue
        blocks = stage_blocks(name, data, meta_steps, device)
        try:
            walls[f"alone-{name}"] = winnow_run(blocks, data, out / f"alone-{name}", configs)
        except subprocess.CalledProcessError as err:
            skipped[name] = f"winnow run failed (exit {err.returncode}): {configs / f'alone-{name}.yaml'}"
            log(f"{name}: {skipped[name]}")
            continue
        folder = stage_folder(out / f"alone-{name}", stage_name(blocks[-1]))
        arms[name] = str(folder)
        if name == "datarater":
            models[name] = str(folder / "datarater")
        if name == "perplexity":
            models[name] = str(folder / "reference_lm")
        log(f"{name}: {walls[f'alone-{name}']:.0f} s")
    deepest = max([CUMULATIVE.index(a) + 1 for a in wanted if a in CUMULATIVE], default=0)
    chain = CHAIN[:deepest + 1]
    stages: list[dict] = []
    ends: dict[str, str] = {}
    for name in chain:
        blocks = stage_blocks(name, data, meta_steps, device)
        if name in models:   # the model the alone arm fit, as `model:` (its fit cost is charged with it)
            kind = stage_name(blocks[0])
            keep = {k: v for k, v in blocks[0][kind].items() if k in ("keep_top", "device")}
            blocks = [{kind: {"model": models[name], **keep}}]
        stages += blocks
        ends[name] = stage_name(blocks[-1])
    try:
        walls["cumulative"] = winnow_run(stages, data, out / "cumulative", configs)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"the cumulative run (raw and rules come from it) failed: exit {err.returncode}, "
                         f"config {configs / 'cumulative.yaml'}") from err
    log(f"cumulative ({' > '.join(chain)}): {walls['cumulative']:.0f} s")
    cum = out / "cumulative"
    baseline = {"raw": str(stage_folder(cum, "ingest"))}
    arms["rules"] = str(stage_folder(cum, ends["rules"]))
    for name in chain[1:]:
        arms[f"cum+{name}"] = str(stage_folder(cum, ends[name]))
    ordered = {**baseline, **{a: arms[a] for a in ["rules", *CHAIN[1:], *CUMULATIVE] if a in arms and a in wanted}}
    return ordered, skipped, walls


def documents(folder: str) -> int:
    return int(json.loads((Path(folder) / "_manifest.json").read_text())["totals"]["kept"])


def cell(s: dict, key: str = "multiplier", interval: str = "interval") -> str:
    """`1.23 ± 0.10 [0.98, 1.48]`, `≥ 4.00` when every seed is a lower bound, `≤ 0.25` an upper one."""
    value = s[key]
    statuses = set(s["status"])
    if statuses == {"not_reached"}:
        return f"≥ {value:.2f}"
    if statuses == {"below_range"}:
        return f"≤ {value:.2f}"
    if statuses != {"interpolated"}:
        return f"{value:.2f} (bound: seeds {', '.join(map(str, s['bounded_seeds']))})"
    text = f"{value:.2f}"
    if key == "multiplier" and s["std"] is not None:
        text += f" ± {s['std']:.2f}"
    if s[interval]:
        text += f" [{s[interval][0]:.2f}, {s[interval][1]:.2f}]"
    return text


def describe_arm(name: str) -> str:
    if name == "raw":
        return "the raw pool (baseline)"
    if name.startswith("cum+"):
        return " > ".join(CHAIN[:CHAIN.index(name[4:]) + 1])
    return f"{name} alone"


def table(report: dict, arms: dict[str, str]) -> list[str]:
    sets = report["eval_sets"]
    head = ["arm", "stages", "documents", "unique tokens"]
    for s in sets:
        head += [f"{s}: M ± std [95% CI]", f"{s}: net [95% CI]"]
    head.append("net with fit (" + " / ".join(sets) + ")")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, folder in arms.items():
        row = [name, describe_arm(name), f"{documents(folder):,}", f"{report['unique_tokens'][name]:,}"]
        if name == report["baseline"]:
            row += ["1 (baseline)", "1"] * len(sets) + ["1"]
        else:
            by_set = report["arms"][name]
            for s in sets:
                row += [cell(by_set[s]), cell(by_set[s], "net_multiplier", "net_interval")]
            row.append(" / ".join(f"{by_set[s]['net_multiplier_with_fit']:.2f}" for s in sets))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def per_seed_lines(report: dict) -> list[str]:
    out = []
    for name, by_set in report["arms"].items():
        for s, stats in by_set.items():
            seeds = ", ".join(f"{p['multiplier']:.2f}" + ("" if p["status"] == "interpolated" else f" ({p['status']})")
                              for p in stats["per_seed"])
            out.append(f"- {name} on {s}: per seed {seeds}; {stats['note']}")
    return out


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"smoke run: arms {QUICK_ARMS}, 1 seed, 2e11 FLOPs, "
                    "20k held-out tokens, baseline at 0.5-2x")
    ap.add_argument("--arms", default=None, help="comma-separated subset of: " + ", ".join(CHAIN + CUMULATIVE)
                    + " (default: all; raw is always the baseline)")
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--seeds", type=int, default=None, help="default 3 (--quick: 1)")
    ap.add_argument("--budget", type=float, default=None, help="training FLOPs per curated run (default 1.5e12; "
                    "--quick: 2e11)")
    ap.add_argument("--baseline-budgets", default=None, help="multiples of --budget for the baseline (default "
                    "0.25,0.5,1,2,4: the pool multipliers of heavy filters sit below 0.5; --quick: 0.5,1,2)")
    ap.add_argument("--heldout-tokens", type=int, default=None, help="tokens per held-out set (default 100k; "
                    "--quick: 20k)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="default 4e-3 for tiny, 1e-3 otherwise")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--n-evals", type=int, default=1)
    ap.add_argument("--meta-steps", type=int, default=200, help="DataRater meta-training steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the proxy runs (default: torch's; "
                    "1 is ~3x faster than 2 on 2 cores that other jobs share: oversubscribed threads spin)")
    ap.add_argument("--device", default="auto", help="proxy runs and model stages (cuda on a GPU box)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the shared data folder")
    ap.add_argument("--out", default=None, help="default out/ablation (--quick: out/ablation-quick)")
    ap.add_argument("--build-only", action="store_true", help="build the arms, no eval")
    ap.add_argument("--bundle", default=None, help="also write the built arms as a carryable bundle here "
                    "(bench/ablation_bundle.py)")
    ap.add_argument("--from-bundle", default=None, help="no curation: evaluate the arms of this bundle (a machine "
                    "without dask/datatrove, bench/gpu/ablation.sh)")
    args = ap.parse_args()
    quick = args.quick
    wanted = [a.strip() for a in (args.arms or (QUICK_ARMS if quick else ",".join(CHAIN + CUMULATIVE))).split(",")]
    unknown = [a for a in wanted if a not in CHAIN + CUMULATIVE]
    if unknown:
        ap.error(f"unknown arms {unknown}: choose from {CHAIN + CUMULATIVE}")
    seeds = args.seeds or (1 if quick else 3)
    budget = args.budget or (2e11 if quick else 1.5e12)
    baseline_budgets = [float(b) for b in (args.baseline_budgets or ("0.5,1,2" if quick else "0.25,0.5,1,2,4"))
                        .split(",")]
    heldout_tokens = args.heldout_tokens or (20_000 if quick else 100_000)
    lr = args.lr or (4e-3 if args.size == "tiny" else 1e-3)
    out = Path(args.out or REPO / "out" / ("ablation-quick" if quick else "ablation")).resolve()
    data = Path(args.data).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/ablation.py " + " ".join(sys.argv[1:])

    t0 = time.perf_counter()
    if args.from_bundle:
        from ablation_bundle import materialize

        built = materialize(Path(args.from_bundle), out)
        arms = {a: f for a, f in built.items() if a == "raw" or a in wanted}
        skipped, walls = {}, {}
    else:
        arms, skipped, walls = build_arms(wanted, data, out, args.meta_steps, args.device)
    curation_s = time.perf_counter() - t0
    if args.bundle:
        from ablation_bundle import write_bundle

        print(f"bundle {args.bundle}: {write_bundle(arms, Path(args.bundle))}")
    if args.build_only:
        print(json.dumps({"arms": arms, "skipped": skipped, "walls": walls}, indent=1))
        return

    import yaml

    from winnow.proxy.evaluate import EvalConfig, run_eval

    ref = [str(data / "reference" / s / "*.jsonl") for s in REFERENCE_SOURCES]
    cfg = EvalConfig(arms=arms, baseline="raw", output=str(out / "eval"), pool_heldout_fraction=0.05,
                     pool_tokens=heldout_tokens, primary_eval="reference",
                     heldout={"reference": {"paths": ref, "tokens": heldout_tokens, "heldout_fraction": 0.2}},
                     vocab_size=args.vocab, size=args.size, seq_len=args.seq_len, batch_size=args.batch_size, lr=lr,
                     flop_budget=budget, baseline_budgets=baseline_budgets, seeds=list(range(seeds)),
                     n_evals=args.n_evals, device=args.device)
    (out / "eval.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    report = run_eval(cfg)
    eval_s = time.perf_counter() - t1

    runs = report["runs"]
    heldout = "; ".join(f"`{n}` {h['documents']:,} documents / {h['tokens']:,} tokens" for n, h in
                        report["heldout"].items())
    lines = [f"## ablation: each stage alone and cumulatively on the raw web pool (`{command}`)", "",
             f"Commit {git_commit()}. Proxy `{args.size}`, rows of {args.seq_len}, batch {args.batch_size}, lr {lr:g}, "
             f"vocabulary {args.vocab:,}, {args.threads or 'default'} torch threads, {budget:.3g} training FLOPs per curated run, baseline `raw` at "
             f"{', '.join(f'{b:g}' for b in baseline_budgets)}x, seeds 0-{seeds - 1}. Held-out: {heldout}. "
             f"{len(runs)} proxy runs, {sum(r['flops'] for r in runs):.3g} training FLOPs; curation "
             f"{curation_s:.0f} s wall (" + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
             + f"), eval {eval_s:.0f} s wall.", "",
             *table(report, arms), "",
             "M: training FLOPs the baseline needs to reach the arm's held-out loss / the arm's (mean ± sample std "
             "over seeds, 95% t-interval). Net: the curation's scoring FLOPs charged per trained token; with fit: "
             "the models' one-off training too. ≥ / ≤: every seed outside the baseline's runs (a bound).", ""]
    lines += ["Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in {**SKIPPED, **skipped}.items()), ""]
    lines += per_seed_lines(report)
    text = "\n".join(lines) + "\n"
    (out / "ablation.md").write_text(text)
    (out / "ablation.json").write_text(json.dumps({"command": command, "arms": arms, "skipped": {**SKIPPED, **skipped},
                                                   "walls": walls, "curation_s": curation_s, "eval_s": eval_s,
                                                   "multipliers": report["arms"],
                                                   "unique_tokens": report["unique_tokens"]}, indent=1))
    print("\n" + text)
    if args.from_bundle:   # no winnow run here to report on: eval.json and ablation.md are the record
        print(f"table: {out / 'ablation.md'}")
        return
    page = subprocess.run([sys.executable, "-m", "winnow", "report", str(out / "cumulative"), "--eval",
                           str(out / "eval")], cwd=REPO, capture_output=True, text=True)
    print(f"table: {out / 'ablation.md'}; report: {page.stdout.strip() or page.stderr.strip()[-500:]}")


if __name__ == "__main__":
    main()
