"""DataRater: a small rater meta-learned through a proxy LM's own training steps.

Calian et al. (Google DeepMind, 2025), "DataRater: Meta-Learned Dataset Curation"; ALGORITHMS.md section 1.

A non-causal transformer `phi_eta(x) -> R` scores each training row. Meta-training, per inner model of a
population and per meta-step:

1. for `unroll` inner steps: score a batch of rows; every target token of row j gets the weight
   `exp(s_j) / sum_k n_k exp(s_k)` (a softmax over the batch's TOKENS, `n_j` the row's target tokens), so
   the inner loss `sum_j pi_j * l_j(theta)`, `pi_j = softmax_j(s_j + log n_j)` and `l_j` the row's mean
   token NLL, is a weighted token mean like the outer loss and plain training. A score buys the same per
   token in a short row as in a long one: the rater is length-neutral (with a softmax over rows and a
   per-row mean, a short row's tokens weighed more per unit of weight and the learned score followed
   length, Spearman +0.47 on web). Then a differentiable inner update (Adam with `m`, `v` kept in the
   graph, or SGD) through `torch.autograd.grad(..., create_graph=True)`;
2. outer loss = mean token NLL of the updated inner model on a held-out batch; its gradient reaches the
   rater's parameters through the unrolled updates (second order: the math SDPA kernel is forced);
3. each model's meta-gradient is clipped (global norm) and goes through that model's own Adam state;
   the per-model updates are averaged and applied to the rater (decoupled weight decay, linear warm-up);
4. the inner parameters and Adam state are detached (truncated back-propagation) and the inner model
   keeps training from there in the next window. Models are re-initialised when their age (inner steps)
   reaches `lifetime`; ages start staggered so the population always spans early and late training.
5. the rater returned is the mean of the rater's weights after each meta-step of the last `average_tail`
   (Polyak averaging; the fit goes on with the latest weights). One step's rater wanders from step to step
   at CPU scale; averaged, 100 steps beat 200 raw ones on the paper's objective and were even in target
   mode (bench/LOG.md, session 15).

A first-order variant (`first_order=True`): one SGD look-ahead step, `theta' = theta - lr * sum_j pi_j g_j`;
the meta-gradient is then `-lr * <g_j, grad L_out(theta')>` per row (gradient alignment), no Hessian terms
of the inner loss beyond the one that carries `pi`. A baseline, not the default.

Outer batches: the paper draws them from a disjoint slice of the same pool. On CPU-sized runs with a planted
70/30 clean/corrupted pool that setting was unstable and mostly learned the wrong way (planted AUC 0.94-0.96
after 10 meta-steps, then 0.57, 0.27, 0.04: young inner models gain fastest on the pool's own corrupted slice,
which is learnable on a short horizon); a disjoint CLEAN target slice gave AUC 0.96-1.0. Either is a matter
of which rows the caller passes as `outer_rows`.

Rater: embeddings, one width-3 convolution over them (n-gram features; 0 turns it off), no absolute positions
by default (`rater_positions`: their mean over a row tells the rater its length), bidirectional pre-norm transformer blocks. Scoring uses the raw score (no softmax); higher = more useful.
Pooling: mean of the last layer's hidden states over the row's non-padding tokens. Documents longer than
the rater's context are scored in consecutive chunks of `seq_len` tokens combined by a token-weighted mean
of the chunk scores.

FLOP accounting (stated estimates, formulas in winnow/flops.py; `history["flops"]` and `scoring_flops_per_token`):
  * a plain inner step: `F_lm * tokens` with `F_lm = flops_per_token` of winnow.proxy.flops (6N + attention
    + output layer, forward + backward);
  * an inner step inside the meta-window: `3 * F_lm * tokens` (forward + backward with `create_graph`,
    then the meta-backward through that backward, about twice its cost);
  * the outer step: `F_lm * tokens` (forward + backward to the updated parameters);
  * the rater, per inner step: `F_rater * tokens` with `F_rater = 3 * (2 N_rater + 4 L d T)`, forward and
    backward; scoring costs `2 N_rater + 4 L d T` per token (N_rater without embeddings).

    from winnow.raters.datarater import MetaConfig, document_rows, meta_train, score_documents
    rows = document_rows(texts, tokenizer_state, seq_len=128)
    rater, history = meta_train(MetaConfig(), vocab_size, inner_rows, outer_rows, checkpoint_dir="ckpt")
    scores = score_documents(rater, texts, tokenizer_state)      # (n,) float64, higher is better
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from winnow.flops import forward_flops_per_token, meta_step_flops, training_flops_from_forward
from winnow.pipeline.retained_heap import retained_heap
from winnow.pipeline.shards import temp_path
from winnow.proxy.data import PackedRows
from winnow.proxy.flops import flops_per_token
from winnow.proxy.model import ProxyLM
from winnow.raters.datarater_config import MetaConfig, RaterConfig, check_meta_config

CHECKPOINT_NAME = "datarater_meta.pt"


# ------------------------------------------------------------------------------------------------
# The rater


class RaterBlock(nn.Module):
    """Pre-norm transformer block with bidirectional attention (padding keys masked out)."""

    def __init__(self, cfg: RaterConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # key_mask: (B, 1, 1, T)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp(self.norm2(x))


class DataRater(nn.Module):
    """Non-causal transformer over token ids -> one scalar per row.

    Learned absolute positions, pre-norm blocks, final LayerNorm, MEAN POOLING over the row's non-padding
    tokens (`mask` = 1 for tokens, 0 for padding), linear head. The head starts at zero, so an untrained
    rater gives every row the same score (uniform weights = ordinary training).
    """

    def __init__(self, cfg: RaterConfig):
        super().__init__()
        if cfg.conv_kernel % 2 == 0 and cfg.conv_kernel:
            raise ValueError("conv_kernel must be odd (or 0)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # without positions the rater reads a row as n-grams (the conv) in context (attention): nothing in it
        # counts the row's tokens, so a score cannot follow length (tests/test_datarater.py)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions else None
        # local n-gram features: one layer of attention from random positions learns "look at my
        # neighbour" slowly, and word order is what separates shuffled text from prose
        self.conv = nn.Conv1d(cfg.d_model, cfg.d_model, cfg.conv_kernel, padding=cfg.conv_kernel // 2) \
            if cfg.conv_kernel else None
        self.blocks = nn.ModuleList(RaterBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.weight)

    def non_embedding_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith(("embed", "pos")))

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scores (B,) for rows `input_ids` (B, T <= seq_len); `mask` (B, T) is 1 on real tokens."""
        B, T = input_ids.shape
        keep = mask > 0
        x = self.embed(input_ids) * keep.unsqueeze(-1)  # (B, T, d); padding contributes nothing to the conv
        if self.conv is not None:
            x = x + F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # Conv1d wants (B, d, T)
        if self.pos is not None:
            x = x + self.pos(torch.arange(T, device=input_ids.device))
        # an all-padding row would leave attention with no key: let it see itself (score is then ~bias)
        key_mask = (keep | ~keep.any(1, keepdim=True))[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.norm(x)
        weights = keep.to(x.dtype)
        pooled = (x * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)  # (B, d)
        # the score at the head's own precision even under bf16 autocast (CUDA scoring): a bf16 score keeps
        # 8 bits of mantissa, and documents then tie in bulk at the cut
        with torch.autocast(x.device.type, enabled=False):
            return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1)


