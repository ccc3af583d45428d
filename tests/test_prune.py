"""Q-Tuning pruning: the error-uncertainty plane, token scores, spans -> loss masks, and the `prune`
stage end to end on GSM8K with the SmolLM2 reference model, through tokenize, pack and training."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import SHARED_DATA, check_conservation, kept_rows, rejected_rows, run

from winnow.raters.eu_plane import bisect_level, quadrants, select, spans, token_keep
from winnow.tokenize.sft import token_mask, training_text

GSM8K = SHARED_DATA / "sft" / "gsm8k" / "train.jsonl"


# the plane -----------------------------------------------------------------------------------------

def test_quadrants_of_a_constructed_pool():
    """Four clusters at the corners of the plane and a larger cloud in the middle: at level 0.2 the
    outer bands hold exactly the corners, and each corner is its quadrant."""
    rng = np.random.default_rng(0)
    corners = {1: (9.0, 9.0), 2: (9.0, 1.0), 3: (1.0, 1.0), 4: (1.0, 9.0)}
    ppl, ent, truth = [], [], []
    for q, (p, e) in corners.items():
        ppl += list(p + rng.normal(0, 0.1, 20))
        ent += list(e + rng.normal(0, 0.1, 20))
        truth += [q] * 20
    ppl += list(5 + rng.normal(0, 0.3, 120))
    ent += list(5 + rng.normal(0, 0.3, 120))
    truth += [0] * 120
    ppl, ent, truth = np.array(ppl), np.array(ent), np.array(truth)
    q = quadrants(ppl, ent, 0.2)
    assert np.array_equal(q[truth > 0], truth[truth > 0])
    assert np.all(q[truth == 0] == 0)                   # the middle band belongs to no quadrant
    quadrant, kept = select(ppl, ent, r_sample=0.2)     # Q2 + Q4 hold exactly 40 of 200
    assert np.array_equal(kept, np.isin(truth, (2, 4)))
    assert np.array_equal(quadrant[truth > 0], truth[truth > 0])


@pytest.mark.parametrize("n", [64, 100, 257])
@pytest.mark.parametrize("r_sample", [0.125, 0.25, 0.5])
def test_bisection_meets_r_sample_within_one_sample(n, r_sample):
    rng = np.random.default_rng(n)
    ppl = np.exp(rng.normal(2, 0.5, n))
    ent = 0.4 * np.log(ppl) + rng.normal(1, 0.3, n)      # correlated, as real scores are
    level = bisect_level(ppl, ent, r_sample)
    assert 0 <= level <= 0.49
    in_q2_q4 = int(np.isin(quadrants(ppl, ent, level), (2, 4)).sum())
    widest = int(np.isin(quadrants(ppl, ent, 0.49), (2, 4)).sum())
    if widest >= r_sample * n:
        assert abs(in_q2_q4 - r_sample * n) <= 1      # the bisection itself, before any top-up
    else:   # correlated scores: even the widest bands hold too few; the top-up makes up the rest
        assert level > 0.48
    _, kept = select(ppl, ent, r_sample)
    assert kept.sum() == round(r_sample * n)


def support_of(ppl: np.ndarray, ent: np.ndarray) -> np.ndarray:
    """Distance from the diagonal of the min-max-normalised plane (log PPL), computed here on its own."""
    def unit(x):
        return (x - x.min()) / (x.max() - x.min())
    return np.abs(unit(np.log(ppl)) - unit(ent))


@pytest.mark.parametrize("seed, n, r_sample", [(0, 200, 0.5), (3, 257, 0.5), (5, 150, 0.375)])
def test_top_up_comes_from_q1_and_q3_only(seed, n, r_sample):
    """Correlated scores leave Q2 ∪ Q4 short even at the widest bands: the top-up takes the Q1 ∪ Q3
    samples farthest from the diagonal and never a middle-band sample, though some of those sit
    farther from it (Algorithm 1 of the paper)."""
    rng = np.random.default_rng(seed)
    ppl = np.exp(rng.normal(2, 0.5, n))
    ent = 0.4 * np.log(ppl) + rng.normal(1, 0.3, n)
    q_at_level = quadrants(ppl, ent, bisect_level(ppl, ent, r_sample))
    support = support_of(ppl, ent)
    middle = q_at_level == 0
    q13 = np.isin(q_at_level, (1, 3))
    # the trap these pools hold: a middle-band sample farther from the diagonal than the last Q1/Q3
    # sample the top-up needs
    need = round(r_sample * n) - int(np.isin(q_at_level, (2, 4)).sum())
    assert 0 < need <= q13.sum() and support[middle].max() > np.sort(support[q13])[::-1][need - 1]
    quadrant, kept = select(ppl, ent, r_sample)
    assert np.array_equal(quadrant, q_at_level)           # no sample is relabelled into a quadrant
    assert not (kept & middle).any()
    assert kept[np.isin(q_at_level, (2, 4))].all()        # short of the target: all of Q2 ∪ Q4 ...
    topped = kept & q13                                   # ... and the farthest of Q1 ∪ Q3
    assert topped.any() and support[topped].min() >= support[q13 & ~kept].max()
    assert kept.sum() == round(r_sample * n)


def test_token_scores_prune_surprising_tokens_and_their_neighbours():
    nll = np.array([0.1, 0.1, 0.1, 5.0, 0.1, 0.1, 0.1, 0.1, 4.0, 0.1])
    keep = token_keep(nll, r_token=0.5, lam=0.5)
    assert keep.sum() == 5
    assert not keep[3] and not keep[8]                   # the surprising tokens go
    assert not keep[2] and not keep[4]                   # and so do their neighbours' scores
    assert keep[0] and keep[5] and keep[6]
    offsets = np.array([[k * 3, k * 3 + 3] for k in range(10)])
    assert spans(offsets, ~keep) == [[6, 15], [21, 27]]


# spans -> token mask -> packed rows ----------------------------------------------------------------

@pytest.mark.parametrize("vocab", [300, 3000])
def test_spans_become_loss_masks_for_any_tokenizer_and_survive_packing(vocab):
    """The same character spans masked under two tokenizers of different granularity; pack ANDs the
    mask with its own, so a masked token is never a target in a packed row."""
    from winnow.pipeline.documents import read_documents
    from winnow.tokenize.pack import PackParams, PackStage
    from winnow.tokenize.tokenize_stage import TokenizeParams, TokenizerState, TokenizeStage
    from winnow.tokenize.tokenizer import EOS, train_bpe

    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:40]]
    _, corpus = read_documents([str(SHARED_DATA / "reference" / "wikipedia" / "*.jsonl")], 200)
    state = TokenizerState(train_bpe(corpus, vocab).to_str(), EOS)
    texts, starts = zip(*(training_text(r["question"], r["answer"]) for r in rows), strict=True)
    masked = [[[0, s]] + ([[s + 10, s + 25]] if k % 2 else []) for k, s in enumerate(starts)]
    table = pa.table({"id": [f"r{k}" for k in range(len(rows))], "text": list(texts),
                      "masked_spans": pa.array(masked, pa.list_(pa.list_(pa.int32())))})
    tokenized, _ = TokenizeStage(TokenizeParams()).apply(table, state)
    for k, (text, spans_k) in enumerate(zip(texts, masked, strict=True)):
        enc = state.tokenizer.encode(text, add_special_tokens=False)
        mask = tokenized.column("loss_mask")[k].as_py()
        assert len(mask) == len(enc.ids) + 1 and mask[-1] == 1     # EOS is a target
        for (a, b), m in zip(enc.offsets, mask, strict=False):
            overlaps = any(a < e and s < max(b, a + 1) for s, e in spans_k)
            assert m == (0 if overlaps else 1), (text[a:b], spans_k)
        # every prompt character is inside a masked token; some response token is a target
        assert all(m == 0 for (a, _), m in zip(enc.offsets, mask, strict=False) if a < starts[k])
        assert sum(mask) > 1
    packed, _ = PackStage(PackParams(seq_len=64, strategy="concat")).apply(tokenized, 0)
    doc_masks = {f"r{k}": tokenized.column("loss_mask")[k].as_py() for k in range(len(rows))}
    for row in packed.to_pylist():
        for j, doc in enumerate(row["doc_ids"]):
            a, b = row["cu_seqlens"][j], row["cu_seqlens"][j + 1]
            first = row["doc_offsets"][j]                  # where in its document this segment starts
            source = doc_masks[doc][first:first + (b - a)]
            # pack keeps the document's mask as it is, except that a segment's first token is no
            # target (intra-document masking): equal, not merely no larger
            assert row["loss_mask"][a:b] == [0] + source[1:], (doc, first)
        assert not any(row["loss_mask"][row["cu_seqlens"][-1]:])        # padding is never a target


def test_token_mask_matches_a_brute_force_overlap():
    rng = np.random.default_rng(1)
    for _ in range(200):
        cuts = np.sort(rng.choice(np.arange(1, 80), size=rng.integers(2, 20), replace=False))
        offsets = list(zip([0, *cuts[:-1]], cuts, strict=True))
        raw = sorted(rng.choice(np.arange(0, 80), size=2 * rng.integers(0, 4), replace=False).tolist())
        masked = [[raw[i], raw[i + 1]] for i in range(0, len(raw), 2)]
        want = [0 if any(a < e and s < b for s, e in masked) else 1 for a, b in offsets]
        assert token_mask([tuple(map(int, o)) for o in offsets], masked) == want


# the stage, end to end -----------------------------------------------------------------------------

def test_prune_stage_on_gsm8k_through_tokenize_pack_and_training(client, tmp_path):
    """SmolLM2-135M (the default reference) scores 72 GSM8K problems; Q-Tuning keeps 25% of samples
    and half the tokens of the Q2 ones; the masks reach the packed rows and the trainer's targets."""
    import torch

    from winnow.proxy.data import rows_from_table
    from winnow.proxy.model import ProxyLM, config_for
    from winnow.proxy.train import TrainConfig, batch_of, lm_loss, token_losses, train

    lines = GSM8K.read_text().splitlines()[:72]
    src = tmp_path / "gsm8k.jsonl"
    src.write_text("".join(json.dumps({"id": f"gsm-{k}", **json.loads(x)}) + "\n" for k, x in enumerate(lines)))
    out = tmp_path / "out"
    run({"input": {"paths": [str(src)], "text_field": "answer", "shard_size_mb": 0.02},   # shards for both workers
         "output": str(out),
         "stages": [{"prune": {"prompt_field": "question", "response_field": "text", "r_sample": 0.25,
                               "r_token": 0.5, "lambda": 0.5, "pool_size": 64, "max_tokens": 192}},
                    {"tokenize": {"vocab_size": 512}},
                    {"pack": {"seq_len": 128, "strategy": "best_fit"}}]}, client)
    manifests = check_conservation(out)
    kept, rejected = kept_rows(out / "01-prune"), rejected_rows(out / "01-prune")
    # a pool of 64 and a tail of 8, too short for quantiles, which joins it: round(0.25 x 72) kept
    assert kept.num_rows == 18 and rejected.num_rows == 72 - 18
    assert set(rejected.column("reason").to_pylist()) <= {
        "q1_harmful_noise", "q3_redundant_knowledge", "middle_band", "q2_valuable_misconception_over_r_sample",
        "q4_calibration_over_r_sample"}
    # one pool of 72: Q2 ∪ Q4 kept, topped up only from Q1 ∪ Q3 (farthest from the diagonal first)
    quadrant_of = {r["id"]: r["quadrant"] for r in kept.to_pylist() + rejected.to_pylist()}
    assert "middle_band" not in set(kept.column("quadrant").to_pylist())
    everyone = pa.concat_tables([kept.select(["id", "ppl", "entropy"]), rejected.select(["id", "ppl", "entropy"])])
    support = dict(zip(everyone.column("id").to_pylist(), support_of(everyone.column("ppl").to_numpy(),
                                                                      everyone.column("entropy").to_numpy()),
                       strict=True))
    kept_ids = set(kept.column("id").to_pylist())
    topped = [support[i] for i in kept_ids if quadrant_of[i] in ("q1_harmful_noise", "q3_redundant_knowledge")]
    passed = [support[i] for i, q in quadrant_of.items()
              if i not in kept_ids and q in ("q1_harmful_noise", "q3_redundant_knowledge")]
    if topped:
        assert not any(r.endswith("_over_r_sample") for r in rejected.column("reason").to_pylist())
        assert min(topped) >= max(passed, default=0.0)
    assert (out / "01-prune" / "eu_plane.png").stat().st_size > 10_000
    assert manifests[1]["scoring_flops"] > 0
    by_id = {json.loads(x)["question"]: json.loads(x) for x in lines}
    response_in = sum(rejected.column("response_tokens").to_pylist()) + sum(kept.column("response_tokens").to_pylist())
    response_kept = 0
    for row in kept.to_pylist():
        source = next(v for q, v in by_id.items() if row["text"].startswith(q))
        text, start = training_text(source["question"], source["answer"])
        assert row["text"] == text and row["masked_spans"][0] == [0, start]   # the prompt is masked
        assert all(s >= start for s, _ in row["masked_spans"][1:])            # only response tokens are pruned
        if row["quadrant"] == "q2_valuable_misconception":
            assert row["pruned_tokens"] == row["response_tokens"] - max(1, round(0.5 * row["response_tokens"]))
        else:
            assert row["pruned_tokens"] == 0 and len(row["masked_spans"]) == 1
        response_kept += row["response_tokens"] - row["pruned_tokens"]
    share = response_kept / response_in
    assert 0.25 * 0.5 * 0.6 < share < 0.25 * 1.4, share     # about r_sample x (r_token on Q2, all of Q4)

    # the masks reach the packed rows, and the trainer's targets are exactly their ones
    tokenized = kept_rows(out / "02-tokenize")
    packed = kept_rows(out / "03-pack")
    assert sum(sum(m) for m in packed.column("loss_mask").to_pylist()) < \
        sum(sum(m) for m in tokenized.column("loss_mask").to_pylist())
    rows = rows_from_table(packed)
    result = train(TrainConfig(size="tiny", seq_len=128, batch_size=len(rows), flop_budget=1.0, n_evals=1,
                               device="cpu"), 512, rows, {}, log=lambda *a: None)
    assert result["steps"] == 1 and result["target_tokens"] == int(rows.loss_mask[:, 1:].sum().item())
    # the loss is the mean over exactly those targets: changing a masked token's loss changes nothing
    model = ProxyLM(config_for("tiny", 512, 128)).eval()
    batch = batch_of(rows, np.arange(len(rows)), torch.device("cpu"))
    # the targets as the packed files hold them, read apart from the trainer: token t is predicted from < t
    on_disk = torch.tensor(packed.column("loss_mask").to_pylist(), dtype=torch.float32)[:, 1:]
    with torch.no_grad():
        losses, weights = token_losses(model, batch, True)
        assert torch.equal(weights.float(), on_disk)
        masked = on_disk == 0
        assert masked.any() and (~masked).any()
        expected = losses[~masked].mean()
        assert not torch.allclose(losses.mean(), expected, rtol=1e-3)   # the masked losses would move it
        assert torch.allclose(lm_loss(model, batch, True), expected, rtol=1e-5)


def test_pools_with_nothing_to_score():
    """No row has response tokens (empty responses): no pool, nothing kept, no crash, corpus-wide or pooled."""
    from winnow.filters.prune import PruneParams, PruneStage

    for pool_size in (0, 64):
        quadrant, kept = PruneStage(PruneParams(pool_size=pool_size))._decide(
            ["a", "b"], np.array([np.nan, np.inf]), np.array([np.nan, np.nan]))
        assert not kept.any() and (quadrant == 0).all()
