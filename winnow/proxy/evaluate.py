"""`winnow eval`: train proxy LMs on a baseline and curated arms, report the compute multiplier.

Protocol (ALGORITHMS.md section 7), in the order `run_eval` runs it:
1. arms (arms.py): documents or packed rows; one tokenizer for all (hashes checked), trained on
   the baseline's training documents unless given;
2. held-out sets (heldout.py): `pool`, a source-stratified sample of the baseline pool's
   held-out id-hash slice that no arm trains on (the DataRater paper's objective: train faster on
   this distribution), and named reference sets, each chosen by a token budget and evaluated on
   every target token; documents of any held-out set are removed from every arm, by id and, for
   copies under other ids, by shared 13-grams (overlap.py);
3. the training grid: the same model, optimiser and schedule everywhere; the baseline at several
   budgets (each run annealed at its own end), every other arm at the reference budget; k seeds;
   downstream tasks scored on every arm's reference-budget run, the baseline's included;
4. the summary (summary.py): per arm and held-out set, the multiplier per seed against that
   seed's baseline curve, mean, sample std and t-interval, net of curation per trained token (cost.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from winnow.pipeline.config import Strict
from winnow.pipeline.documents import EVAL_POOL_FRACTION, STRATIFY_HELP, read_sourced_documents
from winnow.pipeline.errors import ConfigError
from winnow.proxy.arms import Arm, check_tokenizers, held_by_id, pool_candidates, read_arms, training_rows
from winnow.proxy.data import PackedRows, tokenize_documents
from winnow.proxy.heldout import HeldoutSample, build_heldout
from winnow.proxy.overlap import MAX_NGRAM_DOCS, Overlap, heldout_overlap
from winnow.proxy.summary import arm_summary, downstream_summary


class HeldoutSet(Strict):
    paths: list[str] = Field(description="a folder of Parquet shards or JSONL files/globs (each path given is "
                             "a source when there are several)")
    tokens: int = Field(100_000, gt=0, description="token budget of the stratified sample")
    stratify: str = Field("auto", description=STRATIFY_HELP)
    allocation: Literal["equal", "proportional"] = Field("equal", description="each source's share of the "
                                                         "budget: equal, or proportional to its tokens")
    max_docs: int | None = Field(None, gt=0, description="at most this many candidate documents, the lowest "
                                 "seeded id hashes (not the first in file order: every source stays in)")
    heldout_fraction: float = Field(0.0, ge=0, lt=1, description="> 0: only the documents in this id-hash "
                                    "slice: the slice a quality stage's `positives.heldout_fraction` never "
                                    "trains on, so the classifier has not seen the eval documents")


class DownstreamConfig(Strict):
    hellaswag: int = Field(0, ge=0, description="validation items to score (0 = skip)")
    piqa: int = Field(0, ge=0)
    data: str = Field("../shared/data/eval")


class EvalConfig(Strict):
    """The YAML of `winnow eval`. Arms name folders of documents (a stage folder of a winnow run)."""

    arms: dict[str, str] = Field(description="name -> documents (a stage folder with `text`, JSONL globs) or a "
                                "winnow pack stage folder; the first is the baseline unless `baseline` is set")
    baseline: str | None = None
    output: str
    pool_heldout_fraction: float = Field(EVAL_POOL_FRACTION, ge=0, lt=0.5, description="id-hash slice of the baseline pool "
                                         "that no arm trains on; the `pool` set is sampled from it")
    pool_tokens: int = Field(100_000, gt=0, description="token budget of the `pool` held-out sample")
    pool_stratify: str = Field("auto", description=STRATIFY_HELP)
    pool_allocation: Literal["equal", "proportional"] = "proportional"
    heldout: dict[str, HeldoutSet] = Field(default_factory=dict, description="named held-out sets")
    heldout_seed: int = Field(0, description="seed of the held-out samples (the same for every run)")
    primary_eval: str | None = Field(None, description="held-out set that headlines (default: the first: "
                                     "'pool' when pool_heldout_fraction > 0)")
    max_docs: int | None = Field(None, gt=0, description="cap on training documents per arm")
    tokenizer: str | None = Field(None, description="local tokenizer.json; null: the packed arms' own, or a "
                                  "BPE trained on the baseline")
    vocab_size: int = Field(4096, ge=260)
    size: Literal["tiny", "small", "base"] = Field("tiny", description="proxy size: about 1M / 10M / 50M "
                                                   "non-embedding parameters")
    seq_len: int = Field(256, ge=16, le=4096)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(3e-3, gt=0)
    schedule: str = Field("cosine", pattern="^(cosine|wsd)$", description="cosine, or warmup-stable-decay")
    flop_budget: float = Field(1e12, gt=0, description="training FLOPs of every curated run")
    baseline_budgets: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0],
                                          description="baseline runs at these multiples of flop_budget")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="three or more for a "
                             "usable interval (t = 12.7 at two)")
    n_evals: int = Field(3, gt=0, description="evaluations per run (the last at its end)")
    max_eval_rows: int | None = Field(None, gt=0, description="cap on held-out rows; null (default) evaluates "
                                      "every row: a cap sees only part of each set")
    device: str = "auto"
    intra_doc: bool = True
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)


def run_eval(cfg: EvalConfig, log=print) -> dict:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    baseline = cfg.baseline or next(iter(cfg.arms))
    if baseline not in cfg.arms:
        raise ConfigError(f"baseline {baseline!r} is not one of the arms {list(cfg.arms)}", key="baseline")
    arms = read_arms(cfg.arms, {baseline: cfg.pool_stratify})
    tokenizer = eval_tokenizer(cfg, arms, baseline)
    tokenizer_json = out / "tokenizer.json"
    tokenizer_json.write_text(tokenizer.json_text)
    heldout = heldout_sets(cfg, arms[baseline], tokenizer, log)
    excluded = {doc for sample in heldout.values() for doc in sample.ids}
    overlap = heldout_overlap(arms, {k: v.texts for k, v in heldout.items()}, tokenizer,
                              held_by_id(excluded, cfg.pool_heldout_fraction))
    for name in heldout:
        log(f"held-out {name}: {overlap.removed_from_training(name):,} training documents under other ids share "
            f"a 13-gram with it: removed from every arm ({overlap.common.get(name, 0):,} n-grams in more than "
            f"{MAX_NGRAM_DOCS} training documents ignored as common phrasing)")
    downstream_overlap = check_downstream_overlap(cfg, arms, tokenizer, held_by_id(excluded, cfg.pool_heldout_fraction),
                                                  log)
    rows = {}
    for name, arm in arms.items():
        rows[name] = training_rows(arm, tokenizer, cfg.seq_len, excluded, cfg.pool_heldout_fraction, cfg.max_docs,
                                   None if name == baseline else cfg.arms[baseline], overlap.by_arm[name])
        log(f"arm {name}: {rows[name].n_documents:,} documents, {len(rows[name]):,} rows, "
            f"{rows[name].target_tokens:,} unique target tokens"
            + (f"; curation {arm.cost.per_token():,.0f} FLOPs per kept token" if arm.cost.scoring_flops else ""))
    runs = train_grid(cfg, rows, {k: v.rows for k, v in heldout.items()}, tokenizer, baseline, out, log)
    report = summarize(cfg, runs, baseline, arms, rows, heldout, overlap)
    report["downstream_overlap"] = downstream_overlap
    report["tokenizer_vocab"] = tokenizer.vocab_size
    report["tokenizer_hash"] = tokenizer.hash
    report["plot"] = plot(report, out / "loss_vs_flops.png")
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    return report


def eval_tokenizer(cfg: EvalConfig, arms: dict[str, Arm], baseline: str):
    from winnow.tokenize.tokenize_stage import TokenizerState
    from winnow.tokenize.tokenizer import EOS, load_tokenizer, train_bpe

    path = check_tokenizers(arms, cfg.tokenizer)
    if path:
        return TokenizerState(load_tokenizer(path).to_str(), EOS)
    base = arms[baseline]
    if base.packed:
        raise ConfigError("set `tokenizer`: the baseline is packed and no tokenizer.json was found beside it",
                          key="tokenizer")
    from winnow.pipeline.documents import in_heldout_slice

    train_texts = [t for d, t in zip(base.ids, base.texts, strict=True)
                   if not in_heldout_slice(d, cfg.pool_heldout_fraction)][:5000]
    return TokenizerState(train_bpe(train_texts, cfg.vocab_size).to_str(), EOS)


def heldout_sets(cfg: EvalConfig, baseline: Arm, tokenizer, log=print) -> dict[str, HeldoutSample]:
    """`pool` (when pool_heldout_fraction > 0) and every named set, in config order."""
    sets: dict[str, HeldoutSample] = {}
    if cfg.pool_heldout_fraction > 0:
        table, sources = pool_candidates(baseline, tokenizer, cfg.pool_heldout_fraction)
        if table.num_rows:
            sets["pool"] = build_heldout(table, sources, cfg.seq_len, cfg.pool_tokens, cfg.pool_allocation,
                                         cfg.heldout_seed)
    for name, spec in cfg.heldout.items():
        ids, texts, sources = read_sourced_documents(spec.paths, None, f"heldout.{name}.paths",
                                                     spec.heldout_fraction, "heldout", spec.stratify)
        if spec.max_docs and len(ids) > spec.max_docs:
            from winnow.pipeline.documents import id_hashes
            from winnow.proxy.heldout import HELDOUT_SAMPLE

            order = id_hashes(ids, cfg.heldout_seed, purpose=HELDOUT_SAMPLE).tolist()   # as stratified_sample
            pick = sorted(sorted(range(len(ids)), key=order.__getitem__)[:spec.max_docs])
            ids, texts, sources = [ids[i] for i in pick], [texts[i] for i in pick], [sources[i] for i in pick]
        if not ids:
            raise ConfigError(f"held-out set {name!r} has no documents", key=f"heldout.{name}")
        sets[name] = build_heldout(tokenize_documents(ids, texts, tokenizer), sources, cfg.seq_len, spec.tokens,
                                   spec.allocation, cfg.heldout_seed)
    if not sets:
        raise ConfigError("no held-out set: set pool_heldout_fraction > 0 or add `heldout`", key="heldout")
    primary = cfg.primary_eval or next(iter(sets))
    if primary not in sets:
        raise ConfigError(f"primary_eval {primary!r} is not a held-out set: {list(sets)}", key="primary_eval")
    for name, sample in sets.items():
        s = sample.summary()
        log(f"held-out {name}: {s['documents']:,} documents, {s['tokens']:,} tokens from {len(s['sources'])} sources")
    if cfg.max_eval_rows:
        log(f"warning: max_eval_rows={cfg.max_eval_rows} evaluates only the first rows of each held-out set "
            "(longest chunks first): losses are not the whole sample's")
    return sets


def train_grid(cfg: EvalConfig, rows: dict[str, PackedRows], eval_sets: dict[str, PackedRows], tokenizer,
               baseline: str, out: Path, log=print) -> list[dict]:
    """Every (seed, arm, budget) run; checkpoints under OUT/checkpoints; downstream at the reference budget."""
    from winnow.proxy.train import TrainConfig, save_checkpoint, train

    downstream_on = cfg.downstream.hellaswag or cfg.downstream.piqa
    base_ref = min(cfg.baseline_budgets, key=lambda b: abs(b - 1.0))  # the baseline run scored downstream
    grid = [(seed, name, b) for seed in cfg.seeds for name in rows
            for b in (cfg.baseline_budgets if name == baseline else [1.0])]
    runs: list[dict] = []
    for i, (seed, name, b) in enumerate(grid, 1):
        tcfg = TrainConfig(size=cfg.size, seq_len=cfg.seq_len, batch_size=cfg.batch_size, lr=cfg.lr,
                           schedule=cfg.schedule, flop_budget=cfg.flop_budget * b, n_evals=cfg.n_evals, seed=seed,
                           max_eval_rows=cfg.max_eval_rows, device=cfg.device, intra_doc=cfg.intra_doc)
        log(f"[run {i}/{len(grid)}: {name}, seed {seed}, budget {b:g}x]")
        result = train(tcfg, tokenizer.vocab_size, rows[name], eval_sets, log=log)
        model = result.pop("model")
        ckpt = out / "checkpoints" / f"{name}-seed{seed}-{b:g}x.safetensors"
        ckpt.parent.mkdir(exist_ok=True)
        save_checkpoint(model, str(ckpt), {"arm": name, "seed": seed, "budget": b, **result["config"],
                                           "vocab_size": tokenizer.vocab_size})
        entry = {"arm": name, "seed": seed, "budget": b, "flops": result["flops"], "tokens": result["tokens"],
                 "final": result["points"][-1]["eval"], **result, "checkpoint": str(ckpt)}
        if downstream_on and b == (base_ref if name == baseline else 1.0):
            from winnow.proxy.downstream import score_downstream

            entry["downstream"] = {task: {**res, "budget": b} for task, res in
                                   score_downstream(model, tokenizer.tokenizer, cfg.downstream, cfg.seq_len).items()}
        runs.append(entry)
    return runs


def check_downstream_overlap(cfg: EvalConfig, arms: dict[str, Arm], tokenizer, held, log) -> dict:
    """Training documents of each arm that hold an item of a downstream task this eval scores."""
    from winnow.proxy.downstream import task_values
    from winnow.proxy.overlap import downstream_overlap

    wanted = {task: n for task, n in (("hellaswag", cfg.downstream.hellaswag), ("piqa", cfg.downstream.piqa)) if n}
    if not wanted:
        return {}
    tasks = {task: task_values(Path(cfg.downstream.data), task, n) for task, n in wanted.items()}
    found = downstream_overlap(arms, tasks, tokenizer, held)
    for task, by_arm in found.items():
        leaked = {arm: f["items"] for arm, f in by_arm.items() if f["items"]}
        log(f"downstream {task}: {len(tasks[task]):,} items scored; training documents hold "
            + (", ".join(f"{n} in arm {arm}" for arm, n in leaked.items()) if leaked else "none of them"))
    return found


def summarize(cfg: EvalConfig, runs: list[dict], baseline: str, arms: dict[str, Arm], rows: dict[str, PackedRows],
              heldout: dict[str, HeldoutSample], overlap: Overlap | None = None) -> dict:
    sets = list(heldout)
    primary = cfg.primary_eval or sets[0]
    overlap = overlap or Overlap()
    return {
        "config": cfg.model_dump(mode="json"), "baseline": baseline, "eval_set": primary, "eval_sets": sets,
        "heldout": {name: {**sample.summary(), "removed_from_training": overlap.removed_from_training(name),
                           "removed_from_training_by_arm": overlap.removed_by_arm(name),
                           "common_ngrams_ignored": overlap.common.get(name, 0)}
                    for name, sample in heldout.items()},
        "max_eval_rows": cfg.max_eval_rows,
        "arms": {name: arm_summary(runs, name, baseline, sets, arms[name].cost) for name in arms if name != baseline},
        "downstream": downstream_summary(runs),
        "curation": {name: {"scoring_flops": a.cost.scoring_flops, "one_off_flops": a.cost.one_off_flops,
                            "kept_tokens": a.cost.kept_tokens, "flops_per_kept_token": a.cost.per_token(),
                            "flops_per_kept_token_with_fit": a.cost.per_token(with_fit=True)}
                     for name, a in arms.items()},
        "unique_tokens": {n: r.target_tokens for n, r in rows.items()},
        "epochs": {f"{r['arm']}/seed{r['seed']}/{r['budget']:g}x": round(r["epochs"], 3) for r in runs},
        "runs": runs,
    }


def plot(report: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["eval_sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, eval_set in zip(axes[0], sets, strict=True):
        for i, arm in enumerate(report["config"]["arms"]):
            mine = [r for r in report["runs"] if r["arm"] == arm]
            color = colors[i % len(colors)]
            for r in mine:  # each run's eval curve, faint
                ax.plot([p["flops"] for p in r["points"]], [p["eval"][eval_set] for p in r["points"]],
                        color=color, alpha=0.25, lw=1)
            budgets = sorted({r["budget"] for r in mine})
            finals = [[r["final"][eval_set] for r in mine if r["budget"] == b] for b in budgets]
            flops = [next(r["flops"] for r in mine if r["budget"] == b) for b in budgets]
            ax.plot(flops, [np.mean(f) for f in finals], "o-", color=color, label=arm)
            ax.fill_between(flops, [min(f) for f in finals], [max(f) for f in finals], color=color, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(f"held-out loss ({eval_set}), nats/token")
        ax.set_title(f"{eval_set}: final loss per run (band: min-max over seeds)", fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
