"""vLLM in-process, on a CUDA machine where it is installed (it is not on the lent GPU, nor in CI:
../shared/GPU.md). One `LLM` per worker process; every request carries its own seed, so results do
not depend on batching. Tests skip this backend when `vllm` does not import."""

from __future__ import annotations

from winnow.models.loading import model_identity, resolve_model
from winnow.pipeline.errors import WinnowError
from winnow.synth.types import Generation, GenerationParams, Request


class VllmBackend:
    kind = "vllm"

    def __init__(self, model: str | None = None):
        try:
            from vllm import LLM
        except ImportError as e:
            raise WinnowError("backend vllm needs the `vllm` package (CUDA machines); use transformers or openai") from e
        path = resolve_model(model)
        self.model_id = model_identity(path)
        self.llm = LLM(model=path, seed=0)
        config = self.llm.llm_engine.model_config.hf_config
        self.parameters = _approx_parameters(config)

    def generate(self, requests: list[Request], params: GenerationParams) -> list[Generation]:
        from vllm import SamplingParams

        sampling = [SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                   top_p=params.top_p, seed=r.seed) for r in requests]
        try:
            outs = self.llm.chat([r.as_dicts() for r in requests], sampling, use_tqdm=False)
        except (RuntimeError, ValueError) as e:
            return [Generation(error=f"backend_error: {type(e).__name__}: {str(e)[:200]}") for _ in requests]
        return [Generation(text=o.outputs[0].text, prompt_tokens=len(o.prompt_token_ids),
                           completion_tokens=len(o.outputs[0].token_ids), finish_reason=o.outputs[0].finish_reason)
                for o in outs]


def _approx_parameters(config) -> int:
    """Decoder parameters from the config (12·L·d² plus the embedding), for the 2·N·tokens cost."""
    from winnow.flops import approx_decoder_params

    return approx_decoder_params(config.num_hidden_layers, config.hidden_size, config.vocab_size)
