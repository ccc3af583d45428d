"""`winnow eval`: train proxy LMs on a baseline and curated arms, report the compute multiplier.

Protocol (ALGORITHMS.md section 7): one tokenizer for every arm (trained on the baseline's training
documents unless given); the same model, optimiser and schedule; the baseline trained to several
budgets (each run annealed at its own end), every other arm to the reference budget; k seeds each;
all runs evaluated on the same held-out sets: a slice of the baseline pool that no arm trains on
(chosen by a hash of the id) and any named reference sets. The multiplier of an arm, per seed, is
multiplier.py's M against that seed's baseline curve; reported as mean ± std over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from winnow.pipeline.config import Strict
from winnow.pipeline.documents import in_heldout_slice, read_documents
from winnow.pipeline.errors import ConfigError
from winnow.proxy.multiplier import multiplier
from winnow.tokenize.writers import is_packed


class HeldoutSet(Strict):
    paths: list[str] = Field(description="a folder of Parquet shards or JSONL files/globs")
    max_docs: int = Field(400, gt=0)
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
                                "winnow pack stage folder, used as packed; the first is the baseline unless "
                                "`baseline` is set")
    baseline: str | None = None
    output: str
    pool_heldout_fraction: float = Field(0.05, ge=0, lt=0.5, description="slice of the baseline pool held out")
    heldout: dict[str, HeldoutSet] = Field(default_factory=dict, description="extra held-out sets")
    primary_eval: str | None = Field(None, description="held-out set the multiplier uses (default: the first: "
                                     "'pool' when pool_heldout_fraction > 0)")
    max_docs: int | None = Field(None, gt=0, description="cap on training documents per arm")
    tokenizer: str | None = Field(None, description="local tokenizer.json; null: train a BPE on the baseline")
    vocab_size: int = Field(4096, ge=260)
    size: str = "tiny"
    seq_len: int = Field(256, ge=16)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(3e-3, gt=0)
    schedule: str = Field("cosine", pattern="^(cosine|wsd)$", description="cosine, or warmup-stable-decay")
    flop_budget: float = Field(1e12, gt=0, description="training FLOPs of every curated run")
    baseline_budgets: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0],
                                          description="baseline runs at these multiples of flop_budget")
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    n_evals: int = Field(6, gt=0)
    max_eval_rows: int = Field(128, gt=0)
    device: str = "auto"
    intra_doc: bool = True
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)


def run_tokenizer(packed_stage: str) -> str | None:
    """The tokenizer.json a winnow run trained or loaded, found beside its pack stage."""
    found = sorted(Path(packed_stage).parent.glob("[0-9][0-9]-tokenize/tokenizer.json"))
    return str(found[-1]) if found else None


def packed_rows(stage_dir: Path, seq_len: int):
    """Rows of a winnow pack stage as training tensors; their length must be the eval's seq_len."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.proxy.data import rows_from_table

    table = pa.concat_tables(pq.read_table(p) for p in sorted(stage_dir.glob("train-*.parquet")))
    width = len(table.column("input_ids")[0])
    if width != seq_len:
        raise ConfigError(f"{stage_dir} holds rows of {width} tokens but seq_len is {seq_len}", key="seq_len")
    n_docs = len(set(d for docs in table.column("doc_ids").to_pylist() for d in docs))
    return rows_from_table(table, n_docs)


def curation_flops(arm_path: str) -> float:
    """Model FLOPs the winnow stages up to this stage folder recorded in their manifests."""
    stage_dir = Path(arm_path)
    if not (stage_dir / "_manifest.json").exists():
        return 0.0
    total = 0.0
    for manifest in sorted(stage_dir.parent.glob("[0-9][0-9]-*/_manifest.json")):
        if manifest.parent.name <= stage_dir.name:
            m = json.loads(manifest.read_text())
            # per-shard FLOPs, plus what fit steps spent (embedding, training and scoring passes)
            total += m["totals"].get("flops", 0.0) + sum(v for k, v in m.items() if k.endswith("_flops"))
    return total


