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


def _quoted_copy(text: str) -> str:
    """A held-out document as raw web or Usenet repeats it: upper-cased, re-wrapped every 9 words, quoted."""
    w = text.split()
    return "\n".join("> " + " ".join(w[i:i + 9]).upper() for i in range(0, len(w), 9))


def test_copies_of_heldout_documents_under_other_ids_never_train(tmp_path, web_docs):
    """A held-out document copied under a new id (re-cased, re-wrapped, quoted) is removed from every arm,
    text and packed, and counted per set; a document sharing only a 10-word phrase with one still trains."""
    from winnow.proxy.arms import held_by_id, read_arms, training_rows
    from winnow.proxy.evaluate import EvalConfig, eval_tokenizer, heldout_sets
    from winnow.proxy.overlap import heldout_overlap

    ids, texts = web_docs
    ref = str(SHARED_DATA / "reference/wikipedia/*.jsonl")
    ref_ids, ref_texts = read_documents(ref, 30)
    copies = {f"mirror-{n}": _quoted_copy(t) for n, t in enumerate(ref_texts)}        # copy of ref_ids[n]
    phrases = {f"phrase-{n}": f"{texts[n]}\n{' '.join(t.split()[20:30])}\n{texts[n + 1]}"
               for n, t in enumerate(ref_texts)}
    # 20 words of a reference document repeated in 20 web pages: common phrasing (a quoted line, a
    # footer), not a copy: an n-gram in more than 10 training documents is ignored (GPT-3's rule; 20
    # pages, so that more than 10 stay after the id rule holds some out)
    # (a word of its own between the two parts: web pages that end alike must not meet the quote in an n-gram)
    footers = {f"footer-{n}-{k}": f"{texts[k]}\nq{n}x{k}\n{' '.join(t.split()[40:60])}"
               for n, t in enumerate(ref_texts) for k in range(20)}
    arm_ids = ids + list(copies) + list(phrases) + list(footers)
    arm_texts = texts + list(copies.values()) + list(phrases.values()) + list(footers.values())
    cfg = EvalConfig(arms={"text": _text_arm(tmp_path / "text", arm_ids, arm_texts),
                           "packed": _packed_arm(tmp_path / "run", arm_ids, arm_texts, texts, 700)},
                     output=str(tmp_path / "eval"), pool_heldout_fraction=0.1, pool_tokens=10_000, seq_len=SEQ,
                     heldout={"ref": {"paths": [ref], "tokens": 15_000, "max_docs": 30}})
    arms = read_arms(cfg.arms)
    tokenizer = eval_tokenizer(cfg, arms, "text")
    sets = heldout_sets(cfg, arms["text"], tokenizer, log=lambda *a: None)
    sampled = set(sets["ref"].ids)
    assert 0 < len(sampled) < len(ref_ids)                  # some ref documents are held out, some are not
    assert len(sets["ref"].texts) == len(sets["ref"].ids) and len(sets["pool"].texts) == len(sets["pool"].ids)
    excluded = {d for s in sets.values() for d in s.ids}
    held = held_by_id(excluded, cfg.pool_heldout_fraction)
    overlap = heldout_overlap(arms, {k: s.texts for k, s in sets.items()}, tokenizer, held)
    copied = {f"mirror-{n}" for n, d in enumerate(ref_ids) if d in sampled and not held(f"mirror-{n}")}
    assert copied
    for name in ("text", "packed"):
        removed = overlap.by_set["ref"][name]
        assert removed == copied, name                      # exactly the copies of sampled documents
        rows = training_rows(arms[name], tokenizer, SEQ, excluded, cfg.pool_heldout_fraction, None,
                             copies=overlap.by_arm[name])
        trained = {d for row in rows.doc_ids for d in row}
        assert not trained & copied, name
        assert {p for p in phrases if not held(p)} <= trained, name        # a shared phrase is not a copy
        assert {f for f in footers if not held(f)} <= trained, name        # nor a line many documents share
        assert {f"mirror-{n}" for n, d in enumerate(ref_ids) if d not in sampled} - {d for d in copies if held(d)} \
            <= trained, name                                # copies of documents no set holds still train
    assert overlap.removed_from_training("ref") == len(copied)
    assert overlap.removed_by_arm("ref") == {"text": len(copied), "packed": len(copied)}
    assert overlap.common["ref"] > 0


def test_a_text_arm_with_loss_masks_is_refused(tmp_path, web_docs):
    """A `prune` stage folder (rows with `masked_spans`) read as a text arm would train on its masked tokens."""
    from winnow.proxy.arms import read_arms

    ids, texts = web_docs
    folder = tmp_path / "04-prune"
    folder.mkdir()
    spans = [[[0, min(40, len(t))]] for t in texts[:20]]                  # the first 40 characters are no target
    pq.write_table(pa.table({"id": ids[:20], "text": texts[:20], "masked_spans": pa.array(spans, pa.list_(
        pa.list_(pa.int32())))}), folder / "train-00000.parquet")
    with pytest.raises(ConfigError, match=r"arms\.pruned: .*masked_spans.*add `tokenize` and `pack`") as err:
        read_arms({"pruned": str(folder)})
    assert err.value.key == "arms.pruned"
    plain = _text_arm(tmp_path / "plain", ids[:20], texts[:20])              # the same rows without masks: read
    assert read_arms({"plain": plain})["plain"].ids == ids[:20]


