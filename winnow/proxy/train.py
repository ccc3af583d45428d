"""The proxy training loop: AdamW, warmup then cosine to zero at the FLOP budget, clipping, evals.

One run = one model trained on one arm's packed rows until `flop_budget` (flops.py) is spent,
with its learning-rate schedule annealed to zero at that budget (separately annealed runs per
budget, not intermediate checkpoints of one run: ALGORITHMS.md section 7, step 3). Evaluation
loss is the mean cross-entropy over every target token of each held-out set (and per source when
the rows carry sources), logged `n_evals` times with the FLOPs spent so far. FLOPs and tokens
count the rows a step really computes (an arm smaller than one batch repeats rows to fill it).
On CUDA: rows live on the device, bf16 autocast, fused AdamW, and nothing reads a value back to
the host between evaluations. Deterministic for a seed on CPU.

    from winnow.proxy.train import TrainConfig, train
    curve = train(TrainConfig(size="tiny", flop_budget=2e12), vocab_size, rows, {"heldout": eval_rows})
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from winnow.proxy.data import ROW_TENSORS, PackedRows
from winnow.proxy.flops import flops_per_token, non_embedding_params
from winnow.proxy.model import ProxyLM, config_for


@dataclass
class TrainConfig:
    size: str = "tiny"
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    warmup_frac: float = 0.05
    schedule: str = "cosine"    # cosine: to zero at the budget; wsd: constant, then linear to zero over decay_frac
    decay_frac: float = 0.2
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    flop_budget: float = 1e12
    n_evals: int = 6
    max_eval_rows: int | None = None   # a cap on held-out rows (None: every row, the default)
    seed: int = 0
    device: str = "auto"
    intra_doc: bool = True      # block-diagonal attention and per-document positions
    init_checkpoint: str | None = None   # start from these weights (fine-tuning) instead of a fresh init


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def token_losses(model: ProxyLM, batch: dict[str, torch.Tensor], intra_doc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of predicting token t from tokens < t, and its weight (loss_mask), both (B, T-1)."""
    logits = model(batch["input_ids"], batch["segment_ids"] if intra_doc else None,
                   batch["position_ids"] if intra_doc else None)
    targets = batch["input_ids"][:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                             reduction="none")
    return losses.view_as(targets), batch["loss_mask"][:, 1:]


def lm_loss(model: ProxyLM, batch: dict[str, torch.Tensor], intra_doc: bool) -> torch.Tensor:
    """Mean cross-entropy over the targets where loss_mask is 1."""
    losses, weights = token_losses(model, batch, intra_doc)
    return (losses * weights).sum() / weights.sum().clamp(min=1)


