"""Model-based quality filtering: the corpus-wide cut, the three classifier stages, model reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO, SHARED_DATA, check_conservation, kept_rows, rejected_rows, run, web_files

from winnow.filters import percentile

REFERENCE = str(SHARED_DATA / "reference" / "wikipedia" / "*.jsonl")


def kept_fraction_by_sketch(scores: np.ndarray, hashes: np.ndarray, n_shards: int, keep_top: float) -> float:
    bounds = np.linspace(0, len(scores), n_shards + 1).astype(int)
    shards = [(scores[a:b], hashes[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    merged = percentile.merge([percentile.sketch(s, h) for s, h in shards])
    key = percentile.key_at(merged, 1 - keep_top)
    return sum(int(percentile.at_or_above(s, h, key).sum()) for s, h in shards) / len(scores)


@pytest.mark.parametrize("n_shards", [1, 3, 40, 400])
def test_percentile_cut_holds_for_any_sharding_and_ties(n_shards):
    rng = np.random.default_rng(n_shards)
    # 300k rows with heavy ties (scores on a 0.01 grid, 5% missing) in shards of 750-300k rows
    scores = np.round(rng.beta(0.5, 3, size=300_000), 2)
    scores[rng.random(len(scores)) < 0.05] = np.nan
    hashes = rng.integers(0, 2**63, size=len(scores), dtype=np.uint64)
    for keep_top in (0.1, 0.3, 0.9):
        assert abs(kept_fraction_by_sketch(scores, hashes, n_shards, keep_top) - keep_top) < 0.002


def test_percentile_cut_is_exact_on_small_shards():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=5000).astype(float)   # three values only: the id hash splits ties
    hashes = rng.integers(0, 2**63, size=len(scores), dtype=np.uint64)
    assert kept_fraction_by_sketch(scores, hashes, 10, 0.3) == pytest.approx(0.3, abs=1 / 5000)


def test_fasttext_keeps_top_fraction_independent_of_shards_and_workers(tmp_path, client):
    from distributed import Client, LocalCluster

    files = web_files(3)
    stage = {"fasttext_quality": {"positives": {"paths": [REFERENCE]}, "keep_top": 0.3,
                                  "train_args": {"bucket": 100_000}}}

    def cfg(out, shard_mb):
        return {"input": {"paths": files, "shard_size_mb": shard_mb}, "output": str(out), "stages": [stage]}

    run(cfg(tmp_path / "a", 0.25), client)
    # one worker that advertises a GPU: model tasks ask for it (and run on the CPU here, device auto)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"GPU": 1}, silence_logs=40) as cluster, Client(cluster) as one:
        run(cfg(tmp_path / "b", 4), one)
    manifests = {k: check_conservation(tmp_path / k) for k in "ab"}
    assert len(manifests["a"][0]["shards"]) > 3 * len(manifests["b"][0]["shards"])
    kept = {k: kept_rows(tmp_path / k / "01-fasttext_quality") for k in "ab"}
    total = manifests["a"][0]["totals"]["rows_out"]
    assert abs(kept["a"].num_rows / total - 0.3) <= 0.01
    assert set(kept["a"].column("id").to_pylist()) == set(kept["b"].column("id").to_pylist())
    rej = rejected_rows(tmp_path / "a" / "01-fasttext_quality")
    assert set(rej.column("reason").to_pylist()) == {"fasttext_score_below_band"}
    assert min(kept["a"].column("fasttext_score").to_pylist()) >= max(rej.column("fasttext_score").to_pylist())

    manifest = json.loads((tmp_path / "a" / "01-fasttext_quality" / "_manifest.json").read_text())
    assert manifest["scoring_flops"] > 0 and manifest["training_flops"] > 0
    assert manifest["positives"] > 20 and manifest["negatives"] == manifest["positives"]
    # the saved model scores another run the same way, without training
    reuse = {"fasttext_quality": {"model": manifest["model"], "keep_top": 0.3}}
    run({**cfg(tmp_path / "c", 1), "stages": [reuse]}, client)
    c = json.loads((tmp_path / "c" / "01-fasttext_quality" / "_manifest.json").read_text())
    assert c["training_flops"] == 0 and "positives" not in c
    assert set(kept_rows(tmp_path / "c" / "01-fasttext_quality").column("id").to_pylist()) == \
        set(kept["a"].column("id").to_pylist())


def test_fasttext_separates_heldout_reference_from_web(tmp_path):
    from sklearn.metrics import roc_auc_score

    from winnow.pipeline.documents import read_documents
    from winnow.raters.fasttext_rater import FastTextScorer, train_fasttext

    _, pos = read_documents([REFERENCE], heldout=0.3, side="train")
    _, pos_test = read_documents([REFERENCE], heldout=0.3, side="heldout")
    _, web = read_documents(web_files(4))
    neg, neg_test = web[: len(pos)], web[len(pos):len(pos) + 200]
    model = train_fasttext(pos, neg, str(tmp_path / "m.bin"), bucket=100_000)
    scores = FastTextScorer(model).score(pos_test + neg_test)
    assert roc_auc_score([1] * len(pos_test) + [0] * len(neg_test), scores) > 0.9


def test_embedding_quality_reuses_stored_embeddings(tmp_path, client):
    from winnow.pipeline.documents import read_documents

    ids, texts = read_documents(web_files(1), 80)
    lines = [json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)]
    (tmp_path / "in.jsonl").write_text("".join(lines))
    out = tmp_path / "out"
    quality = {"positives": {"paths": [REFERENCE], "max_docs": 40}, "keep_top": 0.5}
    head = str(out / "02-embedding_quality" / "head.npz")   # the second stage rescores with the same head
    run({"input": {"paths": [str(tmp_path / "in.jsonl")], "shard_size_mb": 0.05}, "output": str(out),
         "stages": [{"semantic_dedup": {"eps": 0.01}}, {"embedding_quality": quality},
                    {"embedding_quality": {"model": head, "keep_top": 0.5, "reuse_embeddings": False}}]}, client)
    check_conservation(out)
    reused = json.loads((out / "02-embedding_quality/_manifest.json").read_text())
    fresh = json.loads((out / "03-embedding_quality/_manifest.json").read_text())
    rows = reused["documents"]
    assert reused["scoring_flops"] == 2.0 * 384 * rows          # the head only: no embedding pass
    assert fresh["scoring_flops"] > 1e4 * reused["scoring_flops"] / 2
    a = kept_rows(out / "02-embedding_quality")
    assert abs(a.num_rows - rows / 2) <= 1
    from_stored = dict(zip(a.column("id").to_pylist(), a.column("embedding_score").to_pylist(), strict=True))
    b = pa.concat_tables([kept_rows(out / "03-embedding_quality").select(["id", "embedding_score"]),
                          rejected_rows(out / "03-embedding_quality").select(["id", "embedding_score"])])
    from_text = dict(zip(b.column("id").to_pylist(), b.column("embedding_score").to_pylist(), strict=True))
    assert from_text.keys() == from_stored.keys()
    assert max(abs(from_text[k] - from_stored[k]) for k in from_text) < 1e-4


def test_perplexity_band_prefers_reference_like_text(tmp_path, client):
    from winnow.pipeline.documents import read_documents

    _, held = read_documents([REFERENCE], 40, heldout=0.2, side="heldout")
    _, web = read_documents(web_files(1), 160)
    docs = [{"id": f"ref{i}", "text": t} for i, t in enumerate(held)] + \
        [{"id": f"web{i}", "text": t} for i, t in enumerate(web)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    run({"input": {"paths": [str(tmp_path / "in.jsonl")], "shard_size_mb": 0.1}, "output": str(out),
         "stages": [{"perplexity_quality": {"positives": {"paths": [REFERENCE]}, "band": [0.0, 0.5],
                                            "reference": "trained", "flop_budget": 3e11}}]}, client)
    check_conservation(out)
    kept = kept_rows(out / "01-perplexity_quality")
    rej = rejected_rows(out / "01-perplexity_quality")
    assert abs(kept.num_rows - len(docs) / 2) <= 1
    assert max(kept.column("perplexity").to_pylist()) <= min(rej.column("perplexity").to_pylist())
    assert set(rej.column("reason").to_pylist()) == {"perplexity_above_band"}
    ref_kept = sum(1 for i in kept.column("id").to_pylist() if i.startswith("ref"))
    assert ref_kept / len(held) > 0.8   # held-out reference text is what the reference LM finds likely
    manifest = json.loads((out / "01-perplexity_quality/_manifest.json").read_text())
    assert manifest["training_flops"] >= 3e11 and manifest["scoring_flops"] > 0


def test_perplexity_scorer_reads_a_local_hugging_face_causal_lm(tmp_path):
    """`model:` may be any local causal LM folder; here a small Llama saved from config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from winnow.pipeline.documents import read_documents
    from winnow.raters.perplexity_rater import PerplexityScorer
    from winnow.tokenize.tokenizer import EOS, train_bpe

    _, texts = read_documents([REFERENCE], 30)
    PreTrainedTokenizerFast(tokenizer_object=train_bpe(texts, 512), eos_token=EOS).save_pretrained(tmp_path)
    LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    scorer = PerplexityScorer(str(tmp_path), "cpu", max_tokens=64)
    scores = scorer.score(texts[:5] + ["", "a"])
    assert np.all(np.isfinite(scores[:5])) and np.all(scores[:5] > 1)
    assert np.isinf(scores[5])          # nothing to predict in an empty text
    assert scorer.flops > 0