def rater_matmul_params(cfg: RaterConfig) -> int:
    """The rater's matmul parameters per token: blocks, conv and head (embeddings, biases and norms ignored)."""
    d, h = cfg.d_model, cfg.mlp_ratio * cfg.d_model
    per_layer = 4 * d * d + 2 * d * h  # qkv + proj, two MLP matrices
    conv = cfg.conv_kernel * d * d
    return cfg.n_layer * per_layer + conv + d


def scoring_flops_per_token(cfg: RaterConfig) -> float:
    """Forward FLOPs per scored token (winnow.flops.forward_flops_per_token): 2 x non-embedding params
    (blocks, conv, head) + attention (QK^T and AV: 4 L d T)."""
    return forward_flops_per_token(rater_matmul_params(cfg), cfg.n_layer, cfg.d_model, cfg.seq_len)


# ------------------------------------------------------------------------------------------------
# Rows: one document per row (scores are then per document), chunks for long documents


def _encode(texts: list[str], tokenizer_state) -> list[list[int]]:
    tok = tokenizer_state.tokenizer
    encoded = tok.encode_batch_fast(list(texts), add_special_tokens=False)
    return [enc.ids + [tokenizer_state.eos_id] for enc in encoded]


def _rows_from_id_lists(id_lists: list[list[int]], seq_len: int) -> PackedRows:
    n = len(id_lists)
    input_ids = torch.zeros(n, seq_len, dtype=torch.int64)
    segment_ids = torch.zeros(n, seq_len, dtype=torch.int64)
    for i, ids in enumerate(id_lists):
        ids = ids[:seq_len]
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        segment_ids[i, :len(ids)] = 1
    position_ids = torch.arange(seq_len).expand(n, seq_len).clone()
    return PackedRows(input_ids, segment_ids, position_ids, segment_ids.float(), n)


def document_rows(texts: list[str], tokenizer_state, seq_len: int) -> PackedRows:
    """One row per document: its first `seq_len` tokens (EOS appended when it fits), right-padded with
    id 0; `segment_ids` = 1 on tokens, 0 on padding; `loss_mask` = 1 on tokens."""
    return _rows_from_id_lists(_encode(texts, tokenizer_state), seq_len)


def document_chunks(texts: list[str], tokenizer_state, seq_len: int,
                    max_chunks: int | None = None) -> tuple[PackedRows, np.ndarray]:
    """Every document cut into consecutive chunks of `seq_len` tokens (at most `max_chunks` per
    document, the first ones); returns the rows and, per row, the index of its document."""
    chunks, owner = [], []
    for doc, ids in enumerate(_encode(texts, tokenizer_state)):
        starts = list(range(0, max(len(ids), 1), seq_len))[:max_chunks]
        for start in starts:
            chunks.append(ids[start:start + seq_len])
            owner.append(doc)
    return _rows_from_id_lists(chunks, seq_len), np.asarray(owner, np.int64)


