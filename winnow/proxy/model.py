"""A small decoder-only transformer for proxy runs, all of it in this one file.

RMSNorm, rotary positions, SwiGLU MLP, tied input/output embeddings, attention through
`scaled_dot_product_attention`. With `segment_ids` (packed rows) attention is block-diagonal
causal: a token sees only earlier tokens of its own document, and positions restart per document
(Zhao et al., ACL 2024, "IntraDoc"). Without them it is plain causal attention over the row.
References: LLaMA (Touvron et al. 2023) for the block; nanoGPT for the shape of the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ProxyConfig:
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    mlp_ratio: float = 8 / 3    # SwiGLU keeps the parameter count of a 4x GELU MLP
    max_seq_len: int = 1024
    rope_base: float = 10000.0


SIZES = {
    "tiny": dict(n_layer=4, n_head=4, d_model=128),     # ~0.8M non-embedding params: CPU tests
    "small": dict(n_layer=6, n_head=6, d_model=384),    # ~10.6M
    "base": dict(n_layer=8, n_head=8, d_model=768),     # ~56.6M: GPU
}


def config_for(size: str, vocab_size: int, max_seq_len: int) -> ProxyConfig:
    if size not in SIZES:
        raise ValueError(f"unknown proxy size {size!r}; known: {sorted(SIZES)}")
    return ProxyConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **SIZES[size])


def mlp_hidden(cfg: ProxyConfig) -> int:
    return int(math.ceil(cfg.mlp_ratio * cfg.d_model / 32) * 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(cfg: ProxyConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    head_dim = cfg.d_model // cfg.n_head
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(cfg.max_seq_len, device=device).float(), inv)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hs); cos/sin: (B, 1, T, hs/2) gathered at each token's position
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ProxyConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ProxyConfig):
        super().__init__()
        hidden = mlp_hidden(cfg)
        self.gate_up = nn.Linear(cfg.d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ProxyConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2, self.mlp = RMSNorm(cfg.d_model), MLP(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class ProxyLM(nn.Module):
    def __init__(self, cfg: ProxyConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model)
        cos, sin = rotary_tables(cfg)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def non_embedding_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("embed"))

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V). `segment_ids` (B, T; 0 = padding) turns on block-diagonal causal attention."""
        return F.linear(self.hidden(input_ids, segment_ids, position_ids), self.embed.weight)  # tied output layer

    def hidden(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final normalised hidden states (B, T, d): the logits before the output layer, for
        callers that apply the output layer in slices to bound memory (raters/reference_lm.py)."""
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        cos = self.cos[position_ids].unsqueeze(1)  # (B, 1, T, hs/2)
        sin = self.sin[position_ids].unsqueeze(1)
        mask = None
        if segment_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)  # (B, T, T)
            # padding rows attend to themselves only, so no row of the mask is empty (NaN-free softmax)
            mask = (same & causal) | torch.eye(T, dtype=torch.bool, device=input_ids.device)
            mask = mask.unsqueeze(1)  # (B, 1, T, T)
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x)
