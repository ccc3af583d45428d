"""Rephrasing (WRAP) on CPU: the stage's overhead, the faithfulness guard on real web chunks, and the
compute multiplier of real + rephrased text.

1. Throughput, per local backend installed (llama_cpp, transformers): the same chunks rewritten
   (wiki style, greedy, so both sides generate the same tokens) by the backend called bare in this
   process and by `winnow run` with the `rephrase` stage (one Dask worker with the same threads, a
   fresh cache). Both times include loading the model. Prints chunks/s, generated tokens/s and
   `rephrase throughput winnow/bare: X.XX`; with `--throughput-repeats N` the two run N times in turn
   and the ratio is the median (one pair's ratio spreads over 0.8-1.0 on a shared 2-core machine).
2. Guard: `--chunks` chunks (default 200) of the curated web sample (configs/web-quality.yaml's
   fastText top 30%, documents taken in id-hash order until they hold that many chunks) through the
   stage with the default model and backend, `synthetic_ratio: 1.0`: drop rate by reason, examples.
3. Multiplier: `winnow eval` of those documents alone (baseline) against the same documents plus
   their kept rewrites, on the pool's held-out slice (rewrites of its documents are excluded with
   them) and on the reference slice: training-only and net of generation FLOPs.

    python bench/rephrase.py                  # CPU: about 25-35 minutes on 2 cores
    python bench/rephrase.py --quick          # 4 chunks per part, 1 seed: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"
REFERENCE_SETS = [str(REFERENCE / s / "*.jsonl") for s in ("gutenberg_books", "wikipedia", "python_docs", "speeches")]


def winnow_run(config: dict, path: Path) -> float:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "winnow", "run", str(path), "--quiet"], cwd=REPO, check=True)
    return time.perf_counter() - t0


def curated_docs(web: Path, n_chunks: int, min_tokens: int = 32) -> list[dict]:
    """Curated web documents in seeded id-hash order until they hold `n_chunks` rephrasable chunks."""
    import pyarrow.parquet as pq
    import xxhash

    from winnow.synth.chunking import count_tokens, split_chunks

    stage = web / "04-fasttext_quality"
    if not (stage / "_manifest.json").exists():
        subprocess.run([sys.executable, "-m", "winnow", "run", "configs/web-quality.yaml", "--set", f"output={web}",
                        "--quiet"], cwd=REPO, check=True)
    rows = []
    for path in sorted(stage.glob("train-*.parquet")):
        rows += pq.read_table(path, columns=["id", "text"]).to_pylist()
    rows.sort(key=lambda r: xxhash.xxh3_64_intdigest(r["id"].encode()))
    docs, total = [], 0
    for r in rows:
        chunks = [c for c in split_chunks(r["text"]) if count_tokens(c) >= min_tokens]
        if not chunks:
            continue
        if total + len(chunks) > n_chunks:
            continue
        docs.append(r)
        total += len(chunks)
        if total == n_chunks:
            break
    return docs


def one_chunk_docs(web: Path, n: int) -> list[dict]:
    """`n` curated documents that are a single chunk of 100-300 tokens each (same prompts on both sides)."""
    from winnow.synth.chunking import count_tokens, split_chunks

    out = []
    for r in curated_docs(web, 5000):
        chunks = split_chunks(r["text"])
        if len(chunks) == 1 and 100 <= count_tokens(chunks[0]) <= 300:
            out.append(r)
            if len(out) == n:
                break
    return out


def write_jsonl(docs: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs))
    return str(path)


def throughput(backend: str, docs: list[dict], out: Path, threads: int, max_new: int, repeats: int = 1) -> float:
    """Bare then winnow, `repeats` times in turn; prints each pair's chunks/s, generated tokens/s and ratio,
    then the median ratio (identical generations vary by ±10% in wall time on a shared 2-core machine, so
    one pair can land anywhere in 0.8-1.0)."""
    from winnow.pipeline.measure import median_of_pairs
    from winnow.synth import prompts
    from winnow.synth.chunking import split_chunks
    from winnow.synth.rephrase import RephraseStage

    stage = RephraseStage(RephraseStage.Params(backend=backend, temperature=0.0, max_new_tokens=max_new))
    requests = [prompts.build_request(split_chunks(d["text"])[0], "wiki", stage._request_seed(
        split_chunks(d["text"])[0], "wiki")) for d in docs]
    code = f"""
