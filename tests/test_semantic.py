"""SemDeDup: GSM8K standard/socratic pairs (same problem, another solution style) are found, unrelated
problems are not; the embeddings stay as a column. Out of core: the result equals a brute-force
in-memory SemDeDup on the same vectors and centroids, the driver never holds the (n, d) vectors, the
model and k-means tasks go to the GPU worker, CPU workers do not see the GPU, faiss is optional, and
the shared `keep` rules pick the survivor that `dup_of` names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SHARED_DATA, check_conservation, rejected_rows, run

from winnow.filters.semantic_dedup import SemanticDedupStage, SemanticParams, earlier_max_cosine
from winnow.pipeline.shards import file_hash
from winnow.pipeline.stage import Context, ShardRef


def gsm8k_docs(n_pairs: int, offset: int = 0) -> tuple[list[dict], list[dict]]:
    lines = (SHARED_DATA / "neardup/gsm8k_socratic_pairs/pairs.jsonl").read_text().rstrip("\n").split("\n")
    pairs = [json.loads(line) for line in lines[offset:offset + n_pairs]]
    return pairs, [{"id": f"{s}{p['pair_id']}", "text": p[f"text_{s}"]} for p in pairs for s in "ab"]


def test_gsm8k_pairs_found_unrelated_kept(tmp_path, client):
    lines = (SHARED_DATA / "neardup/gsm8k_socratic_pairs/pairs.jsonl").read_text().rstrip("\n").split("\n")
    pairs = [json.loads(line) for line in lines]
    docs = []
    for p in pairs[:120]:
        docs += [{"id": f"a{p['pair_id']}", "text": p["text_a"]}, {"id": f"b{p['pair_id']}", "text": p["text_b"]}]
    docs += [{"id": f"u{p['pair_id']}", "text": p["text_a"]} for p in pairs[120:300]]  # unrelated problems
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    run({"input": {"paths": [str(tmp_path / "in.jsonl")], "shard_size_mb": 0.1}, "output": str(out),
         "outputs": {"dataset": False}, "stages": [{"semantic_dedup": {"eps": 0.15, "k": 4}}]}, client)
    check_conservation(out)
    rej = rejected_rows(out / "01-semantic_dedup")
    removed = set(rej.column("id").to_pylist())
    found = sum(1 for p in pairs[:120] if len({f"a{p['pair_id']}", f"b{p['pair_id']}"} & removed) == 1)
    unrelated = sum(1 for i in removed if i.startswith("u"))
    assert found / 120 >= 0.9, found
    assert unrelated <= 2, unrelated
    assert all(c > 0.85 for c in rej.column("semantic_cosine").to_pylist())
    assert not set(rej.column("dup_of").to_pylist()) & removed  # every dup_of names a kept document
    kept = pa.concat_tables(pq.read_table(p) for p in sorted((out / "01-semantic_dedup").glob("train-*.parquet")))
    emb = np.asarray(kept.column("embedding").to_pylist()[0])
    assert emb.shape == (384,) and abs(np.linalg.norm(emb) - 1) < 1e-3
    assert kept.column("dup_count").type == pa.int64() and kept.column("dup_count").null_count == 0
    assert int(np.sum(kept.column("dup_count"))) == len(docs)  # every input document is accounted for
    manifest = json.loads((out / "01-semantic_dedup/_manifest.json").read_text())
    assert manifest["removed"] == len(removed) and manifest["embedding_flops"] > 0


def test_earlier_max_cosine_keeps_the_least_prototypical(monkeypatch):
    import winnow.filters.semantic_dedup as sd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[7] = x[3] + 0.01 * rng.normal(size=16)
    x[7] /= np.linalg.norm(x[7])
    centroid = x.mean(axis=0) / np.linalg.norm(x.mean(axis=0))
    brute = None
    for block, cols in ((2048, 8192), (64, 100)):  # one tile, and many row blocks x column tiles
        monkeypatch.setattr(sd, "BLOCK", block)
        monkeypatch.setattr(sd, "COLS", cols)
        order, best, arg = earlier_max_cosine(x, x @ centroid)
        if brute is None:
            brute = [max((float(x[order[i]] @ x[order[j]]) for i in range(j)), default=-np.inf)
                     for j in range(len(x))]
        assert np.allclose(best, brute, atol=1e-5)
        later = 3 if list(order).index(3) > list(order).index(7) else 7    # the more prototypical of the two
        j = list(order).index(later)
        assert best[j] > 0.99 and order[arg[j]] == ({3, 7} - {later}).pop()


def test_kmeans_backends_recover_planted_clusters():
    """Both backends (torch is the CUDA path when faiss has no GPU; it runs on the CPU here)."""
    from winnow.filters.kmeans import spherical_kmeans

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 32))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = rng.integers(0, 6, 3000)
    x = (centers[truth] + 0.15 * rng.normal(size=(3000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # torch (k-means++ seeds) on three seeds; faiss (random seeds) on one where it finds all six
    for backend, seed in (("torch", 1), ("torch", 2), ("torch", 3), ("faiss", 1)):
        centroids, used = spherical_kmeans(x, 6, 30, seed=seed, backend=backend)
        assert used == backend and np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-4)
        label = (x @ centroids.T).argmax(axis=1)
        purity = sum(np.bincount(truth[label == c]).max() for c in np.unique(label)) / len(x)
        assert purity > 0.99, (backend, seed, purity)


def test_kmeans_without_faiss_falls_back_to_torch():
    """faiss is optional: `auto` runs torch and says so in one line; asking for faiss names the package."""
    code = (
        "import sys\n"
        "sys.modules['faiss'] = None  # `import faiss` now raises ImportError\n"
        "import numpy as np\n"
        "from winnow.filters.kmeans import pick_backend, spherical_kmeans\n"
        "x = np.random.default_rng(0).normal(size=(200, 8)).astype('float32')\n"
        "c, used = spherical_kmeans(x, 3, 5, 0, 'auto')\n"
        "print('backend', pick_backend('auto'), used, c.shape)\n"
        "try:\n"
        "    pick_backend('faiss')\n"
        "except ImportError as e:\n"
        "    print('error', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend torch torch (3, 8)" in r.stdout, r.stdout
    assert "faiss-cpu" in r.stdout.split("error", 1)[1], r.stdout
    assert r.stderr.count("faiss is not installed") == 1, r.stderr  # logged once, not per call


def test_semantic_dedup_with_torch_kmeans(tmp_path, client):
    pairs, docs = gsm8k_docs(60)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    run({"input": {"paths": [str(tmp_path / "in.jsonl")]}, "output": str(out), "outputs": {"dataset": False},
         "stages": [{"semantic_dedup": {"eps": 0.15, "k": 2, "kmeans": "torch", "store_embeddings": False}}]},
        client)
    check_conservation(out)
    manifest = json.loads((out / "01-semantic_dedup/_manifest.json").read_text())
    assert manifest["clusters"] == 2 and manifest["removed"] >= 0.9 * len(pairs)
    assert manifest["kmeans_backend"] == "torch"
    assert not (out / "01-semantic_dedup/_fit/emb").exists() or not any((out / "01-semantic_dedup/_fit/emb").iterdir())


# ---------------------------------------------------------------- synthetic vectors through `embedding`


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, n: int, d: int, k: int, spread: float = 0.15) -> np.ndarray:
    """`n` unit vectors around `k` random centres (cosine between two members of a centre ~0.6 at d=32)."""
    centers = unit(rng.normal(size=(k, d)))
    return unit(centers[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d)))


def write_shards(folder, columns: dict, bounds: list[int]) -> list[ShardRef]:
    """Parquet shards of `columns` (numpy or lists; a 2-D array becomes a list<float32> column)."""
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        arrays = {}
        for name, values in columns.items():
            v = values[a:b]
            if isinstance(v, np.ndarray) and v.ndim == 2:
                arrays[name] = pa.ListArray.from_arrays(pa.array(np.arange(b - a + 1) * v.shape[1], pa.int32()),
                                                        pa.array(np.ascontiguousarray(v).ravel()))
            else:
                arrays[name] = pa.array(v)
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(pa.table(arrays), path)
        refs.append(ShardRef(f"part-{i:05d}", str(path), file_hash(path)))
    return refs


def fit_and_apply(client, workdir, refs: list[ShardRef], **params) -> tuple[dict, pa.Table, pa.Table]:
    """The stage's own fit, load and apply (what the engine runs), outside the engine: the state is returned."""
    stage = SemanticDedupStage(SemanticParams(**params))
    ctx = Context(client=client, seed=0, workdir=str(workdir))
    refs = stage.inputs(refs, ctx)
    state = stage.fit(refs, ctx)
    kept, rejected = zip(*(stage.apply(stage.load(r), stage.shard_state(state, r)) for r in refs), strict=True)
    return state, pa.concat_tables(kept), pa.concat_tables(rejected)


