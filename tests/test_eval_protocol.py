"""`winnow eval`'s protocol: held-out sets kept out of every arm, one tokenizer, stratified samples,
net cost per trained token by hand, and sample statistics over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA, web_files

from winnow.pipeline.documents import in_heldout_slice, read_documents
from winnow.pipeline.errors import ConfigError
from winnow.proxy.cost import CurationCost
from winnow.proxy.heldout import shares, stratified_sample
from winnow.proxy.summary import arm_summary, interval
from winnow.tokenize.pack import PackParams, PackStage
from winnow.tokenize.tokenize_stage import TokenizeParams, TokenizerState, TokenizeStage
from winnow.tokenize.tokenizer import EOS, train_bpe

SEQ = 128


def _packed_arm(run_dir: Path, ids: list[str], texts: list[str], tokenizer_texts: list[str], vocab: int) -> str:
    """A winnow-like run folder: NN-tokenize/tokenizer.json beside NN-pack/train-00000.parquet."""
    tok = train_bpe(tokenizer_texts, vocab)
    (run_dir / "01-tokenize").mkdir(parents=True)
    tok.save(str(run_dir / "01-tokenize" / "tokenizer.json"))
    state = TokenizerState(tok.to_str(), EOS)
    tokenized, _ = TokenizeStage(TokenizeParams()).apply(pa.table({"id": ids, "text": texts}), state)
    packed, _ = PackStage(PackParams(seq_len=SEQ)).apply(tokenized, 0)
    (run_dir / "02-pack").mkdir()
    pq.write_table(packed, run_dir / "02-pack" / "train-00000.parquet")
    return str(run_dir / "02-pack")


def _text_arm(folder: Path, ids: list[str], texts: list[str]) -> str:
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), folder / "train-00000.parquet")
    return str(folder)


@pytest.fixture(scope="module")
def web_docs():
    ids, texts = read_documents(web_files(2), 600)
    return ids, texts


def test_heldout_documents_never_train_any_arm(tmp_path, web_docs):
    from winnow.proxy.arms import read_arms, training_rows
    from winnow.proxy.evaluate import EvalConfig, eval_tokenizer, heldout_sets

    ids, texts = web_docs
    ref = str(SHARED_DATA / "reference/wikipedia/*.jsonl")
    # the reference set's documents are also planted inside both arms: they must be removed from training
    ref_ids, ref_texts = read_documents(ref, 40)
    arm_ids, arm_texts = ids + ref_ids, texts + ref_texts
    cfg = EvalConfig(arms={"text": _text_arm(tmp_path / "text", arm_ids, arm_texts),
                           "packed": _packed_arm(tmp_path / "run", arm_ids, arm_texts, texts, 700)},
                     output=str(tmp_path / "eval"), pool_heldout_fraction=0.1, pool_tokens=20_000, seq_len=SEQ,
                     heldout={"ref": {"paths": [ref], "tokens": 20_000, "max_docs": 40}})
    arms = read_arms(cfg.arms)
    tokenizer = eval_tokenizer(cfg, arms, "text")
    assert tokenizer.vocab_size == 700                       # the packed arm's own tokenizer
    sets = heldout_sets(cfg, arms["text"], tokenizer, log=lambda *a: None)
    assert set(sets) == {"pool", "ref"} and all(s.ids for s in sets.values())
    excluded = {d for s in sets.values() for d in s.ids}
    assert excluded & set(ref_ids)                           # the planted copies are held-out documents
    trained_by_arm, targets = {}, {}
    for name in ("text", "packed"):
        rows = training_rows(arms[name], tokenizer, SEQ, excluded, cfg.pool_heldout_fraction, None)
        trained = trained_by_arm[name] = {d for row in rows.doc_ids for d in row}
        targets[name] = rows.target_tokens
        assert trained and not trained & excluded, name
        assert not any(in_heldout_slice(d, 0.1) for d in trained), name
        capped = training_rows(arms[name], tokenizer, SEQ, excluded, cfg.pool_heldout_fraction, 50)
        n_docs = len({d for row in capped.doc_ids for d in row})
        if name == "text":
            assert n_docs == 50
        else:  # whole rows: the cap stops at the first row that reaches it
            assert n_docs >= 50 and len({d for row in capped.doc_ids[:-1] for d in row}) < 50
    # packed rows lose only the held-out documents' segments, not their neighbours in the row: the same
    # documents and, both packed best-fit at SEQ, the same target tokens
    assert trained_by_arm["packed"] == trained_by_arm["text"]
    assert targets["packed"] == targets["text"]
    # an arm with nothing left once held-out documents go is refused, naming the arm
    only_ref = read_arms({"refs": _text_arm(tmp_path / "refs", ref_ids, ref_texts)})["refs"]
    with pytest.raises(ConfigError, match="arm 'refs'.*no documents left"):
        training_rows(only_ref, tokenizer, SEQ, set(ref_ids), 0.0, None)
    # every position of a held-out row knows its source, and every source of `ref` (one path) is there
    pool = sets["pool"]
    assert (pool.rows.source_index[pool.rows.segment_ids > 0] >= 0).all()
    assert set(pool.rows.sources) == set(pool.tokens_by_source)


def test_mismatched_tokenizers_are_refused_naming_both_files(tmp_path, web_docs):
    from winnow.proxy.arms import check_tokenizers, read_arms

    ids, texts = web_docs
    a = _packed_arm(tmp_path / "a", ids[:100], texts[:100], texts, 600)
    b = _packed_arm(tmp_path / "b", ids[:100], texts[:100], texts, 650)
    arms = read_arms({"a": a, "b": b})
    with pytest.raises(ConfigError, match=r"tokenizers differ: .*a/01-tokenize/tokenizer.json and .*b/01-tokenize"):
        check_tokenizers(arms, None)
    assert check_tokenizers(read_arms({"a": a, "a2": a}), None).endswith("a/01-tokenize/tokenizer.json")


def test_stratification_draws_from_every_source():
    # one huge source and three small ones, one of them holding less than its share
    sources = ["big"] * 500 + ["mid"] * 40 + ["small"] * 10 + ["tiny"] * 1
    lengths = [100] * 551
    ids = [f"d{i}" for i in range(551)]
    for allocation in ("proportional", "equal"):
        chosen = stratified_sample(ids, sources, lengths, 8_000, allocation, seed=3)
        drawn = {sources[i] for i in chosen}
        assert drawn == {"big", "mid", "small", "tiny"}, allocation
        assert sum(lengths[i] for i in chosen) <= 8_000 + 4 * 100
        assert chosen == stratified_sample(ids, sources, lengths, 8_000, allocation, seed=3)   # seeded
    assert stratified_sample(ids, sources, lengths, 8_000, "equal", seed=4) != chosen
    equal = shares({"big": 50_000, "mid": 4_000, "small": 1_000, "tiny": 100}, 8_000, "equal")
    assert equal["tiny"] == 100 and equal["small"] == 1_000                  # used up; the rest re-shared
    assert equal["big"] == equal["mid"] == pytest.approx((8_000 - 1_100) / 2, abs=1)
    prop = shares({"big": 50_000, "mid": 4_000, "small": 1_000, "tiny": 100}, 8_000, "proportional")
    assert prop["big"] / prop["mid"] == pytest.approx(50_000 / 4_000, rel=0.01)


def test_reference_sources_are_the_paths_given():
    from winnow.pipeline.documents import read_sourced_documents

    paths = [str(SHARED_DATA / "reference/speeches/*.jsonl"), str(SHARED_DATA / "reference/wikipedia/*.jsonl")]
    _, _, sources = read_sourced_documents(paths, stratify="auto")
    assert set(sources) == set(paths)
    _, _, sources = read_sourced_documents(str(SHARED_DATA / "reference/**/*.jsonl"), stratify="auto")
    assert set(sources) == {"gutenberg_books", "python_docs", "wikipedia", "speeches"}
    # one path whose `source` column names every speech (124 values): one stratum, not 124
    _, _, sources = read_sourced_documents(paths[0], stratify="auto")
    assert set(sources) == {"all"}
    with pytest.raises(ConfigError, match="no 'url' column"):
        read_sourced_documents(paths, stratify="url")


def test_net_cost_per_trained_token_by_hand():
    # scoring 2e12 FLOPs over the pool kept 1e6 tokens: 2e6 FLOPs per kept token; the fit cost 5e12 once
    cost = CurationCost(scoring_flops=2e12, one_off_flops=5e12, kept_tokens=1_000_000)
    assert cost.per_token() == 2e6 and cost.per_token(with_fit=True) == 7e6
    # a run of 1e12 training FLOPs that read 100k tokens: net 1e12 + 1e5 * 2e6 = 1.2e12; with the fit 1.7e12
    assert cost.net_flops(1e12, 100_000) == pytest.approx(1.2e12)
    assert cost.net_flops(1e12, 100_000, with_fit=True) == pytest.approx(1.7e12)
    # the baseline reaches the arm's loss (3.5) at 2.4e12 FLOPs: M = 2.4, net 2.4 / 1.2 = 2, with fit 2.4 / 1.7
    runs = [{"arm": "base", "seed": 0, "budget": b, "flops": f, "tokens": 0, "final": {"s": loss}}
            for b, f, loss in ((0.5, 1.2e12, 4.0), (1.0, 2.4e12, 3.5), (2.0, 4.8e12, 3.2))]
    runs.append({"arm": "cur", "seed": 0, "budget": 1.0, "flops": 1e12, "tokens": 100_000, "final": {"s": 3.5}})
    summary = arm_summary(runs, "cur", "base", ["s"], cost)["s"]
    assert summary["multiplier"] == pytest.approx(2.4)
    assert summary["net_multiplier"] == pytest.approx(2.0)
    assert summary["net_multiplier_with_fit"] == pytest.approx(2.4 / 1.7)
    assert summary["std"] is None and summary["interval"] is None            # one seed: no spread claimed
    # a run that reads the kept corpus five times over pays its scoring once: 1e12 + 1e6 * 2e6
    assert cost.net_flops(1e12, 5_000_000) == pytest.approx(3e12)


def test_an_arm_pays_only_for_the_stages_after_a_baseline_of_the_same_run(tmp_path):
    from winnow.proxy.cost import chain_flops

    for name, facts in (("03-fasttext_quality", {"training_flops": 4e9, "scoring_flops": 1e9}),
                        ("04-datarater", {"training_flops": 5e9, "scoring_flops": 2e9}),
                        ("05-pack", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "_manifest.json").write_text(json.dumps({"totals": {"flops": 1e6}, **facts}))
    arm = str(tmp_path / "04-datarater")
    assert chain_flops(arm) == (1e9 + 2e9 + 2e6, 4e9 + 5e9)                     # the whole chain
    assert chain_flops(arm, after=str(tmp_path / "03-fasttext_quality")) == (2e9 + 1e6, 5e9)
    assert chain_flops(arm, after="/elsewhere/03-fasttext_quality") == (1e9 + 2e9 + 2e6, 4e9 + 5e9)


def test_seed_statistics_use_the_sample_std_and_a_t_interval():
    stats = interval([1.0, 2.0, 3.0])
    assert stats["std"] == pytest.approx(1.0)                                # ddof=1 (ddof=0 gives 0.816)
    half = 4.302652729911275 / math.sqrt(3)                                  # t(0.975, 2 dof)
    assert stats["interval"] == pytest.approx([2 - half, 2 + half])
    two = interval([1.4, 2.0])
    assert two["std"] == pytest.approx(0.6 / math.sqrt(2))


def test_eval_json_schema(tmp_path, web_docs):
    """A short end-to-end eval: eval.json has the documented keys."""
    from winnow.proxy.evaluate import EvalConfig, run_eval

    ids, texts = web_docs
    cfg = EvalConfig(arms={"all": _text_arm(tmp_path / "all", ids, texts),
                           "half": _text_arm(tmp_path / "half", ids[::2], texts[::2])},
                     output=str(tmp_path / "eval"), pool_heldout_fraction=0.1, pool_tokens=5_000, seq_len=SEQ,
                     heldout={"ref": {"paths": [str(SHARED_DATA / "reference/speeches/*.jsonl")], "tokens": 5_000}},
                     vocab_size=600, flop_budget=2e10, baseline_budgets=[0.5, 1.0], seeds=[0, 1], n_evals=1,
                     batch_size=4, downstream={"piqa": 4, "data": str(SHARED_DATA / "eval")})
    run_eval(cfg, log=lambda *a: None)
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(report["heldout"]) == {"pool", "ref"}
    for s in report["heldout"].values():
        assert s["documents"] > 0 and s["tokens"] == sum(s["sources"].values())
        assert set(s["targets"]) == set(s["sources"]) and 0 < sum(s["targets"].values()) < s["tokens"]
    run = report["runs"][0]
    assert {"arm", "seed", "budget", "flops", "tokens", "final", "points", "final_by_source"} <= set(run)
    assert set(run["final"]) == {"pool", "ref"} and run["tokens"] > 0
    for name in ("pool", "ref"):                 # per-source losses average back to the set's loss
        per_source, targets = run["final_by_source"][name], report["heldout"][name]["targets"]
        assert set(per_source) == set(targets)
        weighted = sum(per_source[k] * targets[k] for k in targets) / sum(targets.values())
        assert weighted == pytest.approx(run["final"][name], rel=1e-6)
    arm = report["arms"]["half"]
    assert set(arm) == {"pool", "ref"}
    assert {"multiplier", "std", "per_seed", "net_multiplier", "status", "interval"} <= set(arm["pool"])
    assert len(arm["pool"]["per_seed"]) == 2 and arm["pool"]["std"] is not None
    assert set(report["downstream"]) == {"all", "half"}                      # the baseline is scored too
    assert report["downstream"]["all"]["piqa"]["items"] == 4