def batch_of(rows: PackedRows, index: np.ndarray | torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """The rows at `index`; an index already on the rows' device costs no host-to-device copy."""
    idx = index if isinstance(index, torch.Tensor) else torch.from_numpy(index).to(rows.input_ids.device)
    names = ROW_TENSORS + (("source_index",) if rows.source_index is not None else ())
    return {k: getattr(rows, k)[idx].to(device, non_blocking=True) for k in names}


@torch.inference_mode()
def evaluate(model: ProxyLM, rows: PackedRows, cfg: TrainConfig, device: torch.device) -> tuple[float, dict]:
    """Mean loss over every target token of `rows`, and the mean per source when the rows name sources."""
    model.eval()
    n = len(rows) if cfg.max_eval_rows is None else min(len(rows), cfg.max_eval_rows)
    n_sources = len(rows.sources)
    total = torch.zeros(max(n_sources, 1), dtype=torch.float64, device=device)
    count = torch.zeros_like(total)
    for start in range(0, n, cfg.batch_size):
        batch = batch_of(rows, np.arange(start, min(start + cfg.batch_size, n)), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses, weights = token_losses(model, batch, cfg.intra_doc)          # (B, T-1) each
        where = (batch["source_index"][:, 1:].clamp(min=0) if n_sources else torch.zeros_like(batch["input_ids"][:, 1:]))
        total.index_add_(0, where.reshape(-1), (losses * weights).reshape(-1).double())
        count.index_add_(0, where.reshape(-1), weights.reshape(-1).double())
    model.train()
    total, count = total.cpu().numpy(), count.cpu().numpy()
    by_source = {name: float(total[i] / count[i]) for i, name in enumerate(rows.sources) if count[i] > 0}
    return float(total.sum() / max(count.sum(), 1)), by_source


def lr_factor(cfg: TrainConfig, step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine to zero at the last step, or warmup-stable-decay (linear decay)."""
    if step <= warmup:
        return step / warmup
    if cfg.schedule == "wsd":
        decay_start = steps - max(1, int(cfg.decay_frac * steps))
        return 1.0 if step <= decay_start else (steps - step) / max(1, steps - decay_start)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def save_checkpoint(model: ProxyLM, path: str, meta: dict) -> None:
    """Weights as safetensors (tied embedding stored once) with the run's config as metadata."""
    import json

    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={"winnow": json.dumps(meta)})


def train(cfg: TrainConfig, vocab_size: int, rows: PackedRows, eval_sets: dict[str, PackedRows],
          log=print, select_batch=None) -> dict:
    """`select_batch(model, batch) -> batch`, when given, runs before every step and may change the
    batch's loss_mask (raters/qtuning_dynamic.py: Q-Tuning scored by the model being trained)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    if device.type == "cuda":  # rows stay on the GPU: a batch is an index, not a host-to-device copy
        rows = rows.to(device)
        eval_sets = {k: v.to(device) for k, v in eval_sets.items()}
        torch.backends.cuda.matmul.allow_tf32 = True
    model_cfg = config_for(cfg.size, vocab_size, cfg.seq_len)
    model = ProxyLM(model_cfg)
    if cfg.init_checkpoint:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(cfg.init_checkpoint), strict=False)  # rotary tables are rebuilt
    model = model.to(device)
    per_token = flops_per_token(model_cfg, cfg.seq_len)
    if len(rows) == 0:
        raise ValueError("no training rows")
    # an arm with fewer rows than a batch fills its batches by drawing rows again: every arm trains
    # with the same batch size and schedule, and pays for the rows it really computes
    batch_rows = cfg.batch_size
    per_step = per_token * batch_rows * cfg.seq_len
    steps = max(1, math.ceil(cfg.flop_budget / per_step))
    warmup = max(1, int(cfg.warmup_frac * steps))
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    log(f"proxy {cfg.size}: {non_embedding_params(model_cfg):,} non-embedding params, "
        f"{per_token:,.0f} FLOPs/token, {batch_rows * cfg.seq_len:,} tokens/step, {steps} steps, "
        f"{steps * per_step:.3g} FLOPs on {device}")

    eval_at = sorted({max(1, round(steps * (i + 1) / cfg.n_evals)) for i in range(cfg.n_evals)})
    def permutation() -> torch.Tensor:  # one host-to-device copy per epoch, none per step
        n = len(rows)
        order = rng.permutation(n) if n >= batch_rows else rng.choice(n, batch_rows * max(1, -(-n // batch_rows)))
        return torch.from_numpy(order).to(rows.input_ids.device)

    order, cursor = permutation(), 0
    # running sums stay on the device: reading them back every step would stall a GPU
    seen_targets = torch.zeros((), dtype=torch.float64, device=device)
    seen_tokens = torch.zeros((), dtype=torch.float64, device=device)
    points, by_source, t0 = [], {}, time.perf_counter()
    for step in range(1, steps + 1):
        lr = cfg.lr * lr_factor(cfg, step, steps, warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        if cursor + batch_rows > len(order):  # next epoch: the pool is smaller than the budget
            order, cursor = permutation(), 0
        batch = batch_of(rows, order[cursor:cursor + batch_rows], device)
        cursor += batch_rows
        if select_batch is not None:
            batch = select_batch(model, batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = lm_loss(model, batch, cfg.intra_doc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        seen_targets += batch["loss_mask"][:, 1:].sum()
        seen_tokens += (batch["segment_ids"] > 0).sum()
        if step in eval_at:
            losses, by_source = {}, {}
            for name, rows_ in eval_sets.items():
                losses[name], by_source[name] = evaluate(model, rows_, cfg, device)
            elapsed = time.perf_counter() - t0
            points.append({"step": step, "flops": step * per_step, "train_loss": loss.item(),
                           "target_tokens": int(seen_targets.item()), "tokens": int(seen_tokens.item()),
                           "eval": losses, "seconds": elapsed})
            log(f"  step {step:5d}/{steps}  flops {step * per_step:.3g}  train {loss.item():.3f}  "
                + "  ".join(f"{k} {v:.3f}" for k, v in losses.items())
                + f"  {step * batch_rows * cfg.seq_len / elapsed:,.0f} tok/s"
                + f"  ETA {elapsed / step * (steps - step):.0f} s")
    seconds = time.perf_counter() - t0
    return {"config": asdict(cfg), "points": points, "steps": steps, "flops": steps * per_step,
            "tokens": int(seen_tokens.item()), "target_tokens": int(seen_targets.item()),
            "final_by_source": by_source,
            "flops_per_token": per_token, "non_embedding_params": non_embedding_params(model_cfg),
            "epochs": steps * batch_rows / len(rows), "seconds": seconds,
            "tokens_per_second": steps * batch_rows * cfg.seq_len / seconds, "model": model}
