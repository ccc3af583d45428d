"""What an arm's curation costs, charged per token a proxy run trains on.

Scoring a corpus is paid once per corpus, but a proxy run trains on a small part of it, so adding
the whole corpus's curation FLOPs to one proxy run would make any model-based stage look ruinous
whatever it does. The cost is charged per trained token instead:

    share of the kept corpus a run reads   u = min(T_train, T_kept) / T_kept
    net cost of a run                      C_net = C_train + u * F_score
    with the one-off fit                   C_fit = C_net + u * F_once

- F_score: the FLOPs of every pass over the data the stage chain up to this arm made (per-shard
  `flops` in the manifests, and fit-time `*_flops` such as `scoring_flops`, `embedding_flops`,
  `generation_flops`); the whole pool was scored to keep T_kept tokens, so s carries the
  oversampling a filter needs (the DataRater paper charges the same: scoring N/(1-rho) to keep N).
- T_kept: the tokens (under the eval's tokenizer) of every document the arm holds.
- T_train: the tokens the run read (padding excluded); C_train its training FLOPs. A run that reads
  the kept corpus more than once pays its scoring once: documents are scored once, not per epoch.
- F_once: one-off model training (`*training_flops`: a classifier's fit, DataRater meta-training).
  `net_multiplier` treats it as amortised over many corpora (left out); `net_multiplier_with_fit`
  spreads all of it over this corpus's kept tokens, as if the model were trained for this corpus only.
The baseline's curve is training FLOPs only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CurationCost:
    scoring_flops: float = 0.0      # F_score
    one_off_flops: float = 0.0      # F_once
    kept_tokens: int = 0            # T_kept

    def per_token(self, with_fit: bool = False) -> float:
        """Curation FLOPs per kept token: what one trained token is charged until the corpus is used up."""
        if self.kept_tokens <= 0:
            return 0.0
        return (self.scoring_flops + (self.one_off_flops if with_fit else 0.0)) / self.kept_tokens

    def net_flops(self, train_flops: float, train_tokens: int, with_fit: bool = False) -> float:
        return train_flops + min(train_tokens, self.kept_tokens) * self.per_token(with_fit)


def is_one_off(key: str) -> bool:
    return key.endswith("training_flops")


def chain_flops(arm_path: str, after: str | None = None) -> tuple[float, float]:
    """(F_score, F_once) that the winnow stages up to this stage folder recorded in their manifests;
    with `after` (the baseline's stage folder, when it belongs to the same run) only the stages past it:
    the baseline went through the earlier ones too and its curve is not charged for them."""
    stage_dir = Path(arm_path)
    if not (stage_dir / "_manifest.json").exists():
        return 0.0, 0.0
    floor = Path(after).name if after and Path(after).resolve().parent == stage_dir.resolve().parent else ""
    scoring = once = 0.0
    for manifest in sorted(stage_dir.parent.glob("[0-9][0-9]-*/_manifest.json")):
        if manifest.parent.name > stage_dir.name or manifest.parent.name <= floor:
            continue
        m = json.loads(manifest.read_text())
        scoring += m["totals"].get("flops", 0.0)
        for key, value in m.items():
            if key.endswith("_flops") and isinstance(value, (int, float)):
                if is_one_off(key):
                    once += value
                else:
                    scoring += value
    return scoring, once
