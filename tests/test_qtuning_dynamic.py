"""Q-Tuning's dynamic mode (winnow/raters/qtuning_dynamic.py): each batch is scored by the model being
trained, so what it keeps follows that model. Real tiny proxy LM, real BPE, real GSM8K answers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import SHARED_DATA

from winnow.proxy.data import pack_tokenized
from winnow.proxy.model import ProxyLM, config_for
from winnow.proxy.train import TrainConfig, batch_of, token_losses, train
from winnow.raters.eu_plane import kept_tokens
from winnow.raters.qtuning_dynamic import DynamicParams, DynamicSelector, score_batch
from winnow.tokenize.tokenize_stage import TokenizeParams, TokenizerState, TokenizeStage
from winnow.tokenize.tokenizer import EOS, train_bpe

SEQ, VOCAB = 64, 384
pytestmark = pytest.mark.usefixtures("one_thread")   # tiny matrices: one torch thread is fastest


@pytest.fixture(scope="module")
def pool():
    """64 GSM8K answers (first line each, short rows) as documents: 16 to be memorised, 48 fresh."""
    lines = (SHARED_DATA / "sft" / "gsm8k" / "train.jsonl").read_text().splitlines()[:64]
    texts = [json.loads(x)["answer"].split("\n")[0] for x in lines]
    ids = [f"gsm-{k}" for k in range(len(texts))]
    tok = TokenizerState(train_bpe(texts, VOCAB).to_str(), EOS)
    table = TokenizeStage(TokenizeParams()).apply(pa.table({"id": ids, "text": texts}), tok)[0]
    sources = {i: "memorised" if k < 16 else "fresh" for k, i in enumerate(ids)}
    return pack_tokenized(table, SEQ, sources=sources), pack_tokenized(table.slice(0, 16), SEQ)


def doc_sources(batch: dict, scores) -> np.ndarray:
    src = batch["source_index"][:, 1:].numpy()
    return np.array([src[r, pos[0]] for r, pos in zip(scores.rows, scores.positions, strict=True)])


def test_scores_are_the_current_models_losses_per_document(pool):
    """The per-document error is the mean of the trainer's own per-target losses under the model passed."""
    rows, _ = pool
    model = ProxyLM(config_for("tiny", VOCAB, SEQ))
    batch = batch_of(rows, np.arange(8), torch.device("cpu"))
    scores = score_batch(model, batch)
    with torch.no_grad():
        losses, weights = token_losses(model.eval(), batch, True)
    assert len(scores.rows) >= 8
    for r, s, where, m in zip(scores.rows, scores.segments, scores.positions, scores.mean_nll, strict=True):
        in_doc = (batch["segment_ids"][r, 1:] == s) & (weights[r] > 0)
        assert np.array_equal(where, np.flatnonzero(in_doc.numpy()))
        assert m == pytest.approx(losses[r][in_doc].mean().item(), rel=1e-5)


def test_selection_follows_the_model_being_trained(pool):
    """After the model has memorised 16 documents they are low-error, low-entropy (Q3, redundant) and
    dropped; under the untrained model the same batch keeps them like any other. Q2 documents keep the
    r_token share of their targets, Q4 documents all, dropped ones none; the trainer trains on that mask."""
    rows, memorised = pool
    trained = train(TrainConfig(size="tiny", seq_len=SEQ, batch_size=len(memorised), lr=1e-2, flop_budget=1.0,
                                n_evals=1, device="cpu"), VOCAB, memorised, {}, log=lambda *a: None)
    assert trained["steps"] == 1
    steps = 40
    trained = train(TrainConfig(size="tiny", seq_len=SEQ, batch_size=len(memorised), lr=1e-2, warmup_frac=0.1,
                                flop_budget=steps * trained["flops"], n_evals=1, device="cpu"),
                    VOCAB, memorised, {}, log=lambda *a: None)
    selector = DynamicSelector(DynamicParams(r_sample=0.25, r_token=0.5))
    batch = batch_of(rows, np.arange(len(rows)), torch.device("cpu"))
    mem = rows.sources.index("memorised")
    kept_memorised = {}
    torch.manual_seed(0)   # the untrained model's weights do not depend on the tests run before
    for name, model in (("untrained", ProxyLM(config_for("tiny", VOCAB, SEQ))), ("trained", trained["model"])):
        scores = score_batch(model, batch)
        quadrant, kept = selector.decide(scores)
        is_mem = doc_sources(batch, scores) == mem
        assert kept.sum() == round(0.25 * len(kept))
        kept_memorised[name] = kept[is_mem].mean()
        if name == "trained":
            assert scores.mean_nll[is_mem].mean() < scores.mean_nll[~is_mem].mean() - 2    # it did memorise
            assert (quadrant[is_mem] == 3).mean() > 0.6                                    # redundant knowledge
    assert kept_memorised["trained"] <= 0.1 < kept_memorised["untrained"], kept_memorised

    # the narrowed loss mask: whole Q4 documents, the r_token share of Q2 ones, nothing of the others
    narrowed = selector(trained["model"], batch)
    scores = score_batch(trained["model"], batch)
    quadrant, kept = selector.decide(scores)
    mask = narrowed["loss_mask"][:, 1:].numpy()
    for d in range(len(scores.rows)):
        got = mask[scores.rows[d], scores.positions[d]]
        if not kept[d]:
            assert got.sum() == 0
        elif quadrant[d] == 2:
            assert np.array_equal(got > 0, kept_tokens(scores.nll[d], 0.5, 0.5))
        else:
            assert got.all()
    assert 0 < mask.sum() < batch["loss_mask"][:, 1:].sum()

    # through the trainer's hook: the targets it trains on are exactly the ones the selector kept
    hooked = DynamicSelector(DynamicParams(r_sample=0.25, r_token=0.5))
    result = train(TrainConfig(size="tiny", seq_len=SEQ, batch_size=16, flop_budget=1.0, n_evals=1, device="cpu"),
                   VOCAB, rows, {}, log=lambda *a: None, select_batch=hooked)
    summary = hooked.summary()
    assert summary["steps"] == result["steps"] == 1
    assert result["target_tokens"] == summary["targets_kept"] < summary["targets"]


def test_random_selection_keeps_the_same_count_whole(pool):
    """The control arm: as many documents as Q-Tuning keeps, drawn at random, every target of each."""
    rows, _ = pool
    selector = DynamicSelector(DynamicParams(r_sample=0.25, selection="random", seed=3))
    batch = batch_of(rows, np.arange(len(rows)), torch.device("cpu"))
    model = ProxyLM(config_for("tiny", VOCAB, SEQ))
    mask = selector(model, batch)["loss_mask"][:, 1:].numpy()
    scores = score_batch(model, batch)
    whole = [mask[r, where].all() for r, where in zip(scores.rows, scores.positions, strict=True)]
    none = [not mask[r, where].any() for r, where in zip(scores.rows, scores.positions, strict=True)]
    assert all(w or n for w, n in zip(whole, none, strict=True))       # whole documents: no token pruning
    assert sum(whole) == round(0.25 * len(scores.rows)) == selector.summary()["kept"]
