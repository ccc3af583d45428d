"""Rewrites already paid for, on disk, so no rerun asks a model twice for the same thing.

Key: sha256 over (the full request as the model receives it: every chat message, so the chunk, the
style's instruction and the system prompt; its seed; the model identity; the sampling parameters).
Editing any prompt text makes new keys by itself: no version number to remember to bump. The model
identity names the file (name and size) for a local model and the server URL with the served name
for an OpenAI-compatible one, so two servers serving different weights under one name never share
entries. One small JSON file per key under `<root>/<2 hex>/<key>.json`, written to a
temporary name and renamed, so concurrent workers (or machines sharing a file system) never
read half a file, and a killed run leaves nothing half-written behind. Only successful
generations are stored: a failure is retried on the next run. The key names the model file, not
the backend: llama.cpp and transformers reading the same GGUF share entries (the row's `backend`
column says which one wrote it). The guard's verdict is not stored
(it is recomputed from the text and the finish reason, which are), so changing the guard needs no new
generations.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from winnow.pipeline.shards import write_bytes_atomic
from winnow.synth.types import Generation, Request


def cache_key(request: Request, model_id: str, sampling: dict) -> str:
    """The key of one generation: the rendered request (messages and seed), the model and the sampling."""
    payload = {"messages": [list(m) for m in request.messages], "seed": request.seed, "model": model_id,
               "sampling": sampling}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class GenerationCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> tuple[Generation, str, int | None] | None:
        """(generation, the backend that made it, its model's parameter count or None when remote),
        or None when absent or unreadable."""
        try:
            data = json.loads(self._path(key).read_bytes())
            return (Generation(text=data["text"], prompt_tokens=data["prompt_tokens"],
                               completion_tokens=data["completion_tokens"], finish_reason=data.get("finish_reason")),
                    data["backend"], data["parameters"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, generation: Generation, backend: str, parameters: int | None) -> None:
        if generation.error is not None:
            return
        body = {"text": generation.text, "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens, "finish_reason": generation.finish_reason,
                "backend": backend, "parameters": parameters}
        write_bytes_atomic(json.dumps(body).encode(), self._path(key))
