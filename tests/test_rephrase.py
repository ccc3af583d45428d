"""The `rephrase` stage: real generation with the SmolLM2 GGUF, a misbehaving OpenAI-compatible server,
the faithfulness guard and the chunker."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import SHARED_DATA, WEB, check_conservation, kept_rows, rejected_rows, run

from winnow.synth.chunking import count_tokens, split_chunks
from winnow.synth.guard import GuardConfig, check, coverage, negation_changed

SECRET = "sk-winnow-test-5f3a9c1e77d24b"


def short_docs(n: int, lo: int = 40, hi: int = 250) -> list[dict]:
    """`n` real web documents that make one chunk each (between lo and hi tokens)."""
    docs = []
    for path in sorted(WEB.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            if lo <= count_tokens(doc["text"]) <= hi and "\n\n" not in doc["text"]:
                docs.append({"id": f"doc-{len(docs):03d}", "text": doc["text"]})
                if len(docs) == n:
                    return docs
    raise AssertionError("not enough short web documents")


def write_jsonl(docs: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


# chunking and guard ---------------------------------------------------------------------------------

def test_chunks_respect_the_limit_and_cut_at_boundaries():
    text = "\n\n".join(
        " ".join(f"Sentence {p}.{s} has some words in it." for s in range(30)) for p in range(4))
    chunks = split_chunks(text, max_tokens=100)
    assert all(count_tokens(c) <= 100 for c in chunks)
    assert all(c.endswith(".") for c in chunks), "a chunk was cut mid-sentence"
    assert " ".join(chunks).split() == text.split(), "chunks must cover the text exactly, in order"
    # one sentence longer than the limit is cut between tokens, still within the limit
    long = "word " * 450
    assert [count_tokens(c) for c in split_chunks(long, 200)] == [200, 200, 50]


CHUNK = ("The Alder Street bridge opened in 1911 and carried trams until 1958. Engineers from Portland "
         "rebuilt its deck in 1972, and the city lists it as a landmark.")
GOOD = ("Opened in 1911, the Alder Street bridge served trams until 1958; its deck was rebuilt by "
        "engineers from Portland in 1972, and the city lists it as a landmark.")


@pytest.mark.parametrize("rewrite, style, reason", [
    (GOOD, "wiki", None),
    ("Sure! Here is the paraphrase:\n" + GOOD, "wiki", None),
    ("", "wiki", "empty"),
    ("I'm sorry, but I cannot rewrite this passage.", "wiki", "refusal"),
    ("<the instruction>", "wiki", "echo_instruction"),
    (CHUNK, "wiki", "echo_chunk"),
    ("A bridge.", "wiki", "length_ratio"),
    (GOOD, "qa", "qa_format"),
    (GOOD.replace("1972", "1974"), "wiki", "new_number"),
    (GOOD.replace("engineers from Portland", "engineers led by Maria Vasquez"), "wiki", "new_name"),
    ("Question: What does the question ask about the answer it gives?\nAnswer: The question asks what the "
     "answer says about questions and asking.", "qa", "unsupported"),
    ("Question: When did the Alder Street bridge open?\nAnswer: In 1911; trams used it until 1958.", "qa", None),
])
def test_guard_reasons(rewrite, style, reason):
    from winnow.synth.prompts import INSTRUCTIONS

    if rewrite == "<the instruction>":
        rewrite = INSTRUCTIONS[style]
    verdict = check(rewrite, CHUNK, style, INSTRUCTIONS[style], GuardConfig())
    assert verdict.reason == reason, verdict
    if reason is None:
        assert not verdict.text.lower().startswith("sure")


NEGATOR = re.compile(r"^(?:not|no|never|none|nobody|nothing|neither|nor|cannot|without|\w+n['\u2019]t)$", re.I)


def is_negator(word: str) -> bool:
    return bool(NEGATOR.match(word.strip(".,;:!?\"'()")))


def reworded(text: str) -> str:
    """A stand-in for a faithful rewrite: every fourth word dropped (no verbatim 5-gram run survives),
    except a negation and the two words after it (what it negates)."""
    words = text.split()
    near = {k + d for k, w in enumerate(words) if is_negator(w) for d in (0, 1, 2)}
    return " ".join(w for k, w in enumerate(words) if k % 4 != 3 or k in near)


def wiki_chunks(n: int) -> list[str]:
    """`n` real Wikipedia chunks of 120-300 tokens whose reworded version the guard's older checks keep."""
    found = []
    for path in sorted((SHARED_DATA / "reference" / "wikipedia").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            for chunk in split_chunks(json.loads(line)["text"], 300):
                if count_tokens(chunk) < 120 or "<unk>" in chunk:
                    continue
                lenient = GuardConfig(min_coverage={s: 0.0 for s in ("wiki", "qa", "easy", "hard")},
                                      check_negations=False)
                if check(reworded(chunk), chunk, "wiki", "Paraphrase", lenient).reason is None:
                    found.append(chunk)
                if len(found) == n:
                    return found
    raise AssertionError("not enough Wikipedia chunks")


def test_guard_drops_omissions_and_keeps_whole_rewrites():
    """A rewrite of only the first ~40% of a real chunk (reworded, so at ~30% of its length it passes
    every older check: length, copying, names, numbers, support) is dropped as `low_coverage`; the
    reworded whole chunk covers enough."""
    for chunk in wiki_chunks(12):
        head = ""
        for sentence in re.split(r"(?<=[.!?])\s+", chunk):
            head = f"{head} {sentence}".strip()
            if len(head) >= 0.42 * len(chunk):
                break
        omission = reworded(head)
        assert len(omission) >= 0.3 * len(chunk)
        verdict = check(omission, chunk, "wiki", "Paraphrase", GuardConfig())
        assert verdict.reason == "low_coverage", (round(coverage(omission, chunk), 2), omission)
        assert coverage(reworded(chunk), chunk) > 0.6 > coverage(omission, chunk)
        assert check(reworded(chunk), chunk, "wiki", "Paraphrase", GuardConfig(check_negations=False)).reason is None


@pytest.mark.parametrize("rewrite, changed", [
    (CHUNK.replace("carried", "never carried"), True),                     # a negation added
    (GOOD.replace("its deck was rebuilt", "its deck was not rebuilt"), True),
    ("The Alder Street bridge, opened in 1911, did not close to trams before 1958; engineers from Portland "
     "rebuilt its deck in 1972 and the city lists it as a landmark.", False),   # a negation of a new word
    (GOOD.replace("the city lists it", "the city not only lists it but also keeps it"), False),   # not only
])
def test_negation_changes_on_a_planted_chunk(rewrite, changed):
    assert negation_changed(rewrite, CHUNK) is changed
    reason = check(rewrite, CHUNK, "wiki", "Paraphrase", GuardConfig()).reason
    assert reason == ("negation_changed" if changed else None), reason


def test_guard_drops_negation_flips_in_real_text():
    """40 real chunks holding a negation. Reworded with the negations kept, 39 pass the whole guard;
    with every negation removed (what the chunk denies, the rewrite asserts), 30 are dropped as
    `negation_changed`. The misses are by design: "not only" is no negation, and a word the chunk
    also states elsewhere is not counted as flipped."""
    chunks = [c for c in wiki_chunks(150) if any(is_negator(w) for w in c.split())][:40]
    assert len(chunks) == 40
    kept = sum(check(reworded(c), c, "wiki", "Paraphrase", GuardConfig()).reason is None for c in chunks)
    flipped = [" ".join(w for w in reworded(c).split() if not is_negator(w)) for c in chunks]
    caught = sum(check(f, c, "wiki", "Paraphrase", GuardConfig()).reason == "negation_changed"
                 for f, c in zip(flipped, chunks, strict=True))
    assert kept >= 38 and caught >= 27, (kept, caught)      # measured 39 and 30
    denied = "The Alder Street bridge did not open in 1911 and carried trams until 1958. " + CHUNK.split(". ", 1)[1]
    assert check(denied, CHUNK, "wiki", "Paraphrase", GuardConfig()).reason == "negation_changed"


def test_guard_drops_truncated_answers():
    """A faithful rewrite that stopped at the token limit is dropped; the same text finished is kept."""
    assert check(GOOD, CHUNK, "wiki", "Paraphrase", GuardConfig(), finish_reason="length").reason == "truncated"
    assert check(GOOD, CHUNK, "wiki", "Paraphrase", GuardConfig(), finish_reason="stop").reason is None


# a misbehaving OpenAI-compatible server -------------------------------------------------------------

class FlakyServer:
    """A real HTTP server speaking /v1/chat/completions. What it does with a request depends on the
    passage (`kinds` maps each passage to one of seven behaviours), so every run sees the same faults:
    0 always 500, 1 a 503 on the first try only, 2 invalid JSON, 3 slower than the client's timeout,
    4 a fluent answer about something else (the guard must drop it), 5 a faithful rewrite, 6 a faithful
    rewrite cut off at the token limit (finish_reason `length`)."""

    def __init__(self, timeout_s: float):
        self.requests: dict[str, int] = {}
        self.systems: list[str] = []          # the system message of every request
        self.kinds: dict[str, int] = {}
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]   # the chunk is somewhere in the user message
                passage = next((p for p in server.kinds if p in content), content)
                with server.lock:
                    server.systems.append(body["messages"][0]["content"])
                    server.auth.add(self.headers.get("Authorization", ""))
                    server.requests[passage] = server.requests.get(passage, 0) + 1
                    attempt = server.requests[passage]
                kind = server.behaviour(passage)
                if self.headers.get("Authorization") != f"Bearer {SECRET}":
                    return self._send(401, b'{"error": "bad key"}')
                if kind == 0 or (kind == 1 and attempt == 1):
                    return self._send(500 if kind == 0 else 503, b'{"error": "overloaded"}')
                if kind == 2:
                    return self._send(200, b'{"choices": [{"message": {"content": "trunc')
                if kind == 3:
                    time.sleep(timeout_s * 2.5)
                text = server.answer(passage, kind)
                finish = "length" if kind == 6 else "stop"
                reply = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                         "usage": {"prompt_tokens": 100 + len(passage) // 4, "completion_tokens": len(text) // 4}}
                return self._send(200, json.dumps(reply).encode())

            def _send(self, status: int, payload: bytes):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):   # the client gave up (timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def behaviour(self, passage: str) -> int:
        return self.kinds.get(passage, 5)

    @staticmethod
    def answer(passage: str, kind: int) -> str:
        if kind == 4:   # fluent, long enough and never repeated: only its content is wrong
            topics = ["weather", "music", "cooking", "travel", "sports", "gardening", "painting", "chess",
                      "poetry", "sailing", "pottery", "astronomy"]
            lines = [f"Question: What does it say about {t}? Answer: That {t} {verb} people everywhere."
                     for verb in ("delights", "puzzles") for t in topics]
            text, k = "", 0
            while len(text) < len(passage) and k < len(lines):
                text, k = text + lines[k] + "\n", k + 1
            return text
        return "Sure, here is the rewritten passage:\n" + reworded(passage)   # the same facts, not a verbatim copy

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_misbehaving_server_loses_no_rows_and_is_not_asked_twice(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    timeout_s = 1.0
    server = FlakyServer(timeout_s)
    # as a user would: the key is in the environment before winnow starts its workers
    monkeypatch.setenv("WINNOW_TEST_API_KEY", SECRET)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        _flaky_run(server, client, tmp_path)
    server.close()


def _flaky_run(server: FlakyServer, client, tmp_path: Path) -> None:
    timeout_s = 1.0
    docs = short_docs(21)
    behaviours = [k % 7 for k in range(len(docs))]
    for doc, kind in zip(docs, behaviours, strict=True):
        server.kinds[split_chunks(doc["text"], 300)[0]] = kind
    out = tmp_path / "out"
    # small shards (some with no dropped rewrite at all), a provenance column and a score column; and
    # stages after rephrase, which see the rewrites as ordinary input rows
    rows = [{**d, "source": "flaky-web", "quality": 0.5} for d in docs]
    config = {
        "input": {"paths": [write_jsonl(rows, tmp_path / "docs.jsonl")], "shard_size_mb": 0.002},
        "output": str(out),
        "stages": [{"rephrase": {"backend": "openai", "url": server.url, "model": "flaky-7b",
                                 "api_key_env": "WINNOW_TEST_API_KEY", "styles": ["wiki"],
                                 "timeout_s": timeout_s, "retries": 2, "concurrency": 4}},
                   {"exact_dedup": {}}, {"tokenize": {"vocab_size": 300}}],
    }
    run(config, client)
    stage_dir = out / "01-rephrase"
    kept, rejected = kept_rows(stage_dir), rejected_rows(stage_dir)
    manifests = check_conservation(out)
    manifest = manifests[1]
    assert [m["totals"]["added"] for m in manifests] == [0, len(docs), 0, 0]
    assert manifests[3]["totals"]["rows_out"] == kept.num_rows    # every rewrite reached the tokens
    assert len(manifest["shards"]) > 3

    # every source row passes through unchanged
    real = kept.filter(kept.column("synthetic").to_numpy(zero_copy_only=False) == False)  # noqa: E712
    assert sorted(zip(real.column("id").to_pylist(), real.column("text").to_pylist(), strict=True)) == \
        sorted((d["id"], d["text"]) for d in docs)
    synth = kept.filter(kept.column("synthetic"))
    by_doc = {d["id"]: b for d, b in zip(docs, behaviours, strict=True)}
    assert sorted(synth.column("source_id").to_pylist()) == sorted(i for i, b in by_doc.items() if b in (1, 5))
    assert not any(t.lower().startswith("sure") for t in synth.column("text").to_pylist())
    assert set(synth.column("model").to_pylist()) == {f"openai:flaky-7b@{server.url}"}   # name and server
    assert set(synth.column("backend").to_pylist()) == {"openai"}
    assert set(synth.column("source").to_pylist()) == {"flaky-web"}       # where it came from carries over
    assert set(synth.column("quality").to_pylist()) == {None}            # a score of the source's text does not
    # every failure and every dropped rewrite is on record, with its reason and source
    reasons = dict(zip(rejected.column("source_id").to_pylist(), rejected.column("reason").to_pylist(),
                       strict=True))
    expected = {0: "generation_failed: http_500", 2: "generation_failed: invalid_json",
                3: "generation_failed: timeout", 4: "unsupported", 6: "truncated"}
    assert reasons == {i: expected[b] for i, b in by_doc.items() if b in expected}
    assert all(rejected.column("synthetic").to_pylist())
    assert manifest["totals"]["added"] == len(docs)   # one rewrite asked for per document
    stats = manifest["totals"]["stats"]
    assert stats["completion_tokens"] > 0 and manifest["totals"]["flops"] == 0.0   # remote: tokens only

    # the key authenticated every request and is written nowhere
    assert server.auth == {f"Bearer {SECRET}"}
    for path in list(out.rglob("*")):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    # a --force rerun asks again only for what failed; what succeeded comes from the cache
    before = dict(server.requests)
    run(config, client, force=True)
    asked_again = {p: server.requests[p] - before.get(p, 0) for p in server.requests}
    for doc, b in zip(docs, behaviours, strict=True):
        passage = split_chunks(doc["text"], 300)[0]
        if b in (1, 4, 5, 6):   # a truncated answer is a paid-for generation: cached, judged again
            assert asked_again[passage] == 0, (b, doc["id"])
        else:
            assert asked_again[passage] == 3, (b, doc["id"])   # 1 try + 2 retries
    assert kept_rows(stage_dir).equals(kept)


# the generation cache -------------------------------------------------------------------------------

def test_cache_key_follows_the_rendered_prompt_and_the_server(tmp_path, monkeypatch):
    """Rewrites are cached per rendered request and server: the same request is not asked twice; an
    edited system prompt (no version to bump) and a second server serving the same model name are
    asked afresh, and rows name the server."""
    import pyarrow as pa

    from winnow.synth import prompts
    from winnow.synth.rephrase import RephraseParams, RephraseStage

    monkeypatch.setenv("WINNOW_TEST_API_KEY", SECRET)
    first, second = FlakyServer(5.0), FlakyServer(5.0)
    docs = short_docs(3)
    table = pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})
    state = {"cache_dir": str(tmp_path / "cache")}

    def rephrase(server: FlakyServer) -> pa.Table:
        stage = RephraseStage(RephraseParams(backend="openai", url=server.url, model="same-name",
                                             api_key_env="WINNOW_TEST_API_KEY"))
        kept, rejected = stage.apply(table, state)
        return pa.concat_tables([kept.filter(kept.column("synthetic")), rejected.select(kept.column_names)])

    try:
        rows_first = rephrase(first)
        assert sum(first.requests.values()) == 3 and rows_first.num_rows == 3
        rephrase(first)
        assert sum(first.requests.values()) == 3                   # all three from the cache
        monkeypatch.setattr(prompts, "SYSTEM", "You are a careful editor.")
        rephrase(first)
        assert sum(first.requests.values()) == 6                   # the edited prompt is asked for
        assert first.systems[-3:] == ["You are a careful editor."] * 3
        rows_second = rephrase(second)
        assert sum(second.requests.values()) == 3                  # another server, though the same name
        assert set(rows_first.column("model").to_pylist()) == {f"openai:same-name@{first.url}"}
        assert set(rows_second.column("model").to_pylist()) == {f"openai:same-name@{second.url}"}
    finally:
        first.close()
        second.close()


