"""Tokenize and pack: exact round trips for every strategy, outputs that read back, BM25 relatedness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import check_conservation, kept_rows, run, web_files

from winnow.pipeline.errors import ConfigError
from winnow.pipeline.shards import dictionary_columns, parquet_leaves
from winnow.tokenize.pack import PackParams, PackStage, pack_best_fit, split_long, unpack
from winnow.tokenize.tokenizer import load_tokenizer, tokenizer_hash, train_bpe
from winnow.tokenize.writers import read_megatron

SEQ = 256


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory, client):
    out = tmp_path_factory.mktemp("tok") / "out"
    cfg = {"input": {"paths": web_files(2), "shard_size_mb": 0.5}, "output": str(out),
           "stages": [{"normalize": {}}, {"tokenize": {"vocab_size": 2048, "train_docs": 2000}},
                      {"pack": {"seq_len": SEQ, "strategy": "best_fit"}}]}
    result = run(cfg, client)
    return out, result, cfg


def tokenized(out: Path) -> pa.Table:
    return kept_rows(out / "02-tokenize")


def test_bpe_training_is_deterministic_and_hub_names_are_refused(tmp_path):
    texts = [json.loads(line)["text"] for line in Path(web_files(1)[0]).read_text().rstrip("\n").split("\n")[:300]]
    a, b = train_bpe(texts, 600), train_bpe(texts, 600)
    assert tokenizer_hash(a) == tokenizer_hash(b) and a.get_vocab_size() == 600
    a.save(str(tmp_path / "tokenizer.json"))
    assert tokenizer_hash(load_tokenizer(tmp_path)) == tokenizer_hash(a)
    with pytest.raises(ConfigError, match="downloads nothing"):
        load_tokenizer("gpt2")


def test_pipeline_packs_exactly_and_writes_trainer_files(packed_run):
    out, result, _ = packed_run
    manifests = check_conservation(out)
    tok = tokenized(out)
    assert tok.schema.field("input_ids").type == pa.list_(pa.uint16())
    assert manifests[2]["tokenizer_hash"] and (out / "02-tokenize" / "tokenizer.json").exists()
    eos = manifests[2]["eos_id"]
    assert all(ids[-1] == eos for ids in tok.column("input_ids").to_pylist())

    packed = kept_rows(out / "03-pack")
    docs = unpack(packed)
    original = dict(zip(tok.column("id").to_pylist(), tok.column("input_ids").to_pylist(), strict=True))
    assert docs.keys() == original.keys()
    assert all(np.array_equal(docs[k], v) for k, v in original.items())

    meta = json.loads((out / "tokens" / "index.json").read_text())
    rows = np.memmap(out / "tokens" / "tokens.bin", dtype=meta["dtype"], mode="r").reshape(-1, meta["seq_len"])
    assert rows.shape == (packed.num_rows, SEQ)
    assert np.array_equal(rows, np.asarray(packed.column("input_ids").to_pylist()))
    segments = np.load(out / "tokens" / "segments.npy")
    assert segments[:, 2].sum() == sum(len(v) for v in original.values())

    megatron = read_megatron(out / "megatron" / "text_document")
    assert [m.tolist() for m in megatron] == [docs[k].tolist() for k in docs]
    assert megatron[0].dtype == np.uint16


def test_token_ids_are_written_without_a_parquet_dictionary(packed_run):
    """Integer columns inside lists (ids, masks) are written plain: their dictionary indices compressed
    worse (`input_ids` 17% larger, whole tokenize shards 9%). Every other column keeps its dictionary;
    the leaf names winnow computes are the ones Parquet gives its columns, nested types included."""
    out, _, _ = packed_run
    for stage in ("02-tokenize", "03-pack"):
        path = sorted((out / stage).glob("train-*.parquet"))[0]
        row_group = pq.ParquetFile(path).metadata.row_group(0)
        columns = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}
        schema = pq.read_schema(path)
        assert list(columns) == [leaf for leaf, _, _ in parquet_leaves(schema)]
        assert not columns["input_ids.list.element"].has_dictionary_page, stage
        assert all(column.has_dictionary_page for name, column in columns.items()
                   if name in dictionary_columns(schema)), stage
    nested = pa.table({"m": pa.array([{"x": "s", "y": [1]}]),
                       "mp": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())),
                       "ll": pa.array([[[1]]], pa.large_list(pa.list_(pa.int32()))),
                       "ls": pa.array([[{"a": 1, "b": "z"}]]), "f": pa.array([[1, 2]], pa.list_(pa.int8(), 2)),
                       "flag": pa.array([True]), "n": pa.array([3]),
                       "tensor": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ones((1, 2, 2), np.int32))})
    sink = pa.BufferOutputStream()
    pq.write_table(nested, sink)
    written = pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata.row_group(0)
    assert ([leaf for leaf, _, _ in parquet_leaves(nested.schema)]
            == [written.column(i).path_in_schema for i in range(written.num_columns)])
    assert dictionary_columns(nested.schema) == ["m.x", "mp.key_value.key", "ls.list.element.b", "n"]


def test_rerun_is_byte_identical_and_skips(packed_run, client):
    out, _, cfg = packed_run
    before = {p.name: p.read_bytes() for p in (out / "03-pack").glob("train-*.parquet")}
    again = run(cfg, client, force=True)
    assert {p.name: p.read_bytes() for p in (out / "03-pack").glob("train-*.parquet")} == before
    assert again.stages[-1].skipped == 0
    assert all(s.skipped == len(s.records) for s in run(cfg, client).stages)


@pytest.mark.parametrize("strategy", ["concat", "best_fit", "bm25"])
def test_every_strategy_round_trips_with_masks(packed_run, strategy):
    out, _, _ = packed_run
    shard = pq.read_table(sorted((out / "02-tokenize").glob("train-*.parquet"))[0])
    stage = PackStage(PackParams(seq_len=SEQ, strategy=strategy, bm25_buffer=64))
    packed, rejected = stage.apply(shard, 0)
    assert rejected.num_rows == 0 and stage.documents_in(packed) == shard.num_rows
    docs = unpack(packed)
    for doc_id, ids in zip(shard.column("id").to_pylist(), shard.column("input_ids").to_pylist(), strict=True):
        assert docs[doc_id].tolist() == ids
    for row in packed.to_pylist():
        seg = np.asarray(row["segment_ids"])
        mask = np.asarray(row["loss_mask"])
        starts = np.asarray(row["cu_seqlens"][:-1])
        assert len(row["input_ids"]) == SEQ and row["n_pad"] == int((seg == 0).sum())
        assert not mask[seg == 0].any() and not mask[starts].any()                 # padding, segment starts
        assert all(row["position_ids"][a] == 0 for a in starts)
    assert stage.apply(shard, 0)[0].equals(packed)                                  # deterministic for a seed
    if strategy == "concat":
        assert (np.asarray(packed.column("n_pad").to_pylist())[:-1] == 0).all()   # only the last row pads


def test_best_fit_matches_a_brute_force_packer():
    lengths = np.random.default_rng(1).integers(1, 700, size=400)

    def brute(lengths, seq_len):
        chunks = sorted(split_long(lengths, seq_len), key=lambda c: -c.length)
        rows, room = [], []
        for c in chunks:
            fits = [i for i, r in enumerate(room) if r >= c.length]
            if not fits:
                rows.append([c])
                room.append(seq_len - c.length)
                continue
            best = min(fits, key=lambda i: (room[i], i))
            rows[best].append(c)
            room[best] -= c.length
        return rows

    assert pack_best_fit(lengths, SEQ) == brute(lengths, SEQ)


def test_segment_cuts_never_split_a_pre_token():
    """The fast path cuts texts into segments and splits each (all of a batch's joined by NUL) with the
    GPT-2 pattern, or takes it whole when it is one pre-token as it stands: on real and on fuzzed text,
    the pieces must be those of the pattern on the whole text."""
    from itertools import chain

    import regex

    from winnow.tokenize.word_encoder import GPT2_PATTERN, JOINED_PATTERN, SINGLE_PRE_TOKEN, _segments

    texts = _real_texts() + ["a  b", " \n x", "x\u00a0 y", "end \t"] + _fuzzed_texts(3000)
    segments, per_text = _segments(pa.array(texts, pa.large_string()))
    parts = segments.to_pylist()
    assert per_text.sum() == len(parts) > 3 * len(texts) and "".join(parts) == "".join(texts)
    pattern, joined = regex.compile(GPT2_PATTERN), regex.compile(JOINED_PATTERN)
    one_by_one = [pattern.findall(part) for part in parts]
    ends = np.cumsum(per_text)
    for text, end, n in zip(texts, ends, per_text, strict=True):
        assert list(chain.from_iterable(one_by_one[end - n:end])) == pattern.findall(text), repr(text)
    assert joined.findall("\x00".join(parts)) == list(chain.from_iterable(p + ["\x00"] for p in one_by_one))[:-1]
    single = pc.match_substring_regex(segments, SINGLE_PRE_TOKEN).to_numpy(zero_copy_only=False)
    assert 0.3 < single.mean() < 1
    assert all(pieces == [part] for part, pieces, one in zip(parts, one_by_one, single, strict=True) if one)


def _fuzzed_texts(n: int) -> list[str]:
    """Short random strings over the characters where pre-token rules meet: letters, digits and symbols
    side by side, the apostrophe and the letters of the contractions ('s 't 're 've 'm 'll 'd), spaces,
    tabs, newlines, NBSP and ideographic spaces, accented and CJK letters, control bytes."""
    import random

    rng = random.Random(0)
    alphabet = list("aZ09'  \n\t\r.,;:!?()[]\"-_/\\@#$%&*+=<>|~`^{}") + \
        ["s", "t", "re", "ve", "m", "ll", "d", "\u00e9", "\u4e2d", "\u00a0", "\u3000", "\x7f", "\x1f", "\x0b"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_bm25_rows_are_more_related_than_concat(packed_run):
    from winnow.tokenize.metrics import row_relatedness

    out, _, _ = packed_run
    shard = pa.concat_tables(pq.read_table(p) for p in sorted((out / "02-tokenize").glob("train-*.parquet"))[:3])
    scores = {}
    for strategy in ("concat", "bm25"):
        packed, _ = PackStage(PackParams(seq_len=SEQ, strategy=strategy, bm25_buffer=1024)).apply(shard, 0)
        scores[strategy] = row_relatedness(packed, shard)
    assert scores["bm25"] > 1.3 * scores["concat"], scores


def test_eval_trains_directly_on_packed_output(packed_run, tmp_path):
    """`winnow eval` reads a pack stage as it is, with the tokenizer the run saved beside it."""
    from winnow.proxy.evaluate import EvalConfig, run_eval

    out, _, _ = packed_run
    cfg = EvalConfig(arms={"packed": str(out / "03-pack"), "documents": str(out / "01-normalize")},
                     output=str(tmp_path / "eval"), pool_heldout_fraction=0.0, seq_len=SEQ,
                     heldout={"held": {"paths": [web_files(3)[-1]], "max_docs": 20, "tokens": 5_000}},
                     flop_budget=2e10, baseline_budgets=[1.0], seeds=[0], n_evals=1, batch_size=4)
    report = run_eval(cfg, log=lambda *a: None)
    assert report["tokenizer_vocab"] == 2048                     # the run's tokenizer, not a new one
    assert report["unique_tokens"]["packed"] == report["unique_tokens"]["documents"] > 0
    assert set(report["arms"]) == {"documents"} and report["arms"]["documents"]["held"]["per_seed"]


def _real_texts() -> list[str]:
    """Multilingual web pages (one holds U+3EB7E, which the two regex engines class differently) and
    Common Crawl samples, plus real texts with the end-of-document token and an engine-differing
    letter (U+0558: a letter in `regex`'s Unicode, unassigned in Oniguruma's) spliced in."""
    from conftest import WEB

    texts = [json.loads(line)["text"] for name in ("html_extracted/trafilatura_pages-000.jsonl",
                                                   "cc_samples/cc_fixture_docs-000.jsonl")
             for line in (WEB / name).read_text().splitlines()[:100]]
    spliced = [t[:40] + "<|endoftext|>" + t[40:80] + "  <|endoftext|><|endoftext|>." + t[80:] for t in texts[:30]]
    return texts + spliced + [t[:25] + "\u0558ab \u0558" + t[25:] for t in texts[30:40]] + ["", " ", "<|endoftext|>"]


def test_word_encoder_gives_the_ids_of_tokenizer_encode_on_real_text(monkeypatch):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    import winnow.tokenize.word_encoder as word_encoder
    from winnow.tokenize.tokenize_stage import TokenizeParams, TokenizerState, TokenizeStage
    from winnow.tokenize.word_encoder import WordEncoder

    texts = _real_texts()
    tok = train_bpe(texts[:200], 1024)
    texts += _fuzzed_texts(2000)
    expected = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    assert any(0 in ids[1:] for ids in expected)   # the spliced EOS is split out as a token inside documents

    monkeypatch.setattr(word_encoder, "MAX_CACHED_WORDS", 2000)   # the cache restarts several times
    encoder = WordEncoder(tok, tok.to_str())
    assert encoder.fast
    for start in range(0, len(texts), 64):
        values, lengths = encoder.encode(texts[start:start + 64])
        assert lengths.tolist() == [len(ids) for ids in expected[start:start + 64]]
        assert values.tolist() == [i for ids in expected[start:start + 64] for i in ids]
    assert {"\u0558", "\U0003eb7e"} <= encoder._differs   # texts holding them went to tokenizers whole

    # through the stage, in small batches: each document's ids then EOS, in one list<uint16> column
    state = TokenizerState(tok.to_str(), "<|endoftext|>")
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    kept, _ = TokenizeStage(TokenizeParams(batch_size=100)).apply(table, state)
    assert kept.column("input_ids").type == pa.list_(pa.uint16())
    assert kept.column("input_ids").to_pylist() == [ids + [state.eos_id] for ids in expected]
    assert kept.column("n_tokens").to_pylist() == [len(ids) + 1 for ids in expected]

    # a slice of a large_string array (buffers shared, offset > 0), with the whitespace a segment cut must
    # respect: runs of spaces and newlines, tabs, NBSP and ideographic spaces beside ASCII ones, NUL,
    # texts that start or end in whitespace or hold nothing else
    edges = ["  lead", "trail  ", "a  b   c\n\n\nd \n e\t\tf", "x\u00a0 y \u00a0z\u3000 w", "nul\x00 here \x00",
             "\n", "\t \n ", "it's  'll 12  3.5 ?!  ok", "\u4e2d\u6587 \u4e2d  x",
             # encoded whole by tokenizers (an engine-differing letter): its own split, spaces and all
             "\u0558 a  b    c\n\n\n\n  d        e.  The  end,  \u0558ok"]
    column = pa.array(["pad"] * 3 + edges + texts[:40], pa.large_string()).slice(3)
    values, lengths = WordEncoder(tok, tok.to_str()).encode(column)
    assert lengths.tolist() == [len(tok.encode(t, add_special_tokens=False).ids) for t in edges + texts[:40]]
    assert values.tolist() == [i for t in edges + texts[:40] for i in tok.encode(t, add_special_tokens=False).ids]

    # merges need not stay inside pre-tokens: one that joins a letter to the space after it ("e" + "Ġ") applies
    # only where tokenizers encodes a text whole (the engine-differing letter) and never to a pre-token
    config = json.loads(tok.to_str())
    config["model"]["vocab"]["e\u0120"] = max(config["model"]["vocab"].values()) + 1
    config["model"]["merges"].insert(0, ["e", "\u0120"])
    crossing, unsplit = Tokenizer.from_str(json.dumps(config)), Tokenizer.from_str(json.dumps(config))
    unsplit.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    texts_with_spaces = [t for t in texts if "\u0558" in t] + edges
    expected = [crossing.encode(t, add_special_tokens=False).ids for t in texts_with_spaces]
    # (a text encoded without its split would get other ids)
    assert sum(ids != unsplit.encode(t, add_special_tokens=False).ids for t, ids in zip(texts_with_spaces, expected, strict=True)) >= 5
    values, lengths = WordEncoder(crossing, crossing.to_str()).encode(texts_with_spaces)
    assert values.tolist() == [i for ids in expected for i in ids]

    # a tokenizer outside the covered shape (a normalizer) is encoded by tokenizers itself
    tok.normalizer = normalizers.NFKC()
    other = WordEncoder(tok, tok.to_str())
    assert not other.fast
    values, lengths = other.encode(texts[:50])
    assert values.tolist() == [i for t in texts[:50] for i in tok.encode(t, add_special_tokens=False).ids]


def _apply_faults(texts: list[str], tokenizer_json: str, repeats: int) -> dict:
    """In a worker: the tokenize stage's apply on one shard `repeats` times; minor page faults of the last."""
    import os
    import resource

    from winnow.tokenize.tokenize_stage import TokenizeParams, TokenizerState, TokenizeStage

    stage, state = TokenizeStage(TokenizeParams()), TokenizerState(tokenizer_json, "<|endoftext|>")
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        kept, _ = stage.apply(table, state)
    return {"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "tokens": int(
        pc.sum(kept.column("n_tokens")).as_py()), "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def test_tokenize_in_a_dask_worker_keeps_its_freed_buffers():
    """A Dask worker runs with MALLOC_TRIM_THRESHOLD_=65536 (distributed's nanny), so glibc mmaps every buffer
    over 128 KiB and unmaps it when freed: the encoder's numpy id buffers (MBs per batch) fault in page by
    page on every batch. Measured on 1,000 web documents (the third apply: a warm encoder cache), three runs
    each: 15,400-15,700 minor faults per apply before, 5,300-6,400 with the heap retained while encoding and
    assembling the ids (pipeline/retained_heap.py); on the web sample the tokenize stage took 4.9-5.0 s before and 4.3-4.5 s
    after (bench/LOG.md, issue 25)."""
    from distributed import Client, LocalCluster

    texts = [json.loads(line)["text"] for f in web_files(3) for line in Path(f).read_text().splitlines()][:1000]
    tokenizer = train_bpe(texts, vocab_size=4096).to_str()
    # a worker of its own: how many pages the third apply faults in depends on what the process's heap
    # already holds, and the session's workers have run other tests (10,500 after the DataRater's, once)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        result = client.submit(_apply_faults, texts, tokenizer, 3, pure=False).result()
    assert result["malloc_trim_threshold"] == "65536"    # the setting that caused it is in force
    print(f"minor page faults per tokenize apply in a Dask worker: {result['faults']:,} ({result['tokens']:,} tokens)")
    assert result["faults"] < 10_000