import json, time
t0 = time.perf_counter()
from winnow.synth.backend import BackendSpec, open_backend
from winnow.synth.types import GenerationParams, Request
backend = open_backend(BackendSpec(kind={backend!r}, threads={threads}))
reqs = [Request(tuple(tuple(m) for m in r["messages"]), r["seed"]) for r in json.load(open({str(out / 'requests.json')!r}))]
res = backend.generate(reqs, GenerationParams(max_new_tokens={max_new}, temperature=0.0))
print(json.dumps({{"seconds": time.perf_counter() - t0, "tokens": sum(r.completion_tokens for r in res),
                  "errors": sum(r.error is not None for r in res)}}))
"""
    out.mkdir(parents=True, exist_ok=True)
    (out / "requests.json").write_text(json.dumps([{"messages": r.messages, "seed": r.seed} for r in requests]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run_dir = out / f"run-{backend}"
    cfg = {"input": {"paths": [write_jsonl(docs, out / "docs.jsonl")]}, "output": str(run_dir),
           "engine": {"n_workers": 1, "threads_per_worker": threads},
           "stages": [{"rephrase": {"backend": backend, "temperature": 0.0, "max_new_tokens": max_new,
                                    "threads": threads, "min_chunk_tokens": 1}}]}
    n, ratios = len(docs), []
    for _ in range(repeats):
        bare = json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1])
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)   # a fresh generation cache every time
        wall = winnow_run(cfg, out / f"rephrase-{backend}.yaml")
        manifest = json.loads((run_dir / "01-rephrase" / "_manifest.json").read_text())
        tokens = manifest["totals"]["stats"]["completion_tokens"]
        print(f"{backend:12} bare   : {n / bare['seconds']:.3f} chunks/s, {bare['tokens'] / bare['seconds']:6.1f} gen "
              f"tok/s ({bare['seconds']:.1f} s, {bare['tokens']} tokens, {bare['errors']} errors)")
        print(f"{backend:12} winnow : {n / wall:.3f} chunks/s, {tokens / wall:6.1f} gen tok/s ({wall:.1f} s, "
              f"{int(tokens)} tokens, Dask start + ingest + stage)", flush=True)
        ratios.append(bare["seconds"] / wall)
    ratio, each = median_of_pairs(ratios)
    print(f"rephrase throughput winnow/bare: {ratio:.2f}   [{backend}]{each}")
    return ratio


def guard_run(docs: list[dict], out: Path, styles: list[str], max_new: int) -> Path:
    run_dir = out / "guard"
    # small shards: a shard is one task, and a rewrite costs seconds, so every worker needs several
    cfg = {"input": {"paths": [write_jsonl(docs, out / "guard-docs.jsonl")], "shard_size_mb": 0.02},
           "output": str(run_dir),
           "stages": [{"rephrase": {"styles": styles, "synthetic_ratio": 1.0, "max_new_tokens": max_new,
                                    "cache_dir": str(out / "cache")}}]}   # kept across reruns of the bench
    wall = winnow_run(cfg, out / "guard.yaml")
    import pyarrow as pa
    import pyarrow.parquet as pq

    stage = run_dir / "01-rephrase"
    manifest = json.loads((stage / "_manifest.json").read_text())
    kept = pa.concat_tables(pq.read_table(p) for p in sorted(stage.glob("train-*.parquet")))
    synth = kept.filter(kept.column("synthetic")).to_pylist()
    dropped = pa.concat_tables(pq.read_table(p) for p in sorted((stage / "rejected").glob("*.parquet"))).to_pylist()
    asked = len(synth) + len(dropped)
    stats = manifest["totals"]["stats"]
    print(f"\nguard: {asked} rewrites asked ({len(docs)} documents, styles {styles}) in {wall:.0f} s; "
          f"{stats['prompt_tokens']:.0f} prompt + {stats['completion_tokens']:.0f} generated tokens, "
          f"{manifest['totals']['flops']:.3g} FLOPs; backend {synth[0]['backend'] if synth else dropped[0]['backend']}")
    print(f"  kept {len(synth)} ({len(synth) / max(asked, 1):.0%})")
    by_style = Counter((r["style"], r["reason"]) for r in dropped)
    for reason, n in Counter(r["reason"] for r in dropped).most_common():
        per_style = ", ".join(f"{s} {by_style[(s, reason)]}" for s in styles)
        print(f"  dropped {reason:28} {n:4} ({n / asked:.0%})  [{per_style}]")
    real = kept.filter(pa.compute.invert(kept.column("synthetic")))
    from winnow.synth.chunking import count_tokens

    real_tokens = sum(count_tokens(t) for t in real.column("text").to_pylist())
    synth_tokens = sum(count_tokens(r["text"]) for r in synth)
    print(f"  real:synthetic tokens in the output = 1 : {synth_tokens / max(real_tokens, 1):.2f} "
          f"({real_tokens} : {synth_tokens})")
    examples = {"kept": synth[:3], **{f"dropped ({r})": [d for d in dropped if d["reason"] == r][:1]
                                      for r in Counter(d["reason"] for d in dropped)}}
    with open(out / "guard-examples.json", "w") as f:
        json.dump({k: [{"source_id": e["source_id"], "style": e["style"], "text": e["text"][:600]} for e in v]
                   for k, v in examples.items()}, f, indent=1)
    print(f"  examples: {out / 'guard-examples.json'}")
    return stage


def multiplier(stage: Path, out: Path, seeds: int, budget: float, heldout_tokens: int) -> None:
    from winnow.proxy.evaluate import EvalConfig, run_eval
    from winnow.proxy.summary import describe

    cfg = EvalConfig(arms={"real": str(stage.parent / "00-ingest"), "real_rephrased": str(stage)},
                     output=str(out / "eval"), pool_heldout_fraction=0.2, pool_tokens=heldout_tokens,
                     heldout={"reference": {"paths": REFERENCE_SETS, "tokens": heldout_tokens, "heldout_fraction": 0.2}},
                     primary_eval="pool", vocab_size=4096, size="tiny", seq_len=256, batch_size=8, lr=4e-3,
                     flop_budget=budget, baseline_budgets=[0.5, 1.0, 2.0, 4.0], seeds=list(range(seeds)), n_evals=1)
    t0 = time.perf_counter()
    report = run_eval(cfg, log=lambda *a: None)
    print(f"\nwinnow eval: {len(report['runs'])} runs in {time.perf_counter() - t0:.0f} s; baseline {report['baseline']}")
    for name, cost in report["curation"].items():
        if cost["scoring_flops"]:
            print(f"  {name}: generation {cost['flops_per_kept_token']:,.0f} FLOPs per kept token")
    print(f"{'arm':15} {'set':10} {'multiplier ± std [95% CI]':32} {'net':>6}  per seed")
    for name, by_set in report["arms"].items():
        for eval_set, s in by_set.items():
            seeds_txt = " ".join(f"{p['multiplier']:.2f}{'' if p['status'] == 'interpolated' else '*'}"
                                 for p in s["per_seed"])
            print(f"{name:15} {eval_set:10} {describe(s):32} {s['net_multiplier']:6.2f}  {seeds_txt}")
            print(f"compute multiplier [{name}, {eval_set}]: {s['multiplier']:.2f} (net of generation "
                  f"{s['net_multiplier']:.2f})")
    print("(* = a bound: the baseline's runs did not bracket that loss)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--web-out", default=str(REPO / "out" / "web-quality"))
    ap.add_argument("--out", default=str(REPO / "out" / "bench-rephrase"))
    ap.add_argument("--chunks", type=int, default=200, help="web chunks for the guard and the multiplier")
    ap.add_argument("--throughput-chunks", type=int, default=12)
    ap.add_argument("--throughput-repeats", type=int, default=1,
                    help="bare and winnow runs in turn; the printed ratio is their median")
    ap.add_argument("--threads", type=int, default=2, help="model threads, bare and in the one Dask worker")
    ap.add_argument("--styles", default="wiki")
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1e12)
    ap.add_argument("--heldout-tokens", type=int, default=30_000)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: throughput,guard,eval")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.throughput_repeats < 1:
        ap.error("--throughput-repeats must be at least 1")
    if args.quick:
        args.chunks, args.throughput_chunks, args.seeds, args.max_new_tokens = 4, 2, 1, 64
    skip = set(filter(None, args.skip.split(",")))
    out, web = Path(args.out), Path(args.web_out)
    os.environ.setdefault("WINNOW_CACHE_DIR", str(Path.home() / ".cache" / "winnow"))

    if "throughput" not in skip:
        import importlib.util

        docs = one_chunk_docs(web, args.throughput_chunks)
        for backend in ("llama_cpp", "transformers"):
            if backend == "llama_cpp" and importlib.util.find_spec("llama_cpp") is None:
                print("llama_cpp: not installed (bash scripts/setup.sh --llama), skipped")
                continue
            throughput(backend, docs, out / "throughput", args.threads, min(args.max_new_tokens, 128),
                       args.throughput_repeats)
    if "guard" not in skip:
        docs = curated_docs(web, args.chunks)
        subprocess.run(["rm", "-rf", str(out / "guard")], check=True)
        stage = guard_run(docs, out, args.styles.split(","), args.max_new_tokens)
        if "eval" not in skip:
            multiplier(stage, out, args.seeds, args.budget, args.heldout_tokens)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak RSS of the largest child process: {peak:,.0f} MB")


if __name__ == "__main__":
    main()
