"""Model FLOPs: every formula winnow uses to count what a model costs, in one place.

Why a top-level module and not winnow/proxy/flops.py: the formulas are used by the proxy runs, the
raters (classifiers, embeddings, reference LMs, the DataRater), the filters and the synthetic-data
stage alike, and winnow/proxy/flops.py imports the proxy network (torch). This module imports
nothing heavy, so a fastText or rephrase stage can count its FLOPs without loading torch.
What stays outside is how many parameters a given network has (winnow/proxy/flops.py for the
proxy LM, winnow/raters/datarater.py for the rater, winnow/raters/embed.py for a loaded encoder):
those are facts of an architecture; the FLOPs per parameter and per token are here.

Conventions (all counts are estimates, stated rather than measured):
  * a multiply-accumulate is 2 FLOPs, so a forward pass costs 2 x N per token for N matmul
    parameters (Kaplan et al. 2020; embedding lookups cost nothing, a tied output layer counts
    once, as the output matmul);
  * attention adds QK^T and the weighted sum AV: 2 x T x width each per layer and token, i.e.
    4 x L x width x T forward for a context of T (PaLM, Chowdhery et al. 2022, App. B);
  * training (forward + backward) is 3 x forward: 6 x N + 12 x L x width x T per token (C = 6ND);
    for the proxy LM the tied output layer adds 6 x d_model x V, which rivals 6N at d_model <= 256
    (Hoffmann et al. 2022, App. F; ALGORITHMS.md section 7);
  * generation with a local model is 2 x N per token, prompt and completion alike (attention
    over the KV cache is not counted); a remote model's cost is reported in tokens only.

Padded positions count when a caller passes them: they are computed. Attention is counted for
the full context even with intra-document masks (an upper bound for the dense-mask kernel).
"""

from __future__ import annotations

import numpy as np

FLOPS_PER_MAC = 2          # one multiply-accumulate
TRAINING_MULTIPLE = 3      # forward + backward (backward ~ 2 x forward)
META_INNER_MULTIPLE = 3    # a DataRater inner step in the meta-window: backward with create_graph, then
                           # the meta-backward through that backward (about twice its cost)


def matmul_flops(macs: float) -> float:
    """FLOPs of `macs` multiply-accumulates (an (m, k) @ (k, n) product has m x k x n), as a float."""
    return 2.0 * macs


def attention_flops_per_token(n_layer: int, width: int, context: int) -> int:
    """Forward FLOPs per token of attention over `context` positions: QK^T and AV, 2 x context x width
    each, in each of `n_layer` layers (`width` = heads x head dim, d_model for the usual shapes)."""
    return 4 * n_layer * width * context


def forward_flops_per_token(params: int, n_layer: int, width: int, context: int) -> int:
    """Forward FLOPs per token of a transformer with `params` matmul parameters (embeddings excluded,
    a tied output layer included once) attending over `context` positions."""
    return FLOPS_PER_MAC * params + attention_flops_per_token(n_layer, width, context)


def training_flops_from_forward(forward: float) -> float:
    """Forward + backward FLOPs from the forward cost (the backward is about twice the forward)."""
    return TRAINING_MULTIPLE * forward


def training_flops_per_token(params: int, n_layer: int, width: int, context: int) -> int:
    """Training FLOPs per token: 3 x forward = 6 x params + 12 x n_layer x width x context."""
    return training_flops_from_forward(forward_flops_per_token(params, n_layer, width, context))


def documents_forward_flops(params: int, n_layer: int, width: int, lengths: np.ndarray) -> float:
    """Forward FLOPs of an encoder over documents of `lengths` tokens, each attending over itself:
    the sum over documents of T x forward_flops_per_token(params, n_layer, width, T), i.e.
    2 x params x sum(T) + 4 x n_layer x width x sum(T^2)."""
    lengths = np.asarray(lengths, np.float64)
    return float(2.0 * params * lengths.sum() + 4.0 * n_layer * width * (lengths**2).sum())


def batch_forward_flops(params: int, n_layer: int, width: int, rows: int, context: int) -> float:
    """Forward FLOPs of a (rows, context) batch of a decoder: every position counted, padding included."""
    return float(rows * context * forward_flops_per_token(params, n_layer, width, context))


def meta_step_flops(lm_training_per_token: float, inner_tokens: int, outer_tokens: int) -> float:
    """Inner-model FLOPs of one DataRater meta-window: `inner_tokens` trained inside the window (3 x a
    training step each, see META_INNER_MULTIPLE) plus the outer step on `outer_tokens` (one training step:
    forward + backward to the updated parameters); `lm_training_per_token` as training_flops_per_token."""
    return lm_training_per_token * (META_INNER_MULTIPLE * inner_tokens + outer_tokens)


def generation_flops(params: int, tokens: int) -> float:
    """FLOPs of a local model with `params` parameters reading or writing `tokens` tokens: 2 x N per token."""
    return 2.0 * params * tokens


def approx_decoder_params(n_layer: int, d_model: int, vocab_size: int) -> int:
    """A decoder's parameters from its shape when the weights are not at hand: 12 x L x d^2 for the
    blocks (attention 4d^2, a 4x MLP 8d^2; Kaplan et al. 2020) plus the (tied) embedding V x d."""
    return int(12 * n_layer * d_model * d_model + vocab_size * d_model)


def fasttext_training_flops(dim: int, words: int, epochs: int) -> float:
    """fastText supervised training: per word and epoch, one `dim`-vector for the word and one for its
    bigram, forward and back (3 x the forward's 2 x dim each)."""
    return 3.0 * 2 * dim * 2 * words * epochs


def fasttext_flops(dim: int, words: int, lines: int, labels: int = 2) -> float:
    """fastText prediction: one `dim`-vector averaged per word and per word bigram (about 2 per word),
    then one (dim x labels) product per line: 2 x dim x (2 x words + labels x lines)."""
    return 2.0 * dim * (2 * words + labels * lines)