def test_quality_stage_after_everything_was_dropped(tmp_path, client):
    """A filter before it kept nothing: the quality stage trains nothing and reports zero documents."""
    out = tmp_path / "out"
    run({"input": {"paths": web_files(1)}, "output": str(out),
         "stages": [{"heuristics": {"gopher_quality": {"min_doc_words": 10**9}}},
                    {"fasttext_quality": {"positives": {"paths": [REFERENCE]}, "keep_top": 0.3}}]}, client)
    manifests = check_conservation(out)
    assert manifests[-1]["totals"]["rows_in"] == 0 and manifests[-1]["documents"] == 0
    import datasets

    assert datasets.load_from_disk(str(out / "dataset")).num_rows == 0   # the run's dataset is empty, not absent


def test_gpu_worker_layout_takes_the_model_tasks(tmp_path):
    """engine.gpu_workers adds one worker advertising {GPU: 1} beside the CPU workers; the quality
    stage's training and scoring tasks ask for it (they run on the CPU here: device auto)."""
    from distributed import get_task_stream

    from winnow.pipeline.cluster import cluster_client
    from winnow.pipeline.config import EngineConfig, resolve
    from winnow.pipeline.run import run_pipeline

    with cluster_client(EngineConfig(n_workers=1, gpu_workers=1, progress=False)) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        gpu = [addr for addr, w in workers.items() if w.get("resources")]
        assert len(workers) == 2 and len(gpu) == 1 and workers[gpu[0]]["resources"] == {"GPU": 1}
        cfg = resolve({"input": {"paths": web_files(2), "shard_size_mb": 0.1}, "output": str(tmp_path / "out"),
                       "engine": {"progress": False},
                       "stages": [{"fasttext_quality": {"positives": {"paths": [REFERENCE]}, "keep_top": 0.5,
                                                        "train_args": {"bucket": 50_000}}}]})
        with get_task_stream(client) as stream:
            run_pipeline(cfg, client=client)
        model_tasks = [t for t in stream.data if t["key"].startswith(("_train", "_score_shard"))]
        assert model_tasks and {t["worker"] for t in model_tasks} == set(gpu)
    manifests = check_conservation(tmp_path / "out")
    assert abs(manifests[-1]["totals"]["rows_out"] / manifests[-1]["totals"]["rows_in"] - 0.5) <= 0.01


