"""What an arm's curation costs, charged per token a proxy run trains on.

Scoring a corpus is paid once per corpus, but a proxy run trains on a small part of it, so adding
the whole corpus's curation FLOPs to one proxy run would make any model-based stage look ruinous
whatever it does. The cost is charged per trained token instead:

    scoring per kept token   s = F_score / T_kept
    net cost of a run        C_net = C_train + T_train * s
    with the one-off fit     C_fit = C_net + T_train * F_once / T_kept

- F_score: the FLOPs of every pass over the data the stage chain up to this arm made (per-shard
  `flops` in the manifests, and fit-time `*_flops` such as `scoring_flops`, `embedding_flops`,
  `generation_flops`); the whole pool was scored to keep T_kept tokens, so s carries the
  oversampling a filter needs (the DataRater paper charges the same: scoring N/(1-rho) to keep N).
- T_kept: the tokens (under the eval's tokenizer) of every document the arm holds.
- T_train: the tokens the run read (padding excluded); C_train its training FLOPs.
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
        if self.kept_tokens <= 0:
            return 0.0
        return (self.scoring_flops + (self.one_off_flops if with_fit else 0.0)) / self.kept_tokens

    def net_flops(self, train_flops: float, train_tokens: int, with_fit: bool = False) -> float:
        return train_flops + train_tokens * self.per_token(with_fit)


def is_one_off(key: str) -> bool:
    return key.endswith("training_flops")


def chain_flops(arm_path: str) -> tuple[float, float]:
    """(F_score, F_once) that the winnow stages up to this stage folder recorded in their manifests."""
    stage_dir = Path(arm_path)
    if not (stage_dir / "_manifest.json").exists():
        return 0.0, 0.0
    scoring = once = 0.0
    for manifest in sorted(stage_dir.parent.glob("[0-9][0-9]-*/_manifest.json")):
        if manifest.parent.name > stage_dir.name:
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
