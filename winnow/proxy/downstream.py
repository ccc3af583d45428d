"""Zero-shot multiple choice by length-normalised log-likelihood: HellaSwag and PIQA.

For each item, every candidate continuation is scored as the mean log-probability per token of
its tokens given the context (the rule lm-evaluation-harness calls acc_norm, per token rather
than per byte); the highest wins. At proxy scale accuracy sits near chance (0.25 / 0.5): the
path is here so larger proxies on a GPU report it with the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F


def load_hellaswag(folder: Path, n: int) -> list[tuple[str, list[str], int]]:
    items = []
    for f in sorted((folder / "hellaswag").glob("*.jsonl")):
        for line in f.read_text().rstrip("\n").split("\n"):
            rec = json.loads(line)
            items.append((rec["ctx"], [" " + e for e in rec["endings"]], int(rec["label"])))
            if len(items) >= n:
                return items
    return items


def load_piqa(folder: Path, n: int) -> list[tuple[str, list[str], int]]:
    goals = (folder / "piqa" / "valid.jsonl").read_text().rstrip("\n").split("\n")
    labels = (folder / "piqa" / "valid-labels.lst").read_text().split()
    items = []
    for line, label in zip(goals[:n], labels[:n], strict=False):
        rec = json.loads(line)
        items.append((f"Question: {rec['goal']}\nAnswer:", [" " + rec["sol1"], " " + rec["sol2"]], int(label)))
    return items


def task_values(folder: Path, task: str, n: int) -> list[list[str]]:
    """The texts of the first `n` items `score_downstream` scores, per item as the benchmark holds them
    (HellaSwag: the context and each ending; PIQA: the goal and both solutions): what a training
    document must not contain (eval.json's `downstream_overlap`)."""
    if task == "hellaswag":
        return [[ctx, *(e[1:] for e in endings)] for ctx, endings, _ in load_hellaswag(folder, n)]
    goals = (folder / "piqa" / "valid.jsonl").read_text().rstrip("\n").split("\n")[:n]
    return [[r["goal"], r["sol1"], r["sol2"]] for r in map(json.loads, goals)]


@torch.inference_mode()
def choice_scores(model, tokenizer, context: str, choices: list[str], seq_len: int) -> list[float]:
    device = next(model.parameters()).device
    ctx = tokenizer.encode(context, add_special_tokens=False).ids
    scores = []
    for choice in choices:
        cont = tokenizer.encode(choice, add_special_tokens=False).ids or [0]
        ids = (ctx + cont)[-seq_len:]
        n_cont = min(len(cont), len(ids) - 1)
        x = torch.tensor([ids], device=device)
        logp = F.log_softmax(model(x)[0, :-1].float(), dim=-1)
        targets = x[0, 1:]
        token_logp = logp.gather(1, targets.unsqueeze(1)).squeeze(1)[-n_cont:]
        scores.append(token_logp.mean().item())
    return scores


def score_downstream(model, tokenizer, cfg, seq_len: int) -> dict:
    model.eval()
    folder = Path(cfg.data)
    results = {}
    for name, loader, n in (("hellaswag", load_hellaswag, cfg.hellaswag), ("piqa", load_piqa, cfg.piqa)):
        if not n:
            continue
        items = loader(folder, n)
        correct = sum(int(max(range(len(ch)), key=lambda i, s=choice_scores(model, tokenizer, c, ch, seq_len): s[i])
                          == label) for c, ch, label in items)
        results[name] = {"accuracy": correct / max(len(items), 1), "items": len(items),
                         "chance": 0.25 if name == "hellaswag" else 0.5}
    model.train()
    return results