def test_default_perplexity_reference_tells_word_salad_from_prose():
    """The pretrained default (SmolLM2-135M) scores prose below the same words shuffled: an n-gram
    classifier cannot see word order, a language model does."""
    from winnow.pipeline.documents import read_documents
    from winnow.raters.corrupt import roc_auc
    from winnow.raters.perplexity_rater import PerplexityScorer
    from winnow.raters.reference_lm import default_reference

    _, texts = read_documents([REFERENCE], 16)
    prose = [" ".join(t.split()[:100]) for t in texts]
    rng = np.random.default_rng(0)
    salad = [" ".join(rng.permutation(p.split())) for p in prose]
    scores = PerplexityScorer(default_reference(), "cpu", max_tokens=128).score(prose + salad)
    assert roc_auc(-scores, np.array([True] * len(prose) + [False] * len(salad))) >= 0.95


def test_fasttext_model_does_not_depend_on_the_callers_heap(tmp_path):
    """fastText 0.9.2 leaves 9/10 of its input matrix as malloc returned it. A caller whose heap holds
    garbage (MALLOC_PERTURB_=165 fills every allocation with 0x5a) must still get the model a clean
    caller gets, byte for byte; trained in the caller's process it got a different model (or NaN)."""
    import hashlib
    import json

    from winnow.pipeline.documents import read_documents

    _, pos = read_documents([REFERENCE], 60)
    _, web = read_documents(web_files(1), 60)
    (tmp_path / "texts.json").write_text(json.dumps([pos, web]))
    code = ("import json, sys\n"
            "from winnow.raters.fasttext_rater import train_fasttext\n"
            "pos, web = json.load(open(sys.argv[1]))\n"
            "train_fasttext(pos, web, sys.argv[2], seed=3, bucket=20_000)\n")
    digests = []
    for name, perturb in (("clean", ""), ("dirty", "165")):
        env = {**os.environ, "MALLOC_PERTURB_": perturb}
        model = tmp_path / f"{name}.bin"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "texts.json"), str(model)], env=env,
                       check=True, cwd=REPO)
        digests.append(hashlib.sha256(model.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_positives_where_takes_rows_of_the_pool_and_names_what_is_wrong(tmp_path, client):
    """`positives.where` trains on the pool's own rows (here: reference documents mixed into web
    pages, marked by a column); those rows are never negatives, and a bad `where` says which column."""
    from pydantic import ValidationError

    from winnow.filters.fasttext_quality import FastTextParams
    from winnow.pipeline.documents import in_heldout_slice, read_documents

    with pytest.raises(ValidationError, match="exactly one of `paths`"):
        FastTextParams(positives={"paths": [REFERENCE], "where": {"kind": "wiki"}}, keep_top=0.5)
    with pytest.raises(ValidationError, match="exactly one of `paths`"):
        FastTextParams(positives={}, keep_top=0.5)
    ids, texts = read_documents([REFERENCE], 150)
    _, web = read_documents(web_files(2), 300)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"ref-{i}", "text": t, "kind": "wiki"}) + "\n" for i, t in zip(ids, texts, strict=True))
                    + "".join(json.dumps({"id": f"web-{i}", "text": t, "kind": "web"}) + "\n" for i, t in enumerate(web)))
    stage = {"fasttext_quality": {"positives": {"where": {"kind": "wiki"}}, "keep_top": 0.5,   # 225 of 450 rows
                                  "train_args": {"bucket": 20_000}}}
    run({"input": {"paths": [str(pool)]}, "output": str(tmp_path / "out"), "stages": [stage]}, client)
    manifest = check_conservation(tmp_path / "out")[1]
    pool_rows = kept_rows(tmp_path / "out" / "00-ingest")
    wiki = [i for i, k in zip(pool_rows.column("id").to_pylist(), pool_rows.column("kind").to_pylist(), strict=True)
            if k == "wiki"]
    assert manifest["positives"] == sum(not in_heldout_slice(i, 0.2) for i in wiki) and manifest["negatives"] > 0
    kept = kept_rows(tmp_path / "out" / "01-fasttext_quality")
    assert kept.column("kind").to_pylist().count("wiki") >= 0.9 * len(wiki)   # the reference outranks the web
    bad = {"fasttext_quality": {"positives": {"where": {"source": "wiki"}}, "keep_top": 0.3}}
    with pytest.raises(Exception, match="no column 'source'"):
        run({"input": {"paths": [str(pool)]}, "output": str(tmp_path / "bad"), "stages": [bad]}, client)
    everything = {"fasttext_quality": {"positives": {"where": {"kind": ["wiki", "web"]}}, "keep_top": 0.3}}
    with pytest.raises(Exception, match="selects every row of the pool"):
        run({"input": {"paths": [str(pool)]}, "output": str(tmp_path / "all"), "stages": [everything]}, client)


