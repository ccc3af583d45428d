"""Is the mean of the DataRater's weights over its last meta-steps (`meta.average_tail`) a better rater than
the last step's, and how many meta-steps does a fit need? One fit per seed, the rater kept after every
meta-step; raters after L steps are compared: the raw one (`raw`) and the mean of steps L/2+1..L (`avg`, what
`average_tail: 0.5` returns from an L-step fit; the fit itself does not depend on L, so one 200-step fit
gives every shorter one too). Two objectives:

1. `soup10`, the paper's setting: the outer set is a held-out slice of the pool (1,000 reference passages,
   10% word soup; bench/datarater_objective.py's pool). AUC clean vs soup on 600 unseen passages. The fits run
   one model after the other on one thread, two seeds side by side.
2. `target`, the quickstart pool (less winnow's own documents) against 56 of its python documents (they never train the inner models),
   the CPU defaults on all cores. Each rater, frozen, weights the training of fresh inner models from
   scratch (300 Adam steps of 16 rows, the same batches for every rater): the target loss after them minus
   the loss with uniform weights (negative: the rater helps), per inner seed; and the AUC of the pool's own
   python documents against the rest (not saturated, unlike the planted pools' AUC).

    python bench/datarater_average.py [--soup-seeds 0,1,2,3] [--rater-seeds 0,1] [--inner-seeds 0,1,2,3]

About 8 minutes per soup seed (two at a time), 5 per target fit and 7 for its frozen runs on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (20, 40, 60, 80, 100, 120, 160, 200)
FROZEN_STEPS, FROZEN_BATCH = 300, 16


def snapshots(cfg, vocab_size: int, inner_rows, outer_rows) -> list[dict]:
    """The rater's weights after every meta-step of one fit (averaging off: the fit is the same either way)."""
    import copy

    from winnow.raters.datarater import MetaTrainer

    weights: list[dict] = []

    def keep(rater) -> dict:
        weights.append(copy.deepcopy(rater.state_dict()))
        return {}

    MetaTrainer(cfg, vocab_size, inner_rows, outer_rows, log=lambda _: None, eval_fn=keep, eval_every=1).run()
    return weights


