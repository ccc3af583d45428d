"""transformers `generate`: any local causal LM (a Hugging Face folder or a GGUF), CPU or CUDA.

Requests are sorted by prompt length and generated in batches of `concurrency` with left padding,
so a batch's padding stays small; on CUDA in bf16 with SDPA (../shared/GPU.md: this replaces vLLM
on the lent GPU). Sampling seeds torch's global generator per batch from its requests' seeds: with `temperature: 0`
(greedy) a result depends only on its prompt; with sampling it also depends on which prompts share
its batch, and those are the cache misses of a shard, so a run that resumes after some rewrites
were cached (or retries failures) may sample different text for the rest. Only greedy decoding
is reproducible here; llama.cpp, vLLM and OpenAI-compatible servers take a seed per request.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext

from winnow.models.loading import load_causal_lm, model_identity, parameter_count, resolve_model
from winnow.pipeline.retained_heap import retained_heap
from winnow.raters.scorer import resolve_device
from winnow.synth.types import Generation, GenerationParams, Request


class TransformersBackend:
    kind = "transformers"

    def __init__(self, model: str | None = None, device: str = "auto", threads: int | None = None):
        import torch

        path = resolve_model(model)
        self.device = resolve_device(device)
        # OpenMP's thread count belongs to the calling thread: set here for loading and again in every
        # generating thread (a Dask worker's task threads start at its OMP_NUM_THREADS, which Dask sets to 1)
        self.threads = threads if threads and self.device == "cpu" else None
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model_id = model_identity(path)
        self.lm, self.tokenizer = load_causal_lm(path, self.device)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.parameters = parameter_count(self.lm)
        self._lock = threading.Lock()   # torch's global RNG is seeded per batch: one batch at a time

    def generate(self, requests: list[Request], params: GenerationParams) -> list[Generation]:
        prompts = [self.tokenizer.apply_chat_template(r.as_dicts(), tokenize=False, add_generation_prompt=True)
                   for r in requests]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        batch = max(1, params.concurrency)
        # each new token frees and reallocates its activations: in a Dask worker glibc would mmap and unmap
        # every one over 128 KiB (pipeline/retained_heap.py)
        with retained_heap() if self.device == "cpu" else nullcontext():
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                try:
                    with self._lock:
                        outs = self._batch([prompts[i] for i in idx], [requests[i].seed for i in idx], params)
                except (RuntimeError, ValueError) as e:   # e.g. out of memory: every request of the batch fails
                    outs = [Generation(error=f"backend_error: {type(e).__name__}: {str(e)[:200]}") for _ in idx]
                for i, out in zip(idx, outs, strict=True):
                    results[i] = out
        return results  # type: ignore[return-value]

    def _batch(self, prompts: list[str], seeds: list[int], params: GenerationParams) -> list[Generation]:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = params.temperature > 0
        kwargs = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p} if sample \
            else {"do_sample": False}
        torch.manual_seed(hash(tuple(seeds)) & 0x7FFF_FFFF)
        with torch.inference_mode():
            out = self.lm.generate(**enc, max_new_tokens=params.max_new_tokens, min_new_tokens=params.min_new_tokens,
                                   pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:].cpu()
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        results = []
        for row, n_prompt in zip(new.tolist(), prompt_tokens, strict=True):
            stop = next((k + 1 for k, t in enumerate(row) if t in eos), None)
            length = stop or len(row)
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            # no end-of-sequence token: generation ran into max_new_tokens and the answer is cut off
            results.append(Generation(text=text, prompt_tokens=int(n_prompt), completion_tokens=length,
                                      finish_reason="stop" if stop else "length"))
        return results
