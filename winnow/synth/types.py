"""What a caller and a language-model backend exchange: a request, the sampling parameters, the result,
and the protocol every backend follows. Backends and callers import these from here; the registry that
opens backends (backend.py) imports the backends, so none of them imports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
    # why generation ended: "stop" (an end-of-sequence token or a stop string), "length" (the
    # max_new_tokens limit: the answer is cut off), None when the backend did not say
    finish_reason: str | None = None


class Backend(Protocol):
    kind: str
    model_id: str                   # what cache keys and rows name the model by
    parameters: int | None

    def generate(self, requests: list[Request], params: GenerationParams) -> list[Generation]: ...