def _weak_fasttext(tmp_path, client, name: str, **stage) -> tuple[dict, int]:
    """A fastText stage whose classifier barely trains: 25 short positives at epoch 6, lr 0.1 leave every
    score within 0.002 of 0.5. Returns its manifest and the pool's row count."""
    from winnow.pipeline.documents import read_documents

    def head(text: str) -> str:   # one training line per document, as short docstrings give
        return " ".join(text.split()[:60])

    positives = tmp_path / "positives.jsonl"
    positives.write_text("".join(json.dumps({"text": head(t)}) + "\n" for t in read_documents([REFERENCE], 25)[1]))
    pool = tmp_path / "pool.jsonl"
    web = read_documents(web_files(1), 120)[1]
    pool.write_text("".join(json.dumps({"text": head(t)}) + "\n" for t in web))
    quality = {"positives": {"paths": [str(positives)], "heldout_fraction": 0}, "keep_top": 0.5,
               "train_args": {"bucket": 20_000, "epoch": 6, "lr": 0.1}, **stage}
    run({"input": {"paths": [str(pool)]}, "output": str(tmp_path / name), "stages": [{"fasttext_quality": quality}]},
        client)
    return check_conservation(tmp_path / name)[1], len(web)


def test_flat_scores_keep_everything_and_say_what_to_change(tmp_path, client):
    """Scores all within 0.01 rank on noise: the stage keeps every row, rejects none, and the manifest's
    `flat_scores` (and the funnel's warning) states the spread and advises beyond this config's own
    epoch and lr (the old text told a run at epoch 50, lr 1.0 to raise them to 25 and 0.5)."""
    from rich.console import Console

    from winnow.pipeline.report import render_funnel

    manifest, rows = _weak_fasttext(tmp_path, client, "weak")
    flat = manifest["flat_scores"]
    lo, hi = manifest["score_range"]
    assert flat["spread"] == pytest.approx(hi - lo) and flat["spread"] < 0.01
    assert flat["kept_all"] is True
    assert manifest["totals"]["rows_out"] == rows and manifest["totals"]["rejected"] == 0
    assert kept_rows(tmp_path / "weak" / "01-fasttext_quality").num_rows == rows
    message = flat["message"]
    assert manifest["warnings"] == [message]
    assert f"spread {flat['spread']:.3g}" in message and "kept all" in message
    assert "epoch 6, lr 0.1" in message and "epoch above 6" in message and "lr above 0.1" in message
    assert "25 and 0.5" not in message
    console = Console(record=True, width=400)
    render_funnel(tmp_path / "weak", console)
    assert "barely trained" in console.export_text()