# ------------------------------------------------------------------------------------------------
# Scoring


@torch.inference_mode()
def score_rows(rater: DataRater, rows: PackedRows, batch_size: int = 256) -> np.ndarray:
    """Raw rater score per row (N,) float64, higher = more useful; padding = segment_ids 0. Rows longer
    than the rater's context keep their first `seq_len` tokens. bf16 autocast on CUDA."""
    device = next(rater.parameters()).device
    was_training = rater.training
    rater.eval()
    out = []
    T = min(rows.input_ids.shape[1], rater.cfg.seq_len)
    for start in range(0, len(rows), batch_size):
        ids = rows.input_ids[start:start + batch_size, :T].to(device)
        mask = (rows.segment_ids[start:start + batch_size, :T] > 0).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(rater(ids, mask).float().cpu())
    rater.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def score_documents(rater: DataRater, texts: list[str], tokenizer_state, max_chunks: int | None = None,
                    batch_size: int = 256) -> np.ndarray:
    """One score per document: the token-weighted mean of the scores of its `seq_len`-token chunks."""
    return score_documents_counted(rater, texts, tokenizer_state, max_chunks, batch_size)[0]


def score_documents_counted(rater: DataRater, texts: list[str], tokenizer_state, max_chunks: int | None = None,
                            batch_size: int = 256) -> tuple[np.ndarray, int]:
    """`score_documents` and the number of tokens the rater read (for FLOP accounting)."""
    rows, owner = document_chunks(texts, tokenizer_state, rater.cfg.seq_len, max_chunks)
    chunk_scores = score_rows(rater, rows, batch_size)
    tokens = rows.segment_ids.gt(0).sum(1).double().numpy()
    totals = np.bincount(owner, weights=chunk_scores * tokens, minlength=len(texts))
    counts = np.bincount(owner, weights=tokens, minlength=len(texts))
    return totals / np.maximum(counts, 1), int(tokens.sum())


# ------------------------------------------------------------------------------------------------
# Meta-training


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _HiddenStates(nn.Module):
    """`lm.hidden` as a module's forward, so `functional_call` runs the LM without its output layer."""

    def __init__(self, lm: ProxyLM):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.hidden(input_ids, segment_ids, position_ids)


def target_nll(model: ProxyLM, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T-1) next-token NLL at the loss-masked targets, 0 elsewhere. The (tied) output layer and the
    softmax run on the targets only: at a vocabulary of 2048 and d 64 they are most of the inner model's
    work, and padding and each row's last position would only be multiplied by 0 (issue 25)."""
    hidden = functional_call(_HiddenStates(model), {f"lm.{k}": v for k, v in params.items()},
                             (batch["input_ids"], batch["segment_ids"], batch["position_ids"]))
    rows, cols = (batch["loss_mask"][:, 1:] != 0).nonzero(as_tuple=True)
    logits = F.linear(hidden[rows, cols], params["embed.weight"])  # (targets, V)
    nll = F.cross_entropy(logits, batch["input_ids"][:, 1:][rows, cols], reduction="none")
    return hidden.new_zeros(hidden.shape[0], hidden.shape[1] - 1).index_put((rows, cols), nll)


def per_row_loss(model: ProxyLM, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) mean token NLL of each row over its loss-masked targets (0 for a row without targets)."""
    nll = target_nll(model, params, batch)
    mask = batch["loss_mask"][:, 1:].to(nll.dtype)
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1)


def outer_loss(model: ProxyLM, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token NLL over all real target tokens of the batch (padding excluded)."""
    nll = target_nll(model, params, batch)
    mask = batch["loss_mask"][:, 1:].to(nll.dtype)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def row_weights(scores: torch.Tensor, cfg: MetaConfig, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's share of the inner loss (sums to 1): a softmax over the batch's target tokens of the
    (optionally standardised) scores / temperature, so a row's share grows with its `tokens` (B,) at a
    fixed score. Without `tokens`: a softmax over rows."""
    if cfg.score_norm == "standardize":
        scores = (scores - scores.mean()) / (scores.std() + 1e-6)
    elif cfg.score_norm != "none":
        raise ValueError(f"unknown score_norm {cfg.score_norm!r}")
    logits = scores / cfg.temperature
    if tokens is not None:
        logits = logits + token_share(tokens).to(logits.dtype).log()
    return torch.softmax(logits, dim=0)


def token_share(tokens: torch.Tensor) -> torch.Tensor:
    """Each row's target tokens relative to the batch's longest row, in (0, 1]: a row without targets keeps
    a tiny share of its zero loss (no log 0), and a batch of full rows gets exactly 1 everywhere (the
    softmax is the same as over rows, bit for bit)."""
    tokens = tokens.clamp(min=1)
    return tokens / tokens.max()


def token_mean(losses: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The token mean of a batch from its rows' mean losses (B,) and target tokens (B,)."""
    share = token_share(tokens).to(losses.dtype)
    return (losses * share).sum() / share.sum()


def target_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) loss-masked target tokens per row (the first token of a row is never a target)."""
    return batch["loss_mask"][:, 1:].sum(1)


@dataclass
class InnerState:
    """One inner model's parameters and Adam moments (tensors; graph-connected inside a window)."""
    params: dict[str, torch.Tensor]
    m: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    step: int = 0           # Adam step count (bias correction)
    age: int = 0            # inner steps since (re)initialisation
    resets: int = 0

    def detached(self) -> InnerState:
        return InnerState({k: t.detach() for k, t in self.params.items()}, {k: t.detach() for k, t in self.m.items()},
                          {k: t.detach() for k, t in self.v.items()}, self.step, self.age, self.resets)


