"""`perplexity_quality`: keep a band of perplexity under a reference LM (CCNet-style).

    - perplexity_quality:
        positives: {paths: ["../shared/data/reference/**/*.jsonl"]}   # trains the reference LM
        band: [0.0, 0.7]        # the 70% of the corpus with the lowest perplexity

With `model:` a local causal LM is used instead of training one: a winnow reference-LM folder, a
Hugging Face model folder or a `.gguf` file (raters/perplexity_rater.py). The trained reference
LM (winnow's proxy model and BPE, on the positives) is saved as `reference_lm/` in the stage
folder. Kept rows gain `perplexity`; `keep_top: p` keeps the p with the lowest perplexity.
"""

from __future__ import annotations

from pydantic import Field

from winnow.filters.quality import QualityParams, QualityStage
from winnow.raters.perplexity_rater import PerplexityScorer, train_reference_lm


class PerplexityParams(QualityParams):
    size: str = Field("tiny", description="proxy size of a trained reference LM (tiny, small, base)")
    vocab_size: int = Field(4096, ge=260)
    seq_len: int = Field(256, ge=16)
    flop_budget: float = Field(3e12, gt=0, description="training FLOPs of the reference LM")
    max_tokens: int = Field(256, gt=1, description="tokens per document scored (its beginning)")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per scoring batch")


class PerplexityQualityStage(QualityStage):
    name = "perplexity_quality"
    Params = PerplexityParams
    score_column = "perplexity"
    model_file = "reference_lm"
    higher_is_better = False
    needs_negatives = False

    def scorer(self, model: str) -> PerplexityScorer:
        p = self.params
        return PerplexityScorer(model, p.device, p.max_tokens, p.batch_tokens, p.threads)

    def train(self, positives: list[str], negatives: list[str], path: str) -> float:
        p = self.params
        return train_reference_lm(positives, path, p.size, p.vocab_size, p.seq_len, p.flop_budget,
                                  seed=p.seed, device=p.device, log=lambda *a: None)
