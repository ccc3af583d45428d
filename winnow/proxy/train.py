"""The proxy training loop: AdamW, warmup then cosine to zero at the FLOP budget, clipping, evals.

One run = one model trained on one arm's packed rows until `flop_budget` (flops.py) is spent,
with its learning-rate schedule annealed to zero at that budget (separately annealed runs per
budget, not intermediate checkpoints of one run: ALGORITHMS.md section 7, step 3). Evaluation
loss is the mean cross-entropy over target tokens of each held-out set, logged `n_evals` times
with the FLOPs spent so far. bf16 autocast on CUDA; deterministic for a seed on CPU.

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

from winnow.proxy.data import PackedRows
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
    max_eval_rows: int = 256
    seed: int = 0
    device: str = "auto"
    intra_doc: bool = True      # block-diagonal attention and per-document positions


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lm_loss(model: ProxyLM, batch: dict[str, torch.Tensor], intra_doc: bool) -> torch.Tensor:
    """Mean cross-entropy of predicting token t from tokens < t, over targets where loss_mask is 1."""
    logits = model(batch["input_ids"], batch["segment_ids"] if intra_doc else None,
                   batch["position_ids"] if intra_doc else None)
    targets = batch["input_ids"][:, 1:]
    weights = batch["loss_mask"][:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                             reduction="none")
    return (losses * weights.reshape(-1)).sum() / weights.sum().clamp(min=1)


def batch_of(rows: PackedRows, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    idx = torch.from_numpy(index)
    return {k: getattr(rows, k)[idx].to(device) for k in ("input_ids", "segment_ids", "position_ids", "loss_mask")}


@torch.inference_mode()
def evaluate(model: ProxyLM, rows: PackedRows, cfg: TrainConfig, device: torch.device) -> float:
    model.eval()
    n = min(len(rows), cfg.max_eval_rows)
    total, count = 0.0, 0.0
    for start in range(0, n, cfg.batch_size):
        batch = batch_of(rows, np.arange(start, min(start + cfg.batch_size, n)), device)
        weight = batch["loss_mask"][:, 1:].sum().item()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            total += lm_loss(model, batch, cfg.intra_doc).item() * weight
        count += weight
    model.train()
    return total / max(count, 1)


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
          log=print) -> dict:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    model_cfg = config_for(cfg.size, vocab_size, cfg.seq_len)
    model = ProxyLM(model_cfg).to(device)
    per_token = flops_per_token(model_cfg, cfg.seq_len)
    per_step = per_token * cfg.batch_size * cfg.seq_len
    steps = max(1, math.ceil(cfg.flop_budget / per_step))
    warmup = max(1, int(cfg.warmup_frac * steps))
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    log(f"proxy {cfg.size}: {non_embedding_params(model_cfg):,} non-embedding params, "
        f"{per_token:,.0f} FLOPs/token, {cfg.batch_size * cfg.seq_len:,} tokens/step, {steps} steps, "
        f"{steps * per_step:.3g} FLOPs on {device}")

    eval_at = sorted({max(1, round(steps * (i + 1) / cfg.n_evals)) for i in range(cfg.n_evals)})
    order, cursor, epochs = rng.permutation(len(rows)), 0, 0
    points, seen_targets, t0 = [], 0, time.perf_counter()
    for step in range(1, steps + 1):
        lr = cfg.lr * lr_factor(cfg, step, steps, warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        if cursor + cfg.batch_size > len(order):  # next epoch: the pool is smaller than the budget
            order, cursor, epochs = rng.permutation(len(rows)), 0, epochs + 1
        batch = batch_of(rows, order[cursor:cursor + cfg.batch_size], device)
        cursor += cfg.batch_size
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = lm_loss(model, batch, cfg.intra_doc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        seen_targets += int(batch["loss_mask"][:, 1:].sum().item())
        if step in eval_at:
            losses = {name: evaluate(model, rows_, cfg, device) for name, rows_ in eval_sets.items()}
            elapsed = time.perf_counter() - t0
            points.append({"step": step, "flops": step * per_step, "train_loss": loss.item(),
                           "target_tokens": seen_targets, "eval": losses, "seconds": elapsed})
            log(f"  step {step:5d}/{steps}  flops {step * per_step:.3g}  train {loss.item():.3f}  "
                + "  ".join(f"{k} {v:.3f}" for k, v in losses.items())
                + f"  {step * cfg.batch_size * cfg.seq_len / elapsed:,.0f} tok/s")
    seconds = time.perf_counter() - t0
    return {"config": asdict(cfg), "points": points, "steps": steps, "flops": steps * per_step,
            "flops_per_token": per_token, "non_embedding_params": non_embedding_params(model_cfg),
            "epochs": epochs + cursor / max(1, len(order)), "seconds": seconds,
            "tokens_per_second": steps * cfg.batch_size * cfg.seq_len / seconds, "model": model}