def inner_update(state: InnerState, grads: dict[str, torch.Tensor], cfg: MetaConfig, sgd: bool = False) -> InnerState:
    """One differentiable optimiser step (no in-place ops: every tensor may carry the graph to the rater).
    Adam: m, v are graph tensors, bias-corrected, no weight decay. SGD: theta - lr * g."""
    if sgd or cfg.inner_opt == "sgd":
        params = {k: p - cfg.inner_lr * grads[k] for k, p in state.params.items()}
        return InnerState(params, state.m, state.v, state.step + 1, state.age + 1, state.resets)
    if cfg.inner_opt != "adam":
        raise ValueError(f"unknown inner_opt {cfg.inner_opt!r}")
    b1, b2 = cfg.inner_betas
    step = state.step + 1
    params, m, v = {}, {}, {}
    for k, p in state.params.items():
        m[k] = b1 * state.m[k] + (1 - b1) * grads[k]
        v[k] = b2 * state.v[k] + (1 - b2) * grads[k] * grads[k]
        m_hat, v_hat = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
        params[k] = p - cfg.inner_lr * m_hat / (v_hat.sqrt() + cfg.inner_eps)
    return InnerState(params, m, v, step, state.age + 1, state.resets)


def _batch(rows: PackedRows, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: getattr(rows, k)[index].to(device) for k in ("input_ids", "segment_ids", "position_ids", "loss_mask")}


def meta_window(rater: DataRater, model: ProxyLM, state: InnerState, inner_batches: list[dict],
                outer_batch: dict, cfg: MetaConfig) -> tuple[torch.Tensor, InnerState, dict]:
    """Unroll len(inner_batches) rater-weighted inner updates from `state` (graph kept), then the outer
    loss of the updated model. Returns (outer loss with graph to the rater, new state, diagnostics).
    The caller differentiates the outer loss w.r.t. the rater's parameters."""
    params = {k: p.detach().requires_grad_() for k, p in state.params.items()}
    state = start = InnerState(params, state.m, state.v, state.step, state.age, state.resets)
    entropies, inner_losses = [], []
    with sdpa_kernel(SDPBackend.MATH):  # flash / memory-efficient kernels have no double backward
        for batch in inner_batches:
            scores = rater(batch["input_ids"][:, :rater.cfg.seq_len], batch["segment_ids"][:, :rater.cfg.seq_len] > 0)
            weights = row_weights(scores, cfg, target_tokens(batch))
            losses = per_row_loss(model, state.params, batch)
            loss_in = (weights * losses).sum()
            names = list(state.params)
            grad_list = torch.autograd.grad(loss_in, [state.params[k] for k in names], create_graph=True)
            grads = dict(zip(names, grad_list, strict=True))
            state = inner_update(state, grads, cfg, sgd=cfg.first_order)
            entropies.append(float(-(weights * weights.clamp(min=1e-30).log()).sum().detach()))
            inner_losses.append(float(losses.mean().detach()))
        loss_out = outer_loss(model, state.params, outer_batch)
    if cfg.first_order:  # the SGD look-ahead only scores the weights; the model itself takes its Adam step
        state = inner_update(start, {k: g.detach() for k, g in grads.items()}, cfg)
    return loss_out, state, {"weight_entropy": float(np.mean(entropies)), "inner_loss": float(np.mean(inner_losses))}


def plain_step(model: ProxyLM, state: InnerState, batch: dict[str, torch.Tensor], cfg: MetaConfig,
               sgd: bool = False) -> InnerState:
    """One unweighted optimiser step, detached: the loss is a token mean, as the weighted inner loss at
    equal scores and the outer loss."""
    params = {k: p.detach().requires_grad_() for k, p in state.params.items()}
    loss = token_mean(per_row_loss(model, params, batch), target_tokens(batch))
    names = list(params)
    grads = torch.autograd.grad(loss, [params[k] for k in names])
    state = InnerState(params, state.m, state.v, state.step, state.age, state.resets)
    return inner_update(state, dict(zip(names, grads, strict=True)), cfg, sgd=sgd).detached()