def test_openai_model_identity_names_the_endpoint_without_credentials():
    from winnow.synth.openai_backend import model_identity

    assert model_identity("http://user:pw@Host:8000/v1/", "m") == "openai:m@http://host:8000/v1"
    assert model_identity("http://host:8000/v1/chat/completions", "m") == model_identity("http://host:8000/v1", "m")
    assert model_identity("http://host:8001/v1", "m") != model_identity("http://host:8000/v1", "m")


# real generation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["transformers", "llama_cpp"])
def test_real_generation_with_the_default_gguf(backend, client, tmp_path):
    if backend == "llama_cpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python not built here (bash scripts/setup.sh --llama)")
    from winnow.models.loading import default_gguf

    docs = short_docs(3, lo=60, hi=120)
    out = tmp_path / "out"
    config = {
        "input": {"paths": [write_jsonl(docs, tmp_path / "docs.jsonl")]},
        "output": str(out),
        "stages": [{"rephrase": {"backend": backend, "styles": ["wiki", "qa"], "max_new_tokens": 48,
                                 "temperature": 0.0}}],
    }
    run(config, client)
    stage_dir = out / "01-rephrase"
    kept, rejected = kept_rows(stage_dir), rejected_rows(stage_dir)
    check_conservation(out)
    synth = [r for r in kept.to_pylist() + rejected.to_pylist() if r["synthetic"]]
    assert len(synth) == 6 and {r["style"] for r in synth} == {"wiki", "qa"}
    gguf = Path(default_gguf())
    for r in synth:
        assert r["model"] == f"{gguf.name}:{gguf.stat().st_size}" and r["backend"] == backend
        assert not (r.get("reason") or "").startswith("generation_failed"), r
        assert r["prompt_tokens"] > 50 and 0 < r["completion_tokens"] <= 48 + 1
        assert r["text"].strip(), "a model's answer was lost"
        if r.get("reason") == "truncated":      # stopped by max_new_tokens, not by an end-of-sequence token
            assert r["completion_tokens"] == 48, r
        # 2 * N * tokens with N = SmolLM2-135M's 134.5M parameters
        assert r["generation_flops"] == pytest.approx(2 * 134.5e6 * (r["prompt_tokens"] + r["completion_tokens"]),
                                                      rel=0.01)
    # 48 new tokens are too few for these paraphrases: the cut-off answers are dropped, not kept
    assert any(r.get("reason") == "truncated" for r in synth)
    manifest = json.loads((stage_dir / "_manifest.json").read_text())
    assert manifest["totals"]["flops"] == pytest.approx(sum(r["generation_flops"] for r in synth))
    assert len(list((out / "_cache" / "rephrase").rglob("*.json"))) == 6