def run_eval(cfg: EvalConfig, log=print) -> dict:
    from winnow.proxy.data import pack_documents
    from winnow.proxy.train import TrainConfig, save_checkpoint, train
    from winnow.tokenize.tokenize_stage import TokenizerState
    from winnow.tokenize.tokenizer import EOS, load_tokenizer, train_bpe

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    names = list(cfg.arms)
    baseline = cfg.baseline or names[0]
    if baseline not in cfg.arms:
        raise ConfigError(f"baseline {baseline!r} is not one of the arms {names}", key="baseline")

    packed_arms = {name: path for name, path in cfg.arms.items() if is_packed(Path(path))}
    docs = {name: read_documents(path, key=f"arms/{name}") for name, path in cfg.arms.items() if name not in packed_arms}
    pool_ids, pool_texts = [], []
    arms_train = {}
    for name, (ids, texts) in docs.items():
        held_out = [in_heldout_slice(d, cfg.pool_heldout_fraction) for d in ids]
        keep = [i for i, h in enumerate(held_out) if not h]
        if name == baseline:
            held = [i for i, h in enumerate(held_out) if h]
            pool_ids, pool_texts = [ids[i] for i in held], [texts[i] for i in held]
        keep = keep[: cfg.max_docs] if cfg.max_docs else keep
        arms_train[name] = ([ids[i] for i in keep], [texts[i] for i in keep])

    tokenizer_path = cfg.tokenizer or next((run_tokenizer(p) for p in packed_arms.values()), None)
    if tokenizer_path:
        tok = load_tokenizer(tokenizer_path)
    elif baseline in arms_train:
        tok = train_bpe(arms_train[baseline][1][:5000], cfg.vocab_size)
    else:
        raise ConfigError("set `tokenizer`: the baseline is packed and no tokenizer.json was found beside it",
                          key="tokenizer")
    tok.save(str(out / "tokenizer.json"))
    state = TokenizerState(tok.to_str(), EOS)
    eval_sets = {}
    if pool_ids:
        eval_sets["pool"] = pack_documents(pool_ids[:400], pool_texts[:400], state, cfg.seq_len)
    for name, spec in cfg.heldout.items():
        eval_sets[name] = pack_documents(*read_documents(spec.paths, spec.max_docs, f"heldout/{name}/paths",
                                                          spec.heldout_fraction, "heldout"), state, cfg.seq_len)
    if not eval_sets:
        raise ConfigError("no held-out set: set pool_heldout_fraction > 0 or add `heldout`", key="heldout")
    primary = cfg.primary_eval or next(iter(eval_sets))
    if primary not in eval_sets:
        raise ConfigError(f"primary_eval {primary!r} is not a held-out set: {list(eval_sets)}", key="primary_eval")
    rows = {name: pack_documents(ids, texts, state, cfg.seq_len) for name, (ids, texts) in arms_train.items()}
    for name, path in packed_arms.items():  # winnow's own pack output, used as it is
        rows[name] = packed_rows(Path(path), cfg.seq_len)
    for name, r in rows.items():
        log(f"arm {name}: {r.n_documents:,} documents, {len(r):,} rows, {r.target_tokens:,} unique target tokens")

    runs: list[dict] = []
    for seed in cfg.seeds:
        for name in names:
            budgets = cfg.baseline_budgets if name == baseline else [1.0]
            for b in budgets:
                tcfg = TrainConfig(size=cfg.size, seq_len=cfg.seq_len, batch_size=cfg.batch_size, lr=cfg.lr,
                                   schedule=cfg.schedule,
                                   flop_budget=cfg.flop_budget * b, n_evals=cfg.n_evals, seed=seed,
                                   max_eval_rows=cfg.max_eval_rows, device=cfg.device, intra_doc=cfg.intra_doc)
                log(f"[{name} seed {seed} budget {b}x]")
                result = train(tcfg, state.vocab_size, rows[name], eval_sets, log=log)
                model = result.pop("model")
                ckpt = out / "checkpoints" / f"{name}-seed{seed}-{b:g}x.safetensors"
                ckpt.parent.mkdir(exist_ok=True)
                save_checkpoint(model, str(ckpt), {"arm": name, "seed": seed, "budget": b, **result["config"],
                                                   "vocab_size": state.vocab_size})
                result["checkpoint"] = str(ckpt)
                entry = {"arm": name, "seed": seed, "budget": b, **result,
                         "final": result["points"][-1]["eval"] if result["points"] else {}}
                if name == names[-1] and b == 1.0 and cfg.downstream and (cfg.downstream.hellaswag or cfg.downstream.piqa):
                    from winnow.proxy.downstream import score_downstream

                    entry["downstream"] = score_downstream(model, state.tokenizer, cfg.downstream, cfg.seq_len)
                runs.append(entry)

    report = summarize(cfg, runs, baseline, primary, rows)
    report["tokenizer_vocab"] = state.vocab_size
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    report["plot"] = plot(report, out / "loss_vs_flops.png", primary)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    return report