@torch.no_grad()
def _no_grad_outer(model: ProxyLM, params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> float:
    return float(outer_loss(model, params, batch))


def uniform_window(model: ProxyLM, state: InnerState, inner_batches: list[dict], outer_batch: dict,
                   cfg: MetaConfig) -> float:
    """The control arm of a meta-window: the same updates from the same `state` on the same inner batches,
    with uniform weights (a token mean: what an untrained rater gives), then the outer loss on the same outer
    batch. Nothing here reaches the rater, so no graph is kept (about a third of the window's cost).
    The weighted window's outer loss minus this one says whether the rater's weights help at all:
    near 0, nothing the rater could learn changes training at this scale, whatever its AUC says."""
    for batch in inner_batches:   # the first-order variant's window is an SGD look-ahead: so is its control
        state = plain_step(model, state, batch, cfg, sgd=cfg.first_order)
    return _no_grad_outer(model, state.params, outer_batch)


def control_start(meta_steps: int, tail: float) -> int:
    """The first meta-step (0-based) of the last `tail` of `meta_steps`: where the control starts to run
    and where its summary starts to read."""
    return int(meta_steps * (1 - tail))


def uniform_control(history: dict, tail: float = 0.5) -> dict:
    """`{weighted_outer_loss, uniform_outer_loss, delta}` over the last `tail` of the meta-steps (the rater
    has had time to learn by then): the mean outer loss after the rater-weighted updates and after uniform
    ones on the same batches from the same states; delta = weighted - uniform, negative when the rater
    helps. `delta_se`: the standard error of the per-step deltas (steps treated as independent draws).
    Steps without a control (None: before `control_tail`, or before a resume from a checkpoint written
    before the control existed, whose list is shorter) do not count."""
    weighted = np.asarray(history.get("meta_loss", []), np.float64)
    recorded = [np.nan if v is None else v for v in history.get("uniform_outer_loss", [])]
    recorded = recorded[max(0, len(recorded) - len(weighted)):]
    uniform = np.full(len(weighted), np.nan)
    uniform[len(weighted) - len(recorded):] = recorded    # the lists end at the same step
    steps = np.arange(len(weighted))
    both = (steps >= control_start(len(weighted), tail)) & np.isfinite(uniform)
    if not both.any():
        return {}
    deltas = weighted[both] - uniform[both]
    se = float(deltas.std(ddof=1) / np.sqrt(len(deltas))) if len(deltas) > 1 else float("nan")
    return {"weighted_outer_loss": round(float(weighted[both].mean()), 5),
            "uniform_outer_loss": round(float(uniform[both].mean()), 5),
            "delta": round(float(deltas.mean()), 5), "delta_se": round(se, 5),
            "steps": [int(steps[both][0]) + 1, int(steps[both][-1]) + 1]}


class MetaTrainer:
    """The population, the rater and the per-model meta-optimiser states; `run()` meta-trains to
    `cfg.meta_steps`, resuming from `checkpoint_dir` when a checkpoint is there."""

    def __init__(self, cfg: MetaConfig, vocab_size: int, inner_rows: PackedRows, outer_rows: PackedRows,
                 log: Callable[[str], None] = print, checkpoint_dir: str | os.PathLike | None = None,
                 eval_fn: Callable[[DataRater], dict] | None = None, eval_every: int = 0):
        check_meta_config(cfg)   # again: a config's fields may have been set after it was made
        self.cfg, self.vocab_size, self.log = cfg, vocab_size, log
        self.inner_rows, self.outer_rows = inner_rows, outer_rows
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.device = _device(cfg.device)
        # on the CPU the population's windows run side by side, one core each (their ops are too small for
        # intra-op threads to pay: two threads per op on two shared cores ran 8x slower per step); cores
        # left over go to each model's intra-op pool
        cores = cfg.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                else os.cpu_count() or 1)
        self.parallel = min(cfg.n_models, cores) if self.device.type == "cpu" else 1
        self.intra_threads = max(1, cores // self.parallel)
        torch.set_num_threads(self.intra_threads)
        self.dtype = getattr(torch, cfg.dtype)
        torch.manual_seed(cfg.seed)
        self.rater = DataRater(cfg.rater_config(vocab_size)).to(self.device, self.dtype)
        self.model = ProxyLM(cfg.inner_config(vocab_size)).to(self.device, self.dtype)  # the functional shell
        # one shell per model: functional_call swaps a module's parameters in place while it runs, so two
        # models side by side cannot share one
        self.shells = [self.model] + [copy.deepcopy(self.model) for _ in range(cfg.n_models - 1)]
        self.generator = torch.Generator().manual_seed(cfg.seed)  # all data sampling (state is checkpointed)
        zeros = {k: torch.zeros_like(p) for k, p in self.rater.named_parameters()}
        self.meta_m = [dict(zeros) for _ in range(cfg.n_models)]
        self.meta_v = [dict(zeros) for _ in range(cfg.n_models)]
        self.meta_step = 0
        self.history: dict[str, list] = {"meta_loss": [], "meta_loss_per_model": [], "grad_norm": [],
                                         "update_norm": [], "weight_entropy": [], "inner_loss": [],
                                         "resets": [], "eval": [], "seconds": [], "uniform_outer_loss": []}
        self.flops = {"meta": 0.0, "plain": 0.0, "rater": 0.0, "control": 0.0}
        self.lm_flops_per_token = flops_per_token(cfg.inner_config(vocab_size), cfg.seq_len)
        self.rater_flops_per_token = training_flops_from_forward(scoring_flops_per_token(self.rater.cfg))
        # the running sum (float64) of the rater's weights after each meta-step of the last `average_tail`
        self.rater_sum = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in self.rater.state_dict().items()}
        self.averaged = 0
        self.inner: list[InnerState] = []
        if not self._resume():
            # staggered ages: model i starts as if it had lived i/N of a lifetime (trained plainly); batches
            # are drawn in model order, then the models train side by side
            jobs = [(i, self._new_model(i, 0), self._draw_plain(cfg.prewarm + i * (cfg.lifetime - cfg.prewarm)
                                                                // cfg.n_models)) for i in range(cfg.n_models)]
            with retained_heap():
                self.inner = self._map(lambda job: self._train_plainly(*job), jobs)

    # -- inner models ---------------------------------------------------------------------------
    def _sample(self, rows: PackedRows, n: int) -> dict[str, torch.Tensor]:
        index = torch.randint(0, len(rows), (n,), generator=self.generator)
        return _batch(rows, index, self.device)

    def _new_model(self, i: int, resets: int) -> InnerState:
        """Model i initialised from its own seed (seed, i, resets), Adam state zeroed."""
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG where it was
            torch.manual_seed(self.cfg.seed * 1_000_003 + i * 10_007 + resets)
            net = ProxyLM(self.cfg.inner_config(self.vocab_size)).to(self.device, self.dtype)
        params = {k: p.detach() for k, p in net.named_parameters()}
        return InnerState(params, {k: torch.zeros_like(p) for k, p in params.items()},
                          {k: torch.zeros_like(p) for k, p in params.items()}, 0, 0, resets)

    def _draw_plain(self, steps: int) -> list[dict[str, torch.Tensor]]:
        """The batches of `steps` plain inner steps (drawn here, in the sampler's order; counted as trained)."""
        batches = [self._sample(self.inner_rows, self.cfg.inner_batch) for _ in range(steps)]
        self.flops["plain"] += sum(self.lm_flops_per_token * b["input_ids"].numel() for b in batches)
        return batches

    def _train_plainly(self, i: int, state: InnerState, batches: list[dict[str, torch.Tensor]]) -> InnerState:
        """Model i (in its own shell) after a plain step on each of `batches`."""
        for batch in batches:
            state = plain_step(self.shells[i], state, batch, self.cfg)
        return state

    def _map(self, fn: Callable, jobs: list) -> list:
        """`fn` over `jobs`, side by side on `self.parallel` threads (results in job order). Each job is
        computed exactly as it would be alone, so the result does not depend on the number of threads.
        Attention runs on the math kernel throughout, plain steps included: sdpa_kernel's backend flags are
        process-wide, and held here the windows' own (nested) switches cannot hand another thread's
        attention to a kernel without a double backward."""
        threads = self.intra_threads
        if self.cfg.autocast not in (None, "bf16"):
            raise ValueError(f"unknown autocast {self.cfg.autocast!r}: null or bf16")
        bf16 = self.cfg.autocast == "bf16" and self.dtype == torch.float32

        def run(job):
            torch.set_num_threads(threads)  # OpenMP's thread count is per calling thread
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):  # autocast is per thread
                return fn(job)

        with sdpa_kernel(SDPBackend.MATH):
            if self.parallel == 1 or len(jobs) == 1:
                return [run(job) for job in jobs]
            with ThreadPoolExecutor(self.parallel) as pool:
                return list(pool.map(run, jobs))

    # -- one meta-step --------------------------------------------------------------------------
    def step(self) -> dict:
        cfg = self.cfg
        rater_params = dict(self.rater.named_parameters())
        names = list(rater_params)
        updates, losses, grad_norms, entropies, inner_losses, controls, resets = [], [], [], [], [], [], 0
        # every batch of this meta-step is drawn first, model by model in the sampler's order (a reset's
        # plain steps, the window's inner batches, its outer batch); then the models run side by side
        jobs = []
        for i in range(cfg.n_models):
            state, plain = self.inner[i], []
            if state.age + cfg.unroll > cfg.lifetime:
                state, plain = self._new_model(i, state.resets + 1), self._draw_plain(cfg.prewarm)
                resets += 1
            inner_batches = [self._sample(self.inner_rows, cfg.inner_batch) for _ in range(cfg.unroll)]
            jobs.append((i, state, plain, inner_batches, self._sample(self.outer_rows, cfg.outer_batch)))

        with_control = self.meta_step >= control_start(cfg.meta_steps, cfg.control_tail)

        def window(job) -> tuple[float, InnerState, dict, tuple[torch.Tensor, ...]]:
            i, state, plain, inner_batches, outer_batch = job
            state = self._train_plainly(i, state, plain)
            control = uniform_window(self.shells[i], state, inner_batches, outer_batch, cfg) if with_control else None
            loss_out, new_state, diag = meta_window(self.rater, self.shells[i], state, inner_batches, outer_batch,
                                                    cfg)
            grads = torch.autograd.grad(loss_out, [rater_params[k] for k in names])
            diag["uniform_outer_loss"] = control
            return loss_out.item(), new_state.detached(), diag, grads  # truncation: the next window starts here

        for i, (loss_out, new_state, diag, grads) in enumerate(self._map(window, jobs)):
            self.inner[i] = new_state
            # clip this model's meta-gradient (global norm), then its own Adam state
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
            scale = min(1.0, cfg.meta_clip / (float(norm) + 1e-12))
            update = self._meta_adam(i, {k: g * scale for k, g in zip(names, grads, strict=True)})
            updates.append(update)
            losses.append(loss_out)
            grad_norms.append(float(norm))
            entropies.append(diag["weight_entropy"])
            inner_losses.append(diag["inner_loss"])
            controls.append(diag["uniform_outer_loss"])
            tokens_in = cfg.unroll * cfg.inner_batch * cfg.seq_len
            self.flops["meta"] += meta_step_flops(self.lm_flops_per_token, tokens_in, cfg.outer_batch * cfg.seq_len)
            if with_control:  # plain steps on the same tokens, and a forward pass (a third of a step) on the outer batch
                self.flops["control"] += self.lm_flops_per_token * (tokens_in + cfg.outer_batch * cfg.seq_len / 3)
            self.flops["rater"] += self.rater_flops_per_token * tokens_in
        self.meta_step += 1
        lr = cfg.meta_lr * min(1.0, self.meta_step / max(1, cfg.meta_warmup))
        update_norm = 0.0
        with torch.no_grad():
            for k, p in rater_params.items():
                mean_update = sum(u[k] for u in updates) / len(updates)
                p.mul_(1 - lr * cfg.meta_weight_decay).sub_(lr * mean_update)
                update_norm += float((lr * mean_update).double().pow(2).sum())
        if self.meta_step > control_start(cfg.meta_steps, cfg.average_tail):
            with torch.no_grad():
                for k, v in self.rater.state_dict().items():
                    self.rater_sum[k] += v.double()
            self.averaged += 1
        record = {"meta_loss": float(np.mean(losses)), "meta_loss_per_model": losses,
                  "grad_norm": float(np.mean(grad_norms)), "update_norm": math.sqrt(update_norm),
                  "weight_entropy": float(np.mean(entropies)), "inner_loss": float(np.mean(inner_losses)),
                  "uniform_outer_loss": float(np.mean(controls)) if with_control else None, "resets": resets}
        for k, value in record.items():
            self.history[k].append(value)
        return record

    def _meta_adam(self, i: int, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model i's Adam direction for the rater (without the learning rate)."""
        b1, b2 = self.cfg.meta_betas
        t = self.meta_step + 1
        out = {}
        for k, g in grads.items():
            self.meta_m[i][k] = b1 * self.meta_m[i][k] + (1 - b1) * g
            self.meta_v[i][k] = b2 * self.meta_v[i][k] + (1 - b2) * g * g
            out[k] = (self.meta_m[i][k] / (1 - b1 ** t)) / ((self.meta_v[i][k] / (1 - b2 ** t)).sqrt()
                                                           + self.cfg.meta_eps)
        return out

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> tuple[DataRater, dict]:
        with retained_heap():  # no page faults on every step's freed activations (retained_heap.py)
            return self._run()

    def _run(self) -> tuple[DataRater, dict]:
        cfg = self.cfg
        t0 = time.perf_counter()
        while self.meta_step < cfg.meta_steps:
            record = self.step()
            self.history["seconds"].append(time.perf_counter() - t0)
            if self.eval_fn is not None and self.eval_every and self.meta_step % self.eval_every == 0:
                result = {"step": self.meta_step, **self.eval_fn(self.rater)}
                self.history["eval"].append(result)
                self.log(f"  eval step {self.meta_step}: " + "  ".join(f"{k} {v:.4g}" for k, v in result.items()
                                                                      if isinstance(v, float)))
            if self.checkpoint_dir and (self.meta_step % cfg.checkpoint_every == 0 or self.meta_step == cfg.meta_steps):
                self.save()
            if cfg.log_every and (self.meta_step % cfg.log_every == 0 or self.meta_step == 1):
                uniform = record["uniform_outer_loss"]
                self.log(f"meta step {self.meta_step}/{cfg.meta_steps}  outer {record['meta_loss']:.4f}  "
                         f"uniform {'-' if uniform is None else f'{uniform:.4f}'}  inner {record['inner_loss']:.4f}  "
                         f"|g| {record['grad_norm']:.3g}  "
                         f"H(w) {record['weight_entropy']:.3f}  {time.perf_counter() - t0:.1f}s")
        self.history["flops"] = dict(self.flops, total=sum(self.flops.values()))
        self.history["scoring_flops_per_token"] = scoring_flops_per_token(self.rater.cfg)
        self.history["averaged_steps"] = self.averaged
        return self.averaged_rater(), self.history

    def averaged_rater(self) -> DataRater:
        """The rater to use: the mean of its weights over the meta-steps averaged so far (`average_tail`),
        or the latest weights when none has been."""
        if not self.averaged:
            return self.rater
        rater = copy.deepcopy(self.rater)
        rater.load_state_dict(mean_weights(self.rater.state_dict(), self.rater_sum, self.averaged))
        return rater

    # -- checkpoints (weights_only-loadable: tensors, dicts, lists, ints, floats, strings) ------
    def _state(self) -> dict:
        cfg = asdict(self.cfg)
        cfg["inner_betas"], cfg["meta_betas"] = list(cfg["inner_betas"]), list(cfg["meta_betas"])
        return {
            "config": cfg, "vocab_size": self.vocab_size, "meta_step": self.meta_step,
            "rater": {k: v.detach().cpu() for k, v in self.rater.state_dict().items()},
            "meta_m": [{k: v.cpu() for k, v in m.items()} for m in self.meta_m],
            "meta_v": [{k: v.cpu() for k, v in v_.items()} for v_ in self.meta_v],
            "inner": [{"params": {k: t.cpu() for k, t in s.params.items()}, "m": {k: t.cpu() for k, t in s.m.items()},
                       "v": {k: t.cpu() for k, t in s.v.items()}, "step": s.step, "age": s.age, "resets": s.resets}
                      for s in self.inner],
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "history": self.history, "flops": self.flops,
            "rater_sum": {k: v.cpu() for k, v in self.rater_sum.items()}, "averaged": self.averaged,
        }

    def save(self) -> Path:
        assert self.checkpoint_dir is not None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / CHECKPOINT_NAME
        tmp = temp_path(path)
        torch.save(self._state(), tmp)
        os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint
        return path

    def _resume(self) -> bool:
        if not self.checkpoint_dir or not (self.checkpoint_dir / CHECKPOINT_NAME).exists():
            return False
        state = torch.load(self.checkpoint_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        if state["vocab_size"] != self.vocab_size:
            raise ValueError("checkpoint vocabulary size differs from this run's")
        dev = lambda d: {k: t.to(self.device) for k, t in d.items()}  # noqa: E731
        self.rater.load_state_dict(state["rater"])
        self.meta_m = [dev(m) for m in state["meta_m"]]
        self.meta_v = [dev(v) for v in state["meta_v"]]
        self.inner = [InnerState(dev(s["params"]), dev(s["m"]), dev(s["v"]), s["step"], s["age"], s["resets"])
                      for s in state["inner"]]
        self.meta_step = state["meta_step"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history, self.flops = state["history"], state["flops"]
        if "rater_sum" in state:   # (a checkpoint from before the average: it averages the steps from here on)
            self.rater_sum, self.averaged = dev(state["rater_sum"]), state["averaged"]
        self.history.setdefault("uniform_outer_loss", [])   # checkpoints from before the control
        self.flops.setdefault("control", 0.0)
        self.log(f"resumed meta-training at step {self.meta_step} from {self.checkpoint_dir / CHECKPOINT_NAME}")
        return True


def meta_train(cfg: MetaConfig, vocab_size: int, inner_rows: PackedRows, outer_rows: PackedRows,
               log: Callable[[str], None] = print, checkpoint_dir: str | os.PathLike | None = None,
               eval_fn: Callable[[DataRater], dict] | None = None, eval_every: int = 0) -> tuple[DataRater, dict]:
    """Meta-train a DataRater on `inner_rows` (inner batches) against `outer_rows` (held-out batches, a
    disjoint slice of the same pool). Resumes from `checkpoint_dir` when it holds a checkpoint. Returns the
    rater and the history (meta-loss per step, diagnostics, FLOPs)."""
    return MetaTrainer(cfg, vocab_size, inner_rows, outer_rows, log, checkpoint_dir, eval_fn, eval_every).run()


def load_rater(path: str | os.PathLike, device: str = "cpu") -> DataRater:
    """The rater of a meta-training checkpoint, as `meta_train` would return it at that step (the mean of the
    weights averaged so far under `average_tail`, else the latest)."""
    state = torch.load(Path(path), map_location=device, weights_only=True)
    saved = {"rater_positions": True, **state["config"]}   # checkpoints from before the option had positions
    cfg = MetaConfig.from_overrides(saved)
    rater = DataRater(cfg.rater_config(state["vocab_size"]))
    rater.load_state_dict(mean_weights(state["rater"], state.get("rater_sum", {}), state.get("averaged", 0)))
    return rater.to(device).eval()


def mean_weights(latest: dict[str, torch.Tensor], rater_sum: dict[str, torch.Tensor],
                 averaged: int) -> dict[str, torch.Tensor]:
    """The rater's weights as a fit returns them: the float64 running sum over `averaged` meta-steps divided
    out, in each weight's own dtype; `latest` itself when no step was averaged."""
    if not averaged:
        return latest
    return {k: (rater_sum[k] / averaged).to(v.dtype) if v.is_floating_point() else v for k, v in latest.items()}