def test_transformers_generates_with_its_threads_from_any_thread():
    """OpenMP's thread count belongs to the calling thread. A Dask worker opens the backend in one thread and
    generates in others, whose count is the worker's OMP_NUM_THREADS (Dask sets 1): generation ran on one
    core whatever `threads` said (`bench/rephrase.py` throughput winnow/bare 0.52-0.61 on 2 cores)."""
    import threading

    import torch

    from winnow.synth.transformers_backend import TransformersBackend
    from winnow.synth.types import GenerationParams, Request

    backend = TransformersBackend(threads=2)
    seen = []

    def worker_thread():
        torch.set_num_threads(1)          # what a fresh thread of a Dask worker starts with
        backend.generate([Request((("user", "Say hi."),), 0)], GenerationParams(max_new_tokens=2, temperature=0.0))
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=worker_thread)
    thread.start()
    thread.join()
    assert seen == [2]


def _generation_faults_in_this_process(new_tokens: int) -> dict:
    """Minor page faults of a greedy generation with SmolLM2-135M on one thread, after a warm-up call."""
    import os
    import resource

    from winnow.synth.transformers_backend import TransformersBackend
    from winnow.synth.types import GenerationParams, Request

    backend = TransformersBackend(threads=1)
    requests = [Request((("user", "Rewrite in the style of Wikipedia: the river floods every spring, and the "
                                  "town built its houses on stilts."),), 0)]
    params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.0)
    backend.generate(requests, params)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = backend.generate(requests, params)
    return {"faults_per_token": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / new_tokens,
            "tokens": out[0].completion_tokens, "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def test_generation_in_a_dask_worker_keeps_its_freed_activations(client):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's mmap threshold at
    128 KiB: every activation over that (the logits over 49k tokens, at least) was mmapped per new token,
    unmapped when freed and faulted in again. SmolLM2-135M, one thread: here 789 minor faults per token before
    and 53 with the heap retained (pipeline/retained_heap.py); four 100-300-token prompts, 8,600 against 250 and
    10x the system time. winnow generated at about half the bare speed (bench/rephrase.py throughput
    winnow/bare 0.52-0.61)."""
    result = client.submit(_generation_faults_in_this_process, 24, pure=False).result()
    assert result["malloc_trim_threshold"] == "65536"    # the setting that caused it is in force
    assert result["tokens"] == 24
    print(f"minor page faults per generated token in a Dask worker: {result['faults_per_token']:,.0f}")
    assert result["faults_per_token"] < 300
