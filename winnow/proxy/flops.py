"""Training FLOPs of a proxy run: the proxy LM's parameter count, and thin wrappers that apply the
shared formulas of winnow/flops.py (which owns every FLOP formula) to a ProxyConfig.

Per token, training (forward + backward = 3x forward):
    6 * N                      N = non-embedding parameters (Kaplan et al. 2020, C = 6ND)
  + 12 * L * H * Q * T         attention scores and weighted sum (PaLM, Chowdhery et al. 2022, App. B)
  + 6 * d_model * V            the (tied) output layer, 2dV forward: at d_model <= 256 it rivals 6N
                               (Hoffmann et al. 2022, App. F count it; ALGORITHMS.md section 7)
with L layers, H heads, Q head dim, T the row length. Padded positions count: they are computed.
Attention is counted for the full row even with intra-document masks (an upper bound for the
dense-mask kernel that runs on CPU; block-sparse kernels on GPU do less).
"""

from __future__ import annotations

from winnow.flops import training_flops_per_token
from winnow.proxy.model import ProxyConfig, mlp_hidden


def non_embedding_params(cfg: ProxyConfig) -> int:
    d = cfg.d_model
    attn = 4 * d * d                      # qkv (3d^2) + output projection (d^2)
    mlp = 3 * d * mlp_hidden(cfg)         # gate+up (2 d h) + down (h d)
    norms = 2 * d
    return cfg.n_layer * (attn + mlp + norms) + d  # + final norm


def flops_per_token(cfg: ProxyConfig, seq_len: int) -> float:
    """Training FLOPs per row position: winnow.flops.training_flops_per_token with the tied output
    layer (d_model x V) counted as matmul parameters and attention width heads x head dim."""
    head_dim = cfg.d_model // cfg.n_head
    return training_flops_per_token(non_embedding_params(cfg) + cfg.d_model * cfg.vocab_size, cfg.n_layer,
                                    cfg.n_head * head_dim, seq_len)


def training_flops(cfg: ProxyConfig, seq_len: int, positions: int) -> float:
    """FLOPs to train on `positions` row positions (padding included)."""
    return flops_per_token(cfg, seq_len) * positions
