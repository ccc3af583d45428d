"""llama.cpp through llama-cpp-python: a quantised GGUF on the CPU, the fastest local path there.

One `Llama` per worker process, generating one request at a time with the worker's threads
(llama-cpp-python has no batched chat API; Dask's worker processes are the parallelism). The
chat template is the one stored in the GGUF. llama-cpp-python must be built with the flags in
../shared/STACK.md (`bash scripts/setup.sh --llama`): the default native build crashes on CPUs
with AMX.
"""

from __future__ import annotations

import os
import threading

from winnow.models.loading import model_identity, resolve_model
from winnow.pipeline.errors import WinnowError
from winnow.synth.types import Generation, GenerationParams, Request

CONTEXT_TOKENS = 4096   # a 300-token chunk, the instruction and up to ~3k new tokens


class LlamaCppBackend:
    kind = "llama_cpp"

    def __init__(self, model: str | None = None, threads: int | None = None):
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise WinnowError("backend llama_cpp needs llama-cpp-python: `bash scripts/setup.sh --llama` builds it "
                              "with the CPU flags this machine needs; or use backend: transformers") from e
        path = resolve_model(model)
        if not path.endswith(".gguf") or not os.path.isfile(path):
            raise WinnowError(f"backend llama_cpp needs a .gguf file, got {path!r}")
        self.model_id = model_identity(path)
        self._lock = threading.Lock()
        self.llm = Llama(model_path=path, n_ctx=CONTEXT_TOKENS, n_threads=threads or 1, verbose=False)
        self.parameters = _parameters(self.llm, path)

    def generate(self, requests: list[Request], params: GenerationParams) -> list[Generation]:
        with self._lock:   # one Llama context: a worker with several threads takes turns
            return [self._one(r, params) for r in requests]

    def _one(self, request: Request, params: GenerationParams) -> Generation:
        try:
            out = self.llm.create_chat_completion(
                messages=request.as_dicts(), max_tokens=params.max_new_tokens, temperature=params.temperature,
                top_p=params.top_p, seed=request.seed)
        except (ValueError, RuntimeError) as e:   # e.g. a prompt longer than the context
            return Generation(error=f"backend_error: {type(e).__name__}: {str(e)[:200]}")
        usage = out.get("usage") or {}
        choice = out["choices"][0]
        return Generation(text=choice["message"].get("content") or "",
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)),
                          finish_reason=choice.get("finish_reason"))


def _parameters(llm, path: str) -> int:
    """The model's parameter count from llama.cpp, or from the GGUF's tensor shapes."""
    import llama_cpp

    try:
        return int(llama_cpp.llama_model_n_params(llm.model))
    except (AttributeError, TypeError):
        import numpy as np
        from gguf import GGUFReader

        return int(sum(int(np.prod(t.shape)) for t in GGUFReader(path).tensors))
