"""The backend registry: one small interface over every way winnow can ask a language model for text.

    backend = open_backend(BackendSpec(kind="llama_cpp"))          # the default GGUF, on CPU
    results = backend.generate([Request(messages, seed=7)], GenerationParams(max_new_tokens=256))
    results[0].text, results[0].prompt_tokens, results[0].completion_tokens, results[0].error

A backend never raises for one bad prompt: each result carries either text or an `error` (a short
snake_case reason such as `timeout` or `http_503`), so a caller can keep its source row and record
the failure. `parameters` is the model's size when it runs locally (generation FLOPs are
2 * parameters * tokens) and None for a remote server, whose cost is reported in tokens only.
Backends are opened once per worker process (`open_backend` caches them): Dask ships the spec,
never the model. The types a backend and its caller share live in types.py, which every backend
imports; this module imports the backends (lazily, so an uninstalled one costs nothing), and no
backend imports it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal

from winnow.pipeline.errors import WinnowError
from winnow.raters.scorer import cached, file_key
from winnow.synth.types import Backend

BackendKind = Literal["auto", "llama_cpp", "transformers", "openai", "vllm"]


@dataclass(frozen=True)
class BackendSpec:
    kind: BackendKind = "auto"
    model: str | None = None        # a path (.gguf or HF folder) or, for openai, the served model's name
    url: str | None = None          # openai: base URL ending in /v1
    api_key_env: str | None = None  # openai: the environment variable holding the key
    device: str = "auto"
    threads: int | None = None
    extra: dict = field(default_factory=dict, hash=False, compare=False)


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
