"""`fasttext_quality`: DCLM's fastText classifier, trained on local positives vs. the pool.

    - fasttext_quality:
        positives: {paths: ["../shared/data/reference/**/*.jsonl"]}
        keep_top: 0.3

The classifier (raters/fasttext_rater.py) is saved as `model.bin` in the stage folder; pass that
path as `model:` to score another corpus with it. Kept rows gain `fasttext_score` = P(hq).
Positives here are a stand-in for DCLM's OpenHermes + ELI5 (not reachable offline): the
reference set's books, Wikipedia, Python docs and speeches. Never put evaluation sets in them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from winnow.filters.quality import QualityParams, QualityStage
from winnow.raters.fasttext_rater import DCLM_PARAMS, FastTextScorer, fasttext_training_flops, train_fasttext


class FastTextParams(QualityParams):
    passage_words: int = Field(100, ge=0, description="train on passages of at most this many words (0: whole "
                               "documents); few long documents as whole lines underfit")
    train_args: dict[str, Any] = Field(default_factory=dict, description="fastText train_supervised arguments "
                                       f"over DCLM's {DCLM_PARAMS} (e.g. bucket: 200000 for a smaller model)")


class FastTextQualityStage(QualityStage):
    name = "fasttext_quality"
    Params = FastTextParams
    score_column = "fasttext_score"
    model_file = "model.bin"

    def scorer(self, model: str) -> FastTextScorer:
        return FastTextScorer(model)

    def flat_advice(self, state: dict) -> str:
        if "positives" not in state:
            return super().flat_advice(state)
        args = {**DCLM_PARAMS, **self.params.train_args}
        epoch, lr = args["epoch"], args["lr"]
        longer = f"train_args epoch above {epoch} (e.g. {max(2 * epoch, 25)})" + \
            (f" and lr above {lr} (e.g. 0.5)" if lr < 0.5 else "")
        return (f"The classifier barely trained on {state['positives']:,} positives at epoch {epoch}, lr {lr}: "
                f"give more positives than {state['positives']:,}, or train longer: {longer}.")

    def train(self, positives: list[str], negatives: list[str], path: str) -> float:
        train_fasttext(positives, negatives, path, self.params.seed, self.params.passage_words,
                       **self.params.train_args)
        return fasttext_training_flops(positives + negatives, **self.params.train_args)
