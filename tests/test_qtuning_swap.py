"""Q-Tuning's implementation check (bench/qtuning_check.py) in small: answers swapped between GSM8K
problems, the `prune` stage run for real with a winnow proxy reference, and the stage's `token_rule`
(the reversed-rule ablation) end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SHARED_DATA, kept_rows, rejected_rows, run

from winnow.raters.eu_plane import kept_tokens, token_keep

sys.path.insert(0, str(REPO / "bench"))
from qtuning_check import swapped_pool  # noqa: E402


def test_swapped_pool_is_a_derangement_of_a_quarter():
    rows = swapped_pool(64, 0.25, seed=1)
    truth = {json.loads(x)["question"]: json.loads(x)["answer"]
             for x in (SHARED_DATA / "sft" / "gsm8k" / "train.jsonl").read_text().splitlines()}
    swapped = [r for r in rows if r["swapped"]]
    assert len(swapped) == 16 and len({r["id"] for r in rows}) == 64
    assert all(r["answer"] != truth[r["question"]] for r in swapped)          # nobody keeps its own answer
    assert all(r["answer"] == truth[r["question"]] for r in rows if not r["swapped"])
    assert sorted(r["answer"] for r in swapped) == sorted(truth[r["question"]] for r in swapped)   # a permutation


@pytest.mark.parametrize("n", [1, 2, 7, 10])
@pytest.mark.parametrize("r_token", [0.3, 0.5, 1.0])
def test_reversed_rule_keeps_the_highest_scores(n, r_token):
    rng = np.random.default_rng(n)
    nll = rng.exponential(2.0, n)
    low, high = kept_tokens(nll, r_token, 0.5), kept_tokens(nll, r_token, 0.5, "highest")
    assert np.array_equal(low, token_keep(nll, r_token, 0.5))        # the default is the stage's old rule
    assert low.sum() == high.sum() == max(1, round(r_token * n))
    tok = np.exp(nll)
    padded = np.concatenate([[0.0], tok, [0.0]])
    score = 0.5 * tok + 0.5 * (padded[:-2] + padded[2:])
    if not high.all():
        assert score[high].min() >= score[~high].max()                 # the other end of the score order


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny winnow proxy LM trained in seconds on 300 GSM8K answers (not the ones pruned below). Its
    window is 128 tokens: shorter than many GSM8K problems with their answers (the long-row case)."""
    from winnow.raters.perplexity_rater import train_reference_lm

    lines = (SHARED_DATA / "sft" / "gsm8k" / "train.jsonl").read_text().splitlines()[-300:]
    folder = tmp_path_factory.mktemp("reference")
    train_reference_lm([json.loads(x)["answer"] for x in lines], str(folder), "tiny", vocab_size=512, seq_len=128,
                       flop_budget=1e11, lr=4e-3, device="cpu", log=lambda *a: None)
    return folder


@pytest.fixture(scope="module")
def pruned(client, tmp_path_factory, reference):
    """The prune stage run for real on 64 problems (a quarter with swapped answers), once per token rule."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pruned")
    src = tmp / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in swapped_pool(64, 0.25, seed=0)))
    outs = {}
    for rule in ("lowest", "highest"):
        outs[rule] = tmp / rule
        run({"input": {"paths": [str(src)], "text_field": "answer"}, "output": str(outs[rule]),
             "stages": [{"prune": {"model": str(reference), "prompt_field": "question", "response_field": "text",
                                   "r_sample": 0.5, "r_token": 0.5, "pool_size": 64, "token_rule": rule}}]}, client)
    torch.set_num_threads(threads)
    return outs


def stored_tokens(stage) -> dict:
    """id -> (token start characters, token NLLs) as the stage stored them in its fit state."""
    table = pq.read_table(next((stage / "_fit").glob("tokens-*"))).to_pydict()
    return {i: (np.asarray(s), np.asarray(n)) for i, s, n in zip(table["id"], table["starts"], table["nll"], strict=True)}


def test_long_prompts_are_scored_on_a_window_that_holds_the_response(pruned, reference):
    """Problems longer than the reference's 128-token window: the window drops prompt tokens from the left so
    that the response is scored (before: a prompt of 127+ tokens left none, and the row was rejected as
    `no_response_tokens`); the stored offsets still index the whole training text, inside its response."""
    from winnow.tokenize.sft import training_text
    from winnow.tokenize.tokenizer import load_tokenizer

    tok = load_tokenizer(reference)
    stage = pruned["lowest"] / "01-prune"
    rows = kept_rows(stage).to_pylist() + rejected_rows(stage).to_pylist()
    pool = {r["id"]: r for r in swapped_pool(64, 0.25, seed=0)}
    long_prompts = [r for r in rows if len(tok.encode(pool[r["id"]]["question"] + "\n\n").ids) >= 128]
    assert len(long_prompts) >= 3                               # the case is there to be handled
    assert "no_response_tokens" not in {r.get("reason") for r in rows}
    tokens = stored_tokens(stage)
    for r in rows:
        text, start = training_text(pool[r["id"]]["question"], pool[r["id"]]["answer"])
        starts, nll = tokens[r["id"]]
        assert r["response_tokens"] == len(starts) > 0
        assert starts.min() >= start and starts.max() < len(text)
    for r in long_prompts:   # scored on the response: its first token starts where the response starts
        text, start = training_text(pool[r["id"]]["question"], pool[r["id"]]["answer"])
        assert tokens[r["id"]][0][0] <= start + 1


def test_stage_token_rule_reverses_which_q2_tokens_are_masked(pruned):
    """Same scores, same quadrants, same kept rows and as many pruned tokens; `token_rule: highest` masks
    the Q2 tokens `lowest` keeps: the masked tokens' NLL sits above the kept ones' under lowest, below under
    highest."""
    tables = {}
    for rule, out in pruned.items():
        kept = kept_rows(out / "01-prune")
        tables[rule] = kept
        assert kept.num_rows + rejected_rows(out / "01-prune").num_rows == 64 and kept.num_rows == 32
        by_id = stored_tokens(out / "01-prune")
        above = []
        for row in kept.to_pylist():
            if row["quadrant"] != "q2_valuable_misconception":
                continue
            starts, values = by_id[row["id"]]
            masked = np.array([any(a <= s < b for a, b in row["masked_spans"][1:]) for s in starts])
            assert masked.sum() == row["pruned_tokens"]
            above.append(values[masked].mean() > values[~masked].mean())
        assert above, "no Q2 row kept"
        assert all(above) if rule == "lowest" else not any(above)
    low, high = (tables[r].sort_by("id") for r in ("lowest", "highest"))
    for col in ("id", "quadrant", "pruned_tokens", "ppl"):
        assert low.column(col).equals(high.column(col))
    assert not low.column("masked_spans").equals(high.column("masked_spans"))