def test_an_interval_only_when_every_seed_is_interpolated():
    """A seed whose loss the baseline never reached contributes its cap (a lower bound): the spread of capped
    values is too small, so no std or interval; the note names the seeds that bound the mean."""
    curve = ((0.5, 1e12, 4.0), (1.0, 2e12, 3.5), (2.0, 4e12, 3.2))
    runs = [{"arm": "base", "seed": s, "budget": b, "flops": f, "tokens": 0, "final": {"s": loss}}
            for s in (0, 1, 2) for b, f, loss in curve]
    cur = {0: 3.35, 1: 3.4, 2: 3.3}
    runs += [{"arm": "cur", "seed": s, "budget": 1.0, "flops": 2e12, "tokens": 1, "final": {"s": loss}}
             for s, loss in cur.items()]
    every = arm_summary(runs, "cur", "base", ["s"], CurationCost())["s"]
    assert every["status"] == ["interpolated"]
    assert every["std"] > 0 and every["interval"][0] < every["multiplier"] < every["interval"][1]
    assert every["net_interval"] is not None and every["note"] == "interpolated"
    # seeds 1 and 2 beat the baseline's largest run: their multipliers are capped at 4e12 / 2e12 = 2
    for r in runs:
        if r["arm"] == "cur" and r["seed"] in (1, 2):
            r["final"]["s"] = 3.0
    bounded = arm_summary(runs, "cur", "base", ["s"], CurationCost())["s"]
    assert [p["multiplier"] for p in bounded["per_seed"]][1:] == pytest.approx([2.0, 2.0])
    assert bounded["std"] is None and bounded["interval"] is None and bounded["net_interval"] is None
    assert "seeds 1, 2" in bounded["note"] and "lower bound" in bounded["note"]
    assert every["bounded_seeds"] == [] and bounded["bounded_seeds"] == [1, 2]
    runs[-3]["final"]["s"] = 4.5                                            # seed 0 now below the smallest run
    mixed = arm_summary(runs, "cur", "base", ["s"], CurationCost())["s"]
    assert mixed["interval"] is None and "seeds 1, 2 beyond" in mixed["note"] and "seeds 0 below" in mixed["note"]


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


def test_eval_json_schema(tmp_path, web_docs, one_thread):
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
    assert len(arm["pool"]["per_seed"]) == 2
    # std and interval only when both seeds are interpolated
    interpolated = all(p["status"] == "interpolated" for p in arm["pool"]["per_seed"])
    assert (arm["pool"]["std"] is not None) == interpolated == (arm["pool"]["interval"] is not None)
    for name, s in report["heldout"].items():   # copies of held-out documents under other ids, counted per set
        assert isinstance(s["removed_from_training"], int) and set(s["removed_from_training_by_arm"]) == {"all", "half"}
        assert s["removed_from_training"] >= max(s["removed_from_training_by_arm"].values()), name
    assert set(report["downstream"]) == {"all", "half"}                      # the baseline is scored too
    assert report["downstream"]["all"]["piqa"]["items"] == 4
    assert set(report["downstream_overlap"]["piqa"]) == {"all", "half"}                # every arm checked


def test_training_documents_holding_a_scored_downstream_item_are_reported(tmp_path, web_docs):
    """eval.json's downstream_overlap: which arms train on items HellaSwag/PIQA then score, by the
    decontaminate stage's n-gram rule (re-cased and re-wrapped pastes found, a short phrase not)."""
    from winnow.proxy.arms import read_arms
    from winnow.proxy.downstream import task_values
    from winnow.proxy.overlap import downstream_overlap

    ids, texts = web_docs
    data = SHARED_DATA / "eval"
    tasks = {"hellaswag": task_values(data, "hellaswag", 40), "piqa": task_values(data, "piqa", 40)}
    ctx = tasks["hellaswag"][7][0]
    p_item = next(i for i, values in enumerate(tasks["piqa"]) if 8 <= len(values[0].split()) < 13)
    goal = tasks["piqa"][p_item][0]       # shorter than 13 words: matched whole
    assert len(ctx.split()) >= 13
    planted = {"paste-h": f"{texts[0]}\n{ctx.upper()}\n{texts[1]}",
               "paste-p": f"{texts[2]}\n> " + "\n> ".join(goal.split()) + f"\n{texts[3]}",
               "phrase": f"{texts[4]}\n{' '.join(ctx.split()[:6])}\n{texts[5]}"}
    clean = _text_arm(tmp_path / "clean", ids[:100], texts[:100])
    dirty = _text_arm(tmp_path / "dirty", ids[:100] + list(planted), texts[:100] + list(planted.values()))
    found = downstream_overlap(read_arms({"clean": clean, "dirty": dirty}), tasks, None, held=lambda d: False)
    assert found["hellaswag"]["clean"]["items"] == 0 and found["piqa"]["clean"]["items"] == 0
    assert found["hellaswag"]["dirty"] == {"documents": 1, "items": 1, "leaked_items": [7]}
    assert found["piqa"]["dirty"] == {"documents": 1, "items": 1, "leaked_items": [p_item]}
