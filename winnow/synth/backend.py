"""One small interface over every way winnow can ask a language model for text.

    backend = open_backend(BackendSpec(kind="llama_cpp"))          # the default GGUF, on CPU
    results = backend.generate([Request(messages, seed=7)], GenerationParams(max_new_tokens=256))
    results[0].text, results[0].prompt_tokens, results[0].completion_tokens, results[0].error

A backend never raises for one bad prompt: each result carries either text or an `error` (a short
snake_case reason such as `timeout` or `http_503`), so a caller can keep its source row and record
the failure. `parameters` is the model's size when it runs locally (generation FLOPs are
2 * parameters * tokens) and None for a remote server, whose cost is reported in tokens only.
Backends are opened once per worker process (`open_backend` caches them): Dask ships the spec,
never the model.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal, Protocol

from winnow.pipeline.errors import WinnowError
from winnow.raters.scorer import cached, file_key

BackendKind = Literal["auto", "llama_cpp", "transformers", "openai", "vllm"]


@dataclass(frozen=True)
class Request:
    messages: tuple[tuple[str, str], ...]     # (role, content) pairs, chat-template order
    seed: int = 0                             # per request, so a result does not depend on its batch

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    timeout_s: float = 120.0        # per request (openai); local backends have no timeout
    retries: int = 3                # per request (openai): on timeouts, 5xx, 429 and invalid JSON
    concurrency: int = 8            # requests in flight (openai, vllm) or the batch size (transformers)
    min_new_tokens: int = 0         # transformers: force a length (throughput benches on random weights)


@dataclass
class Generation:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None        # None on success
    attempts: int = 1


@dataclass(frozen=True)
class BackendSpec:
    kind: BackendKind = "auto"
    model: str | None = None        # a path (.gguf or HF folder) or, for openai, the served model's name
    url: str | None = None          # openai: base URL ending in /v1
    api_key_env: str | None = None  # openai: the environment variable holding the key
    device: str = "auto"
    threads: int | None = None
    extra: dict = field(default_factory=dict, hash=False, compare=False)


class Backend(Protocol):
    kind: str
    model_id: str                   # what cache keys and rows name the model by
    parameters: int | None

    def generate(self, requests: list[Request], params: GenerationParams) -> list[Generation]: ...


def resolve_kind(kind: BackendKind) -> str:
    """`auto`: llama.cpp when llama-cpp-python is installed (fastest on a CPU), else transformers."""
    if kind != "auto":
        return kind
    return "llama_cpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"


def open_backend(spec: BackendSpec) -> Backend:
    """The backend `spec` describes, opened once per process."""
    kind = resolve_kind(spec.kind)
    model_key = file_key(spec.model) if spec.model and os.path.exists(spec.model) else (spec.model,)
    key = ("backend", kind, model_key, spec.url, spec.api_key_env, spec.device, spec.threads)
    return cached(key, lambda: _open(kind, spec))


def _open(kind: str, spec: BackendSpec) -> Backend:
    if kind == "llama_cpp":
        from winnow.synth.llama_cpp_backend import LlamaCppBackend

        return LlamaCppBackend(spec.model, threads=spec.threads)
    if kind == "transformers":
        from winnow.synth.transformers_backend import TransformersBackend

        return TransformersBackend(spec.model, device=spec.device, threads=spec.threads)
    if kind == "openai":
        from winnow.synth.openai_backend import OpenAIBackend

        return OpenAIBackend(spec.url, spec.model, api_key_env=spec.api_key_env)
    if kind == "vllm":
        from winnow.synth.vllm_backend import VllmBackend

        return VllmBackend(spec.model)
    raise WinnowError(f"unknown rephrase backend {kind!r}; use llama_cpp, transformers, openai or vllm")