def test_flat_scores_cut_anyway_when_allowed(tmp_path, client):
    manifest, rows = _weak_fasttext(tmp_path, client, "allowed", allow_flat_scores=True)
    flat = manifest["flat_scores"]
    assert flat["kept_all"] is False and flat["spread"] < 0.01 and "cut on noise" in flat["message"]
    assert abs(manifest["totals"]["rows_out"] - rows / 2) <= 1


def test_a_classifier_that_trained_gives_no_flat_scores_warning(tmp_path, client):
    manifest, rows = _weak_fasttext(tmp_path, client, "strong", train_args={"bucket": 20_000, "epoch": 25, "lr": 0.5})
    assert "flat_scores" not in manifest and "warnings" not in manifest
    assert abs(manifest["totals"]["rows_out"] - rows / 2) <= 1


def test_no_curation_model_trains_on_a_document_an_evaluation_uses(tmp_path, client):
    """Every training sample (fastText's positives and negatives, the DataRater's pool sample) leaves out
    `winnow eval`'s pool slice (in_eval_pool_slice, 5% by default) and the held-out slice of the positives
    or target, also where those documents sit in the pool under the same ids. The old sample drew
    negatives and the rater's pool from the whole pool, and `where` positives with heldout_fraction 0
    from all selected rows."""
    import pyarrow.parquet as pq

    from winnow.filters.datarater import DataRaterParams, DataRaterStage
    from winnow.filters.fasttext_quality import FastTextParams, FastTextQualityStage
    from winnow.pipeline.documents import in_eval_pool_slice, in_heldout_slice, read_documents
    from winnow.pipeline.stage import Context, ShardRef

    _, ref = read_documents([REFERENCE], 120)
    _, web = read_documents(web_files(1), 240)
    docs = [(f"ref-{i}", f"{t} ref-{i}", "wiki") for i, t in enumerate(ref)] + \
        [(f"web-{i}", f"{t} web-{i}", "web") for i, t in enumerate(web)]   # the id in the text: texts name their row
    shards = []
    for k in range(2):
        part = docs[k::2]
        path = tmp_path / f"part-{k}.parquet"
        pq.write_table(pa.table({"id": [d[0] for d in part], "text": [d[1] for d in part],
                                 "kind": [d[2] for d in part]}), path)
        shards.append(ShardRef(f"part-{k}", str(path), f"fp{k}"))
    target = tmp_path / "target.jsonl"   # the reference rows again, under their pool ids
    target.write_text("".join(json.dumps({"id": d[0], "text": d[1]}) + "\n" for d in docs if d[2] == "wiki"))
    ctx = Context(client, 0, str(tmp_path / "work"))
    id_of = {d[1]: d[0] for d in docs}
    pool_slice = [d[0] for d in docs if in_eval_pool_slice(d[0])]
    target_slice = [d[0] for d in docs if d[2] == "wiki" and in_heldout_slice(d[0], 0.2)]
    assert len(pool_slice) >= 5 and len(target_slice) >= 10     # the check is not vacuous

    def trained_ids(stage) -> list[str]:
        pos, neg = stage.training_texts(shards, len(docs), ctx)
        return [id_of[t] for t in pos + neg]

    fasttext = FastTextQualityStage(FastTextParams(positives={"where": {"kind": "wiki"}, "heldout_fraction": 0},
                                                   negatives=10_000, keep_top=0.5))
    seen = trained_ids(fasttext)
    assert not set(seen) & set(pool_slice)
    assert len(seen) == len(docs) - len(pool_slice)             # nothing else is left out
    rater = DataRaterStage(DataRaterParams(target={"paths": [str(target)]}, pool_docs=10_000, keep_top=0.5))
    seen = trained_ids(rater)
    assert not set(seen) & (set(pool_slice) | set(target_slice))
    assert any(i.startswith("web-") for i in seen) and any(i.startswith("ref-") for i in seen)
    own_slice = DataRaterStage(DataRaterParams(pool_docs=10_000, keep_top=0.5))
    assert not set(trained_ids(own_slice)) & set(pool_slice)