def summarize(cfg: EvalConfig, runs: list[dict], baseline: str, primary: str, rows: dict) -> dict:
    arms = {}
    for name in cfg.arms:
        if name == baseline:
            continue
        per_seed, by_set = [], {}
        for seed in cfg.seeds:
            mine = next(r for r in runs if r["arm"] == name and r["seed"] == seed)
            for eval_set in mine["final"]:
                curve = [(r["flops"], r["final"][eval_set]) for r in runs
                         if r["arm"] == baseline and r["seed"] == seed]
                m = multiplier(mine["final"][eval_set], mine["flops"], curve, curation_flops(cfg.arms[name]))
                by_set.setdefault(eval_set, []).append(m)
                if eval_set == primary:
                    per_seed.append({"seed": seed, "final_loss": mine["final"][primary], **m})
        values = np.asarray([p["multiplier"] for p in per_seed])
        nets = np.asarray([p["net_multiplier"] for p in per_seed])
        statuses = sorted({p["status"] for p in per_seed})
        arms[name] = {"multiplier": float(values.mean()), "multiplier_std": float(values.std()),
                      "net_multiplier": float(nets.mean()), "net_multiplier_std": float(nets.std()),
                      "status": statuses, "per_seed": per_seed,
                      "by_eval_set": {k: {"multiplier": float(np.mean([m["multiplier"] for m in v])),
                                          "status": sorted({m["status"] for m in v})} for k, v in by_set.items()},
                      "note": ("a lower bound: the baseline never reached this loss" if "not_reached" in statuses
                               else "an upper bound: below the smallest baseline run" if "below_range" in statuses
                               else "interpolated")}
    return {
        "config": cfg.model_dump(mode="json"), "baseline": baseline, "eval_set": primary, "arms": arms,
        "unique_tokens": {n: r.target_tokens for n, r in rows.items()},
        "epochs": {f"{r['arm']}/seed{r['seed']}/{r['budget']}x": round(r["epochs"], 3) for r in runs},
        "runs": runs,
    }


def plot(report: dict, path: Path, primary: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    arms = list(report["config"]["arms"])
    for i, arm in enumerate(arms):
        mine = [r for r in report["runs"] if r["arm"] == arm]
        for r in mine:  # each run's eval curve, faint
            ax.plot([p["flops"] for p in r["points"]], [p["eval"][primary] for p in r["points"]],
                    color=colors[i % len(colors)], alpha=0.25, lw=1)
        budgets = sorted({r["budget"] for r in mine})
        finals = [[r["final"][primary] for r in mine if r["budget"] == b] for b in budgets]
        flops = [next(r["flops"] for r in mine if r["budget"] == b) for b in budgets]
        ax.plot(flops, [np.mean(f) for f in finals], "o-", color=colors[i % len(colors)], label=arm)
        ax.fill_between(flops, [min(f) for f in finals], [max(f) for f in finals],
                        color=colors[i % len(colors)], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(f"held-out loss ({primary}), nats/token")
    ax.set_title("final loss per run (band: min-max over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