def raters_at(weights: list[dict], lengths: tuple[int, ...]) -> dict[str, dict]:
    """`raw{L}`: the weights after step L; `avg{L}`: their mean over steps L/2+1..L."""
    import torch

    out = {}
    for length in lengths:
        out[f"raw{length}"] = weights[length - 1]
        out[f"avg{length}"] = {k: torch.stack([w[k].double() for w in weights[length // 2:length]]).mean(0).float()
                               for k in weights[0]}
    return out


def rater_from(cfg, vocab_size: int, state: dict):
    from winnow.raters.datarater import DataRater

    rater = DataRater(cfg.rater_config(vocab_size))
    rater.load_state_dict(state)
    return rater.eval()


# ------------------------------------------------------------------------------------------------ soup10


def soup_seed(seed: int, lengths: tuple[int, ...]) -> dict:
    import torch
    from datarater_objective import pool_texts

    from winnow.raters.corrupt import roc_auc
    from winnow.raters.datarater import MetaConfig, document_chunks, score_documents
    from winnow.tokenize.tokenize_stage import TokenizerState
    from winnow.tokenize.tokenizer import EOS, train_bpe

    torch.set_num_threads(1)
    texts, clean, _ = pool_texts("soup10", 1600)
    order = list(range(len(texts)))
    random.Random(1).shuffle(order)
    texts, clean = [texts[i] for i in order], clean[order]
    pool, test, test_clean = texts[:1000], texts[1000:], clean[1000:]
    state = TokenizerState(train_bpe(pool, 1024).to_str(), EOS)
    cfg = MetaConfig(seed=seed, log_every=0, threads=1, meta_steps=max(lengths), average_tail=0.0)
    inner_rows, _ = document_chunks(pool[:800], state, cfg.seq_len, 4)
    outer_rows, _ = document_chunks(pool[800:], state, cfg.seq_len, 4)
    t0 = time.perf_counter()
    weights = snapshots(cfg, state.vocab_size, inner_rows, outer_rows)
    aucs = {name: round(roc_auc(score_documents(rater_from(cfg, state.vocab_size, w), test, state), test_clean), 3)
            for name, w in raters_at(weights, lengths).items()}
    return {"seed": seed, "fit_seconds": round(time.perf_counter() - t0), "auc": aucs}


# ------------------------------------------------------------------------------------------------ target mode


def target_data(pool_dir: Path):
    """(inner texts, target texts, is-python per inner text, tokenizer state) of the quickstart pool, less
    winnow's own documents: they change with every docstring edit, and one changed document changes the BPE
    and with it every number here."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from winnow.tokenize.tokenize_stage import TokenizerState
    from winnow.tokenize.tokenizer import EOS, train_bpe

    table = pa.concat_tables([pq.read_table(p) for p in sorted(pool_dir.glob("train-*.parquet"))])
    table = table.filter(pc.not_equal(table["package"], "winnow"))
    texts, packages = table["text"].to_pylist(), table["package"].to_pylist()
    target = [t for t, p in zip(texts, packages, strict=True) if p == "python"][:56]
    held = set(target)
    inner = [(t, p == "python") for t, p in zip(texts, packages, strict=True) if t not in held]
    state = TokenizerState(train_bpe([t for t, _ in inner] + target, 2048).to_str(), EOS)
    return [t for t, _ in inner], target, np.array([py for _, py in inner]), state


def frozen_run(rows: tuple, vocab_size: int, rater_state: dict | None, inner_seed: int) -> list[float]:
    """Target loss after 100, 200 and 300 steps of a fresh inner model trained on `rows` (inner, outer) with the
    rater's weights (None: uniform), on one thread."""
    import torch

    from winnow.proxy.model import ProxyLM
    from winnow.raters.datarater import (
        MetaConfig,
        _batch,
        outer_loss,
        per_row_loss,
        row_weights,
        target_tokens,
        token_mean,
    )

    torch.set_num_threads(1)
    inner_rows, outer_rows = rows
    cfg = MetaConfig()
    rater = None if rater_state is None else rater_from(cfg, vocab_size, rater_state)
    torch.manual_seed(1000 + inner_seed)
    lm = ProxyLM(cfg.inner_config(vocab_size))
    opt = torch.optim.Adam(lm.parameters(), lr=cfg.inner_lr, betas=cfg.inner_betas, eps=cfg.inner_eps)
    draws = torch.Generator().manual_seed(inner_seed)
    cpu, losses = torch.device("cpu"), []
    everything = _batch(outer_rows, torch.arange(len(outer_rows)), cpu)
    for step in range(1, FROZEN_STEPS + 1):
        batch = _batch(inner_rows, torch.randint(0, len(inner_rows), (FROZEN_BATCH,), generator=draws), cpu)
        row_losses = per_row_loss(lm, dict(lm.named_parameters()), batch)
        if rater is None:
            loss = token_mean(row_losses, target_tokens(batch))
        else:
            with torch.no_grad():
                weights = row_weights(rater(batch["input_ids"], batch["segment_ids"] > 0), cfg, target_tokens(batch))
            loss = (weights * row_losses).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                losses.append(round(float(outer_loss(lm, dict(lm.named_parameters()), everything)), 4))
    return losses


def target_seed(pool_dir: Path, seed: int, inner_seeds: list[int], lengths: tuple[int, ...]) -> dict:
    from winnow.raters.corrupt import roc_auc
    from winnow.raters.datarater import MetaConfig, document_chunks, score_documents

    inner, target, is_python, state = target_data(pool_dir)
    cfg = MetaConfig(seed=seed, log_every=0, meta_steps=max(lengths), average_tail=0.0)
    inner_rows, _ = document_chunks(inner, state, cfg.seq_len, 4)
    outer_rows, _ = document_chunks(target, state, cfg.seq_len, 4)
    t0 = time.perf_counter()
    raters = {"uniform": None, **raters_at(snapshots(cfg, state.vocab_size, inner_rows, outer_rows), lengths)}
    fit_seconds = time.perf_counter() - t0
    jobs = [(name, s) for name in raters for s in inner_seeds]
    with ProcessPoolExecutor(2) as pool:
        # the rows go to each run as data: reading the pool and training its BPE again per run would only
        # repeat what was done here
        runs = list(pool.map(frozen_run, [(inner_rows, outer_rows)] * len(jobs), [state.vocab_size] * len(jobs),
                             [raters[n] for n, _ in jobs], [s for _, s in jobs]))
    losses = {name: [r for (n, _), r in zip(jobs, runs, strict=True) if n == name] for name in raters}
    uniform = np.array(losses["uniform"])
    result = {}
    for name, runs_of in losses.items():
        delta = np.array(runs_of)[:, -1] - uniform[:, -1]
        auc = 0.5 if raters[name] is None else roc_auc(
            score_documents(rater_from(cfg, state.vocab_size, raters[name]), inner, state, max_chunks=8), is_python)
        result[name] = {"auc_python": round(auc, 3), "target_loss": round(float(np.mean(np.array(runs_of)[:, -1])), 4),
                        "delta_vs_uniform": round(float(delta.mean()), 4), "delta_per_inner_seed": delta.round(3).tolist()}
    return {"seed": seed, "fit_seconds": round(fit_seconds), "raters": result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--soup-seeds", default="0,1,2,3", help="comma-separated; empty: skip")
    ap.add_argument("--rater-seeds", default="0,1", help="target-mode fits; empty: skip")
    ap.add_argument("--inner-seeds", default="0,1,2,3", help="fresh inner models per frozen rater")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="fit lengths compared (meta-steps)")
    ap.add_argument("--out", default=str(REPO / "out" / "bench-datarater-average"))
    args = ap.parse_args()
    seeds = lambda text: [int(s) for s in text.split(",") if s.strip()]  # noqa: E731
    lengths = tuple(sorted(seeds(args.lengths)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if seeds(args.soup_seeds):
        with ProcessPoolExecutor(2) as pool:
            soups = list(pool.map(soup_seed, seeds(args.soup_seeds), [lengths] * len(seeds(args.soup_seeds))))
        (out / "soup10.json").write_text(json.dumps(soups, indent=1))
        print("soup10: AUC clean vs soup on 600 unseen passages (rows: seeds; columns: fit lengths)")
        for kind in ("raw", "avg"):
            table = np.array([[s["auc"][f"{kind}{n}"] for n in lengths] for s in soups])
            for s, row in zip(soups, table, strict=True):
                print(f"  {kind} seed {s['seed']}: " + " ".join(f"{v:.3f}" for v in row))
            print(f"  {kind} mean:   " + " ".join(f"{v:.3f}" for v in table.mean(0)) + "   min: "
                  + " ".join(f"{v:.3f}" for v in table.min(0)))
    if seeds(args.rater_seeds):
        from datarater import quickstart_pool

        pool_dir = quickstart_pool(out / "quickstart")
        targets = [target_seed(pool_dir, s, seeds(args.inner_seeds), lengths) for s in seeds(args.rater_seeds)]
        (out / "target.json").write_text(json.dumps(targets, indent=1))
        print(f"target mode: frozen raters, target loss after {FROZEN_STEPS} steps minus uniform weights' (mean over "
              f"inner seeds; negative: the rater helps), AUC of the pool's python documents")
        for t in targets:
            print(f"  rater seed {t['seed']} (fit {t['fit_seconds']} s):")
            for name, r in t["raters"].items():
                print(f"    {name:8s} delta {r['delta_vs_uniform']:+.3f} ({' '.join(f'{d:+.3f}' for d in r['delta_per_inner_seed'])})"
                      f"  AUC(python) {r['auc_python']:.3f}")


if __name__ == "__main__":
    main()
