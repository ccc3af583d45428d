"""The DataRater under the paper's own objective (issue 24 §1): is a wrong-way ranking the method or a bug?

The outer set is a held-out slice of the pool itself (no `target:`), as in Calian et al. Under that
objective junk that is a large share of the pool may rightly be up-weighted: training on it lowers the
held-out loss of its own kind. The fair test is a pool whose held-out loss is dominated by clean text:

  soup10     reference passages, 10% replaced by word soup (as many words, drawn uniformly from the
             clean passages' own vocabulary)
  tokens10   10% replaced by random tokens (pieces of a BPE trained on the clean passages, uniform)
  planted30  the 70/30 pool of tests/test_datarater.py (token-shuffled, random characters, mojibake):
             the log's "4 of 4 backwards" runs, rerun on today's code (token-level weights, packing fix)

Each pool: the first `--pool` passages train the rater (`train_datarater` with no target: the last 20%
of them is the outer slice), the next `--test` passages it never saw give ROC AUC clean vs junk (≥ 0.9
means it down-weights the junk), for `--seeds` meta-training seeds. Beside the AUC: the uniform-weight
control (outer loss after updates with the rater's weights minus after uniform ones, same batches and
states; negative = the weights help) and the Spearman correlation of the score with length.

    python bench/datarater_objective.py                        # 3 pools x 3 seeds, CPU defaults (200 steps)
    python bench/datarater_objective.py --meta-steps 100 --meta-json '{"seq_len": 64, "prewarm": 100, "lifetime": 300}'
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"


def pool_texts(name: str, n: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, is_clean, kind per text) of the named pool."""
    from winnow.raters.corrupt import junk_pool, planted_pool, reference_passages
    from winnow.tokenize.tokenizer import train_bpe

    if name == "planted30":
        return planted_pool(REFERENCE, n, 0.3, seed=0)
    kind = {"soup10": "soup", "tokens10": "tokens"}[name]
    pieces = None
    if kind == "tokens":
        tok = train_bpe(reference_passages(REFERENCE, n, seed=0), 1024)
        pieces = [p for p in (tok.decode([i]) for i in range(1, tok.get_vocab_size())) if p.strip()]
    texts, clean = junk_pool(REFERENCE, n, kind, 0.1, seed=0, pieces=pieces)
    return texts, clean, ["clean" if c else kind for c in clean]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def one_fit(name: str, texts: list[str], clean: np.ndarray, kinds: list[str], n_pool: int, seed: int,
            meta: dict, out: Path) -> dict:
    from winnow.raters.corrupt import roc_auc
    from winnow.raters.datarater_scorer import DataRaterScorer, train_datarater

    folder = out / f"{name}-seed{seed}-steps{meta['meta_steps']}-T{meta.get('seq_len', 128)}"
    pool = texts[:n_pool]
    t0 = time.perf_counter()
    summary = train_datarater(pool, [], str(folder), {"threads": 1, **meta}, vocab_size=1024, seed=seed,
                              log=lambda *a: None)
    seconds = time.perf_counter() - t0
    test = slice(n_pool, len(texts))
    scores = DataRaterScorer(str(folder), "cpu", threads=1).score(texts[test])
    test_clean, test_kinds = clean[test], np.asarray(kinds[test])
    per_kind = {k: roc_auc(scores[test_clean | (test_kinds == k)], test_clean[test_clean | (test_kinds == k)])
                for k in sorted(set(kinds) - {"clean"})}
    lengths = np.asarray([len(t) for t in texts[test]], np.float64)
    result = {"pool": name, "seed": seed, "auc": roc_auc(scores, test_clean), "per_kind": per_kind,
              "control": summary["uniform_control"], "length_spearman": spearman(scores, lengths),
              "meta_steps": summary["meta_steps"], "seconds": round(seconds, 1)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "bench-datarater-objective"))
    ap.add_argument("--pools", default="soup10,tokens10,planted30")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=1000, help="passages the rater trains on (20%% of them outer)")
    ap.add_argument("--test", type=int, default=600, help="unseen passages scored for the AUC")
    ap.add_argument("--meta-steps", type=int, default=200)
    ap.add_argument("--meta-json", default="{}", help='MetaConfig overrides, e.g. \'{"seq_len": 64}\'')
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.pools.split(","):
        texts, clean, kinds = pool_texts(name, args.pool + args.test)
        order = list(range(len(texts)))
        random.Random(1).shuffle(order)   # junk spread over the pool, its outer slice and the test part alike
        texts, clean, kinds = [texts[i] for i in order], clean[order], [kinds[i] for i in order]
        print(f"{name}: {len(texts)} passages, {int((~clean).sum())} junk; test {args.test} "
              f"({int((~clean[args.pool:]).sum())} junk)", flush=True)
        for seed in range(args.seeds):
            meta = {"meta_steps": args.meta_steps, **json.loads(args.meta_json)}
            results.append(one_fit(name, texts, clean, kinds, args.pool, seed, meta, out))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n| pool | AUC clean vs junk (seeds) | mean ± std | uniform-control delta (± s.e.) per seed | "
          "Spearman(score, length) |\n|---|---|---|---|---|")
    for name in args.pools.split(","):
        mine = [r for r in results if r["pool"] == name]
        aucs = [r["auc"] for r in mine]
        std = float(np.std(aucs, ddof=1)) if len(aucs) > 1 else float("nan")
        deltas = ", ".join(f"{r['control']['delta']:+.4f} (±{r['control']['delta_se']:.4f})" for r in mine)
        print(f"| {name} | {', '.join(f'{a:.3f}' for a in aucs)} | {np.mean(aucs):.3f} ± {std:.3f} | {deltas} | "
              f"{np.mean([r['length_spearman'] for r in mine]):+.2f} |")


if __name__ == "__main__":
    main()
