"""A meta-trained DataRater as a scorer: train one into a folder, load it, score documents.

The folder holds `tokenizer.json` (a BPE trained on the pool sample and the target), `rater.safetensors`
with `rater.json` (its RaterConfig), `history.json` (the meta-loss curve, the uniform-weight control and FLOPs) and `checkpoint/`
(meta-training state, keyed by config and data: a killed fit resumes from its last checkpoint). Scores are raw rater outputs,
higher = more useful; a document longer than the rater's context is scored in consecutive chunks
combined by their token-weighted mean (datarater.score_documents).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

import numpy as np

from winnow.raters.scorer import Scorer, cached, file_key, inference, resolve_device

RATER_WEIGHTS, RATER_CONFIG, HISTORY, TOKENIZER = "rater.safetensors", "rater.json", "history.json", "tokenizer.json"
CHECKPOINTS = "checkpoint"   # meta-training state under the rater's folder, one subfolder per config and data
# Defaults on a CUDA device, where inner-model scale is what rater quality depends on (the paper:
# 400M > 150M inner models); `meta:` keys still override each. Not yet run on a GPU.
GPU_META = {"inner_d": 256, "inner_layers": 4, "inner_heads": 4, "n_models": 4, "rater_d": 128, "rater_layers": 2,
            "seq_len": 256, "inner_batch": 32, "outer_batch": 64, "lifetime": 1200, "prewarm": 200}


def train_datarater(pool: list[str], target: list[str], folder: str, meta: dict, vocab_size: int = 2048,
                    outer_fraction: float = 0.2, max_chunks: int = 4, seed: int = 0, device: str = "auto",
                    threads: int | None = None, log=print) -> dict:
    """Meta-train a rater and save it in `folder`. Inner data: `pool` (less its outer slice when there
    is no target). Outer (held-out) data: `target` when given, else the last `outer_fraction` of `pool`
    (the caller orders the pool by a seeded id hash, so this is an id-hash slice). Returns the history."""
    import torch
    from safetensors.torch import save_file

    from winnow.raters.datarater import MetaConfig, document_chunks, meta_train, uniform_control
    from winnow.tokenize.tokenize_stage import TokenizerState
    from winnow.tokenize.tokenizer import EOS, train_bpe

    if threads:
        torch.set_num_threads(threads)
    os.makedirs(folder, exist_ok=True)
    if target:
        targets = set(target)
        inner, outer = [t for t in pool if t not in targets], target    # target documents never train inner models
    else:
        cut = int(round(len(pool) * (1 - outer_fraction)))
        inner, outer = pool[:cut], pool[cut:]
    if not inner or not outer:
        raise ValueError(f"datarater: {len(inner)} inner and {len(outer)} outer documents: need both")
    tok = train_bpe(inner + outer, vocab_size)
    state = TokenizerState(tok.to_str(), EOS)
    gpu = resolve_device(meta.get("device", device)).startswith("cuda")
    cfg = MetaConfig.from_overrides(meta, seed=seed, device=device, threads=threads, **(GPU_META if gpu else {}))
    inner_rows, _ = document_chunks(inner, state, cfg.seq_len, max_chunks)
    outer_rows, _ = document_chunks(outer, state, cfg.seq_len, max_chunks)
    log(f"datarater: meta-training on {len(inner):,} documents ({len(inner_rows):,} rows) against "
        f"{len(outer):,} {'target' if target else 'held-out pool'} documents ({len(outer_rows):,} rows)")
    # the checkpoint is keyed by what is trained on and how: a rerun with another config or sample
    # starts afresh instead of resuming a different meta-training
    key = hashlib.blake2b(json.dumps([asdict(cfg), vocab_size], sort_keys=True, default=str).encode(), digest_size=8)
    for text in inner + ["\x00outer"] + outer:
        key.update(text.encode("utf-8", "surrogatepass"))
    rater, history = meta_train(cfg, state.vocab_size, inner_rows, outer_rows, log=log,
                                checkpoint_dir=os.path.join(folder, CHECKPOINTS, key.hexdigest()))
    tok.save(os.path.join(folder, TOKENIZER))
    save_file({k: v.detach().contiguous().cpu() for k, v in rater.state_dict().items()},
              os.path.join(folder, RATER_WEIGHTS))
    with open(os.path.join(folder, RATER_CONFIG), "w") as f:
        json.dump(asdict(rater.cfg), f)
    summary = {"meta_steps": len(history["meta_loss"]), "averaged_steps": history["averaged_steps"],
               "meta_loss": history["meta_loss"],
               "uniform_outer_loss": history["uniform_outer_loss"], "uniform_control": uniform_control(history),
               "flops": history["flops"],
               "scoring_flops_per_token": history["scoring_flops_per_token"], "inner_documents": len(inner),
               "outer_documents": len(outer), "outer": "target" if target else "pool_heldout_slice",
               "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}}
    with open(os.path.join(folder, HISTORY), "w") as f:
        json.dump(summary, f)
    return summary


def _load(folder: str, device: str):
    import torch
    from safetensors.torch import load_file

    from winnow.raters.datarater import DataRater, RaterConfig
    from winnow.tokenize.tokenize_stage import TokenizerState
    from winnow.tokenize.tokenizer import EOS, load_tokenizer

    with open(os.path.join(folder, RATER_CONFIG)) as f:
        cfg = RaterConfig(**json.load(f))
    rater = DataRater(cfg)
    rater.load_state_dict(load_file(os.path.join(folder, RATER_WEIGHTS)))
    state = TokenizerState(load_tokenizer(os.path.join(folder, TOKENIZER)).to_str(), EOS)
    return rater.to(torch.device(device)).eval(), state


class DataRaterScorer(Scorer):
    """Raw DataRater scores (higher = better) of whole documents, chunked by the rater's context."""

    def __init__(self, folder: str, device: str = "auto", max_chunks: int | None = 8, threads: int | None = None):
        super().__init__(threads)
        from winnow.raters.datarater import scoring_flops_per_token

        self.device = resolve_device(device)
        self.rater, self.tokenizer = cached(("datarater", *file_key(os.path.join(folder, RATER_WEIGHTS)), self.device),
                                            lambda: _load(folder, self.device))
        self.max_chunks = max_chunks
        self.per_token = scoring_flops_per_token(self.rater.cfg)

    def score(self, texts: list[str]) -> np.ndarray:
        from winnow.raters.datarater import score_documents_counted

        if not texts:
            return np.zeros(0)
        with inference(self.device, self.threads):
            scores, tokens = score_documents_counted(self.rater, texts, self.tokenizer, self.max_chunks)
        self.flops += self.per_token * tokens
        return scores
