"""Any OpenAI-compatible `/v1/chat/completions` server: vLLM, SGLang, llama.cpp's server, a hosted API.

Requests run `concurrency` at a time from a thread pool (an HTTP client spends its time waiting,
so threads are enough). Each request has its own timeout and is retried with exponential backoff
on a timeout, a connection error, HTTP 429 or 5xx, and a 200 whose body is not the expected JSON;
other 4xx answers are final. After the last try the request's result carries the reason
(`timeout`, `http_503`, `invalid_json`, ...) and the caller keeps going.

The API key is read from the environment variable `api_key_env` names when the backend opens and
is only ever put in the Authorization header: it is not part of any result, error or cache key.
The model's identity (`model_identity`: rows and cache keys) is the served name *and* the server's
URL, without any user:password part: one name on two servers may be two different models.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

from winnow.pipeline.errors import WinnowError
from winnow.synth.types import Generation, GenerationParams, Request

RETRY_STATUS = {408, 409, 425, 429}


def model_identity(url: str, model: str) -> str:
    """`openai:<served name>@<base URL>`; credentials in the URL are left out, a trailing slash and the
    /chat/completions suffix too, so spellings of one endpoint name one model."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    return f"openai:{model}@{urlunsplit((parts.scheme.lower(), netloc.lower(), path, '', ''))}"


class OpenAIBackend:
    kind = "openai"
    parameters = None   # a remote model's size is unknown: its cost is reported in tokens

    def __init__(self, url: str | None, model: str | None, api_key_env: str | None = None,
                 backoff_s: float = 0.5):
        if not url:
            raise WinnowError("backend openai needs `url`, the server's base URL (e.g. http://localhost:8000/v1)")
        if not model:
            raise WinnowError("backend openai needs `model`, the served model's name")
        self.endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")
        self.served_model = model
        self.model_id = model_identity(url, model)
        self.backoff_s = backoff_s
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise WinnowError(f"api_key_env names {api_key_env!r}, but that environment variable is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    def generate(self, requests: list[Request], params: GenerationParams) -> list[Generation]:
        import httpx

        limits = httpx.Limits(max_connections=params.concurrency, max_keepalive_connections=params.concurrency)
        with httpx.Client(timeout=params.timeout_s, limits=limits, headers=self._headers) as client, \
                ThreadPoolExecutor(max_workers=max(1, params.concurrency)) as pool:
            return list(pool.map(lambda r: self._one(client, r, params), requests))

    def _one(self, client, request: Request, params: GenerationParams) -> Generation:
        import httpx

        body = {"model": self.served_model, "messages": request.as_dicts(), "max_tokens": params.max_new_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "seed": request.seed}
        jitter = random.Random(request.seed)
        error = "no_attempt"
        for attempt in range(params.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 30.0) * (0.5 + jitter.random()))
            try:
                response = client.post(self.endpoint, json=body)
            except httpx.TimeoutException:
                error = "timeout"
                continue
            except httpx.HTTPError as e:   # connection, protocol, decoding, redirect errors: retried
                error = f"connection_error: {type(e).__name__}"
                continue
            if response.status_code != 200:
                error = f"http_{response.status_code}"
                if response.status_code >= 500 or response.status_code in RETRY_STATUS:
                    continue
                return Generation(error=error, attempts=attempt + 1)
            parsed = _parse(response.content)
            if parsed is None:
                error = "invalid_json"
                continue
            parsed.attempts = attempt + 1
            return parsed
        return Generation(error=error, attempts=params.retries + 1)


def _parse(content: bytes) -> Generation | None:
    """The text and token counts of a chat-completion body, or None when it is not one."""
    try:
        data = json.loads(content)
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(text, str):
        return None
    finish = data["choices"][0].get("finish_reason")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def count(key: str) -> int:
        try:
            return max(0, int(usage.get(key) or 0))
        except (TypeError, ValueError):   # a server that reports nonsense: the count is unknown
            return 0

    return Generation(text=text, prompt_tokens=count("prompt_tokens"), completion_tokens=count("completion_tokens"),
                      finish_reason=finish if isinstance(finish, str) else None)