def brute_force(x: np.ndarray, centroids: np.ndarray, key: np.ndarray, threshold: float,
                weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SemDeDup in memory, naively: a document is compared with every earlier document (by key, then
    row) that shares one of its two nearest clusters. Returns removed, survivor index, group size."""
    n = len(x)
    x64, c64 = x.astype(np.float64), centroids.astype(np.float64)
    top = np.argsort(-(x64 @ c64.T), axis=1, kind="stable")[:, :2]
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), key))] = np.arange(n)
    share = (top[:, None, :, None] == top[None, :, None, :]).any(axis=(2, 3))
    sims = np.where(share & (rank[None, :] < rank[:, None]), x64 @ x64.T, -np.inf)  # [j, i]: i earlier
    score, partner = sims.max(axis=1), sims.argmax(axis=1)
    removed = score > threshold
    survivor = np.arange(n)
    for j in np.argsort(rank):  # earlier documents are resolved first
        if removed[j]:
            survivor[j] = survivor[partner[j]]
    size = weights.copy()
    np.add.at(size, survivor[removed], weights[removed])
    return removed, survivor, size


@pytest.mark.parametrize("keep", ["prototypicality", "longest"])
def test_out_of_core_equals_brute_force(tmp_path, client, keep):
    rng = np.random.default_rng(1)
    base = clustered(rng, 1800, 32, 8)
    planted = rng.integers(0, len(base), 200)  # near-duplicates (cosine ~0.998) of 200 documents, some twice
    x = np.concatenate([base, unit(base[planted] + 0.01 * rng.normal(size=(len(planted), 32)))])
    perm = rng.permutation(len(x))
    x = x[perm]
    n = len(x)
    ids = [f"d{i}" for i in range(n)]
    lengths = rng.integers(10, 400, n)
    texts = ["w" * int(m) for m in lengths]
    weights = rng.integers(1, 4, n)  # dup_count from an earlier dedup stage
    refs = write_shards(tmp_path / "in", {"id": ids, "text": texts, "embedding": x, "dup_count": weights},
                        [0, 300, 900, 1000, 1600, n])
    state, kept, rejected = fit_and_apply(client, tmp_path / "fit", refs, eps=0.05, k=8, kmeans_sample=1000,
                                          niter=20, keep=keep, store_embeddings=False)
    assert state["kmeans_sample"] == 1000 and state["compared_rows"] == 2 * n
    key = x.astype(np.float64) @ state["centroids"].T.astype(np.float64)
    key = np.sort(key, axis=1)[:, -1] if keep == "prototypicality" else -lengths.astype(np.float64)
    removed, survivor, size = brute_force(x, state["centroids"], key, 0.95, weights)
    assert 150 <= removed.sum() <= 260  # the planted copies, nothing else
    got = dict(zip(rejected.column("id").to_pylist(), rejected.column("dup_of").to_pylist(), strict=True))
    assert set(got) == {ids[j] for j in np.flatnonzero(removed)}
    assert got == {ids[j]: ids[survivor[j]] for j in np.flatnonzero(removed)}
    assert rejected.column("dup_cluster_size").to_pylist() == [int(size[survivor[ids.index(i)]])
                                                               for i in rejected.column("id").to_pylist()]
    counts = dict(zip(kept.column("id").to_pylist(), kept.column("dup_count").to_pylist(), strict=True))
    assert counts == {ids[j]: int(size[j]) for j in np.flatnonzero(~removed)}
    assert not (tmp_path / "fit" / "emb").exists() and not (tmp_path / "fit" / "assign").exists()


def state_array_bytes(obj) -> int:
    """Bytes of every numpy array reachable in a fitted state."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(state_array_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_array_bytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(state_array_bytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0


def test_driver_never_holds_the_vectors(tmp_path, client):
    """20k x 384 vectors (30 MB) in 1,000 small clusters: the driver's allocations stay far below the
    vectors' size, the state holds no (n, d) array, each document is compared in exactly its two
    clusters, and the stored `embedding` column comes from the workers' files (or is recomputed when
    those are gone)."""
    from winnow.pipeline.engine import Engine

    rng = np.random.default_rng(2)
    n, d = 20_000, 384
    x = clustered(rng, n, d, 50, spread=0.05)
    x[1::97] = unit(x[0::97][: len(x[1::97])] + 0.002 * rng.normal(size=(len(x[1::97]), d)))
    ids = [f"v{i}" for i in range(n)]
    refs = write_shards(tmp_path / "in", {"id": ids, "text": ["t"] * n, "embedding": x},
                        list(range(0, n, 2500)) + [n])
    params = dict(eps=0.01, k=1000, kmeans_sample=5000, niter=5)
    engine = Engine(client, tmp_path / "out", progress=False)
    stage = SemanticDedupStage(SemanticParams(**params))
    tracemalloc.start()  # numpy and Python allocations of this process: the driver (and scheduler)
    try:
        engine.run_stage("01-semantic_dedup", stage, params, refs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * d * 4 / 4, (peak, n * d * 4)
    manifest = json.loads((tmp_path / "out/01-semantic_dedup/_manifest.json").read_text())
    assert manifest["compared_rows"] == 2 * n and manifest["largest_cluster"] < n / 20
    assert manifest["removed"] >= 200 and manifest["kmeans_sample"] == 5000

    state = SemanticDedupStage(SemanticParams(**params)).fit(
        stage.inputs(refs, Context(client, 0, str(tmp_path / "fit"))), Context(client, 0, str(tmp_path / "fit")))
    # the largest array is the centroids (k x d, k = n / 20 here; n / 300 by default)
    assert state_array_bytes(state) < n * d * 4 / 8, state_array_bytes(state)
    assert state["removed"] == manifest["removed"]

    stored = pq.read_table(tmp_path / "out/01-semantic_dedup/train-00000.parquet", columns=["id", "embedding"])
    rows = [int(i[1:]) for i in stored.column("id").to_pylist()]
    vectors = np.asarray(stored.column("embedding").to_pylist(), np.float32)
    assert np.allclose(vectors, x[rows], atol=1e-6)
    # a resume whose work folder was cleaned: the fit state is cached, the .npy files are gone
    emb = tmp_path / "out/01-semantic_dedup/_fit/emb"
    for f in emb.glob("*.npy"):
        f.unlink()
    (tmp_path / "out/01-semantic_dedup/train-00000.parquet").unlink()
    again = engine.run_stage("01-semantic_dedup", stage, params, refs)
    assert again.skipped == len(refs) - 1 and not any(emb.glob("*.npy"))  # no refit: `load` embedded again
    redone = pq.read_table(tmp_path / "out/01-semantic_dedup/train-00000.parquet", columns=["embedding"])
    assert np.allclose(np.asarray(redone.column("embedding").to_pylist(), np.float32), x[rows], atol=1e-6)


def test_keep_longest_survives_and_dup_of_names_the_survivor(tmp_path, client):
    """The hidden-set story: MinHash kept a 90% copy (dup_count 2) and SemDeDup removed it in favour
    of a half-length copy that is less prototypical. With keep: longest the 90% copy stays and
    counts all three. A chain (a middle copy nearer each end than the ends are to each other) must
    still name the survivor, not the middle copy that was itself removed."""
    rng = np.random.default_rng(3)
    d = 32
    centers = unit(rng.normal(size=(3, d)))
    background = unit(centers[np.arange(300) % 3] + 0.15 * rng.normal(size=(300, d)))
    ninety = unit(centers[0] + 0.05 * rng.normal(size=d))       # a prototypical document
    outward = (ninety - centers[0]) / np.linalg.norm(ninety - centers[0])
    half = unit(ninety + 0.08 * outward)                         # its copy, further from the centre
    base = unit(centers[1] + 0.15 * rng.normal(size=d))
    step = unit(rng.normal(size=d))
    chain = [unit(base + t * 0.03 * step) for t in (0, 1, 2)]   # c1 is nearer c0 and c2 than they are
    x = np.vstack([background, ninety, half, *chain])
    ids = [f"b{i}" for i in range(300)] + ["ninety", "half", "c0", "c1", "c2"]
    texts = ["x" * 50] * 300 + ["y" * 900, "y" * 500, "z" * 900, "z" * 700, "z" * 500]
    dup_count = [1] * 300 + [2, 1, 1, 1, 1]
    refs = write_shards(tmp_path / "in", {"id": ids, "text": texts, "embedding": x, "dup_count": dup_count},
                        [0, 150, 302, len(ids)])
    state, kept, rejected = fit_and_apply(client, tmp_path / "p", refs, eps=0.01, k=3)
    removed = set(rejected.column("id").to_pylist())
    assert "ninety" in removed and "half" not in removed   # SemDeDup's own rule: the story's outcome

    state, kept, rejected = fit_and_apply(client, tmp_path / "l", refs, eps=0.01, k=3, keep="longest")
    dup_of = dict(zip(rejected.column("id").to_pylist(), rejected.column("dup_of").to_pylist(), strict=True))
    sizes = dict(zip(rejected.column("id").to_pylist(), rejected.column("dup_cluster_size").to_pylist(),
                     strict=True))
    counts = dict(zip(kept.column("id").to_pylist(), kept.column("dup_count").to_pylist(), strict=True))
    assert dup_of == {"half": "ninety", "c1": "c0", "c2": "c0"}
    assert counts["ninety"] == 3 and counts["c0"] == 3 and sizes == {"half": 3, "c1": 3, "c2": 3}
    assert set(counts.values()) == {1, 3} and len(counts) == 302
    assert set(dup_of.values()) <= set(counts)                # dup_of always names a kept document

    with pytest.raises(ValueError, match="keep must be one of"):
        SemanticParams(eps=0.1, keep="shortest")


# ---------------------------------------------------------------- GPU placement (Dask resources are labels)


@pytest.fixture(scope="module")
def gpu_client():
    """winnow's own cluster: one CPU worker and one worker labelled {GPU: 1} (no GPU needed)."""
    from winnow.pipeline.cluster import cluster_client
    from winnow.pipeline.config import EngineConfig

    with cluster_client(EngineConfig(n_workers=1, gpu_workers=1, memory_limit="4GiB", progress=False)) as c:
        yield c


def test_cpu_workers_do_not_see_the_gpu(gpu_client):
    def visible():
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES")

    seen = gpu_client.run(visible)
    workers = gpu_client.scheduler_info(n_workers=-1)["workers"]
    gpu = {a for a, w in workers.items() if w.get("resources", {}).get("GPU")}
    assert len(gpu) == 1 and len(seen) == 2
    for address, value in seen.items():
        if address in gpu:
            assert value not in (None, ""), value
            assert value == os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        else:
            assert value == "", value


def test_model_and_kmeans_tasks_run_on_the_gpu_worker(tmp_path, gpu_client):
    from dask.utils import key_split
    from distributed import get_task_stream

    _, docs = gsm8k_docs(16, offset=200)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    with get_task_stream(client=gpu_client) as ts:
        run({"input": {"paths": [str(tmp_path / "in.jsonl")], "shard_size_mb": 0.002}, "output": str(out),
             "outputs": {"dataset": False}, "stages": [{"semantic_dedup": {"eps": 0.15, "k": 2}}]}, gpu_client)
    check_conservation(out)
    workers = gpu_client.scheduler_info(n_workers=-1)["workers"]
    gpu = {a for a, w in workers.items() if w.get("resources", {}).get("GPU")}
    ran: dict[str, set[str]] = {}
    for task in ts.data:
        ran.setdefault(key_split(task["key"]), set()).add(task["worker"])
    assert len(list((out / "01-semantic_dedup/_shards").glob("*.json"))) >= 4  # several embedding tasks
    assert ran["embed_shard"] == gpu, ran  # key_split drops the leading underscore
    assert ran["kmeans_sample"] == gpu, ran
    manifest = json.loads((out / "01-semantic_dedup/_manifest.json").read_text())
    assert manifest["embedding_flops"] > 0



def _embedding_faults_in_this_process(n_docs: int) -> dict:
    """Minor page faults per document of MiniLM embeddings on one thread, 16 to a batch (model loaded and
    warmed first): the first batch grows the heap, the later ones should reuse it."""
    import resource

    from conftest import WEB

    from winnow.raters.embed import embed

    texts = [json.loads(line)["text"] for line in (WEB / "cc_samples" / "cc_fixture_docs-000.jsonl")
             .read_text().splitlines()[:n_docs]]
    embed(texts[:4], device="cpu", threads=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    vectors, _ = embed(texts, batch_size=16, device="cpu", threads=1)
    return {"faults_per_doc": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(texts),
            "rows": len(vectors), "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def test_embedding_in_a_dask_worker_keeps_its_freed_activations(client):
    """Scoring runs in Dask workers, which start with MALLOC_TRIM_THRESHOLD_=65536 (distributed's nanny): glibc
    then mmaps every activation over 128 KiB and unmaps it when freed, so each batch's pages fault in afresh.
    MiniLM over 400 Common Crawl pages on one thread: 4.06 M minor faults and 7.5 s of system time in 36 s of
    CPU, against 0.18 M and 0.4 s with the heap retained while scoring (raters/scorer.py `inference`). Here,
    128 pages 16 to a batch: 10,858 faults per page before, 1,241 after (most of it the first batch's heap)."""
    result = client.submit(_embedding_faults_in_this_process, 128, pure=False).result()
    assert result["malloc_trim_threshold"] == "65536"    # the setting that caused it is in force
    assert result["rows"] == 128
    print(f"minor page faults per embedded document in a Dask worker: {result['faults_per_doc']:,.0f}")
    assert result["faults_per_doc"] < 3_000
