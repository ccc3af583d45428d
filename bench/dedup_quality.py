"""MinHash dedup quality against ground truth, winnow and datatrove side by side, same parameters.

Sets (../shared/data/neardup, see its PROVENANCE.md):
- gutenberg_versions: 16 files, 6 books in several editions (headers, wrapping, encodings, typo
  fixes differ). Every pair of editions of one book is a true duplicate pair.
- clough_stevenson: 95 short answers + 5 Wikipedia originals; categories cut / light / heavy
  (graded reuse of the original) and non (written independently). Recall per category = share of
  answers put in the same cluster as their original; `non` false pairing = share of `non` answers
  put in any cluster.
Both tools run word 5-grams, 14 bands x 8 rows (112 hashes). A pair is "found" when both documents
end in one duplicate cluster. Then semantic_dedup: the share of GSM8K standard/socratic pairs it
collapses, the share of the unrelated problems (each pair's standard text alone) it removes, and
the ROC AUC of MiniLM cosine on MSRP paraphrase labels.

line_dedup on the whole web sample (../shared/data/web): lines and characters removed, documents
rejected, per source family, and the most repeated lines. The trafilatura pages carry hand-picked
`boilerplate_snippets` (must go) and `main_content_snippets` (must stay): the share of each that
line_dedup removes (a snippet counts as removed when it is no longer a substring of the kept text,
or its page was rejected) is its recall on boilerplate and its damage to content.

    python bench/dedup_quality.py                      # everything
    python bench/dedup_quality.py --line-dedup-only    # the line_dedup section alone (~1 min)
    python bench/dedup_quality.py --minhash-only       # the MinHash section alone, both tools
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from pathlib import Path

from winnow.pipeline.measure import link_inputs

REPO = Path(__file__).resolve().parents[1]
NEARDUP = REPO.parent / "shared" / "data" / "neardup"
WEB = REPO.parent / "shared" / "data" / "web"


def winnow_clusters(files: list[str], out: Path) -> list[set[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.pipeline.config import resolve
    from winnow.pipeline.run import run_pipeline

    cfg = resolve({"input": {"paths": files}, "output": str(out), "outputs": {"dataset": False},
                   "engine": {"n_workers": 2, "progress": False},
                   "stages": [{"minhash_dedup": {"ngram": 5, "bands": 14, "rows": 8}}]})
    run_pipeline(cfg)
    rej = [pq.read_table(p) for p in sorted((out / "01-minhash_dedup" / "rejected").glob("*.parquet"))]
    groups: dict[str, set[str]] = {}
    if rej:
        t = pa.concat_tables(rej)
        for doc, survivor in zip(t.column("id").to_pylist(), t.column("dup_of").to_pylist(), strict=True):
            groups.setdefault(survivor, {survivor}).add(doc)
    return list(groups.values())


def datatrove_clusters(files: list[str], out: Path) -> list[set[str]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    links = link_inputs(files, out / "in")
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    run = lambda steps, tasks, name: LocalPipelineExecutor(  # noqa: E731
        pipeline=steps, tasks=tasks, workers=2, logging_dir=str(out / "logs" / name)).run()
    run([JsonlReader(links), MinhashDedupSignature(output_folder=str(out / "sigs"), config=cfg)],
        len(files), "sig")
    run([MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=cfg)],
        cfg.num_buckets, "buckets")
    run([MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=cfg,
                             save_cluster_id=True)], 1, "cluster")
    run([JsonlReader(links),
         MinhashDedupFilter(input_folder=str(out / "remove"), load_cluster_ids=True,
                            exclusion_writer=JsonlWriter(str(out / "removed"), compression=None)),
         JsonlWriter(str(out / "kept"), compression=None)], len(files), "filter")
    groups: dict[int, set[str]] = {}
    for path in list((out / "kept").glob("*.jsonl")) + list((out / "removed").glob("*.jsonl")):
        for line in path.read_text().rstrip('\n').split('\n'):
            doc = json.loads(line)
            cid = doc.get("metadata", {}).get("minhash_cluster_id")
            if cid is not None and cid != -1:
                groups.setdefault(cid, set()).add(doc["id"])
    return [g for g in groups.values() if len(g) > 1]


def same_cluster(clusters: list[set[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for c in clusters for p in itertools.combinations(sorted(c), 2)}


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    import re

    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


def main(minhash_only: bool = False) -> None:
    gut_files = sorted(str(p) for p in (NEARDUP / "gutenberg_versions").glob("*.jsonl"))
    books = [json.loads(line) for f in gut_files for line in Path(f).read_text().rstrip('\n').split('\n')]
    truth = {frozenset(p) for p in itertools.combinations(sorted(b["id"] for b in books), 2)
             if len({next(x["cluster"] for x in books if x["id"] == i) for i in p}) == 1}
    clough_file = str(NEARDUP / "clough_stevenson" / "docs.jsonl")
    labels = [json.loads(line) for line in (NEARDUP / "clough_stevenson" / "labels.jsonl").read_text().rstrip('\n').split('\n')]
    texts = {json.loads(line)["id"]: json.loads(line)["text"] for line in Path(clough_file).read_text().rstrip('\n').split('\n')}

    print(f"gutenberg_versions: {len(books)} files, {len(truth)} true edition pairs; "
          f"clough_stevenson: {len(labels)} answers. 5-grams, 14 bands x 8 rows.")
    results = {}
    for tool, fn in (("winnow", winnow_clusters), ("datatrove", datatrove_clusters)):
        with tempfile.TemporaryDirectory() as tmp:
            gut_pairs = same_cluster(fn(gut_files, Path(tmp) / "g"))
            clough = fn([clough_file], Path(tmp) / "c")
        tp = len(gut_pairs & truth)
        precision = tp / len(gut_pairs) if gut_pairs else 1.0
        recall = tp / len(truth)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        in_cluster_with = {}
        for c in clough:
            for doc in c:
                in_cluster_with[doc] = c
        per_cat: dict[str, list[int]] = {}
        for lab in labels:
            if lab["category"] == "orig":
                continue
            found = lab["source_file"] in in_cluster_with.get(lab["file"], set())
            if lab["category"] == "non":
                found = lab["file"] in in_cluster_with
            per_cat.setdefault(lab["category"], []).append(int(found))
        results[tool] = (precision, recall, f1, per_cat)

    jac: dict[str, list[float]] = {}
    for lab in labels:
        if lab["category"] != "orig":
            a, b = shingles(texts[lab["file"]]), shingles(texts[lab["source_file"]])
            jac.setdefault(lab["category"], []).append(len(a & b) / len(a | b))
    print(f"\n{'':12s}{'gutenberg P':>12s}{'R':>7s}{'F1':>7s}   clough recall by category "
          f"(median 5-gram Jaccard to the original)")
    for tool, (p, r, f, per_cat) in results.items():
        cats = "  ".join(f"{c} {sum(v) / len(v):.2f} ({statistics.median(jac[c]):.2f})"
                         for c, v in sorted(per_cat.items()) if c != "non")
        non = per_cat.get("non", [])
        print(f"{tool:12s}{p:12.3f}{r:7.3f}{f:7.3f}   {cats}   non false pairing {sum(non) / max(len(non), 1):.3f}")
    if not minhash_only:
        semantic_report()
        line_dedup_report()
    w = results["winnow"]
    print(f"winnow gutenberg recall: {w[1]:.3f} (target >= 0.95); non answers paired: {sum(w[3]['non'])}")


def semantic_report(eps: float = 0.15) -> None:
    """SemDeDup on GSM8K standard/socratic pairs (+ the unrelated problems alone), and MSRP ROC AUC."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.pipeline.config import resolve
    from winnow.pipeline.run import run_pipeline
    from winnow.raters.embed import embed

    lines = (NEARDUP / "gsm8k_socratic_pairs" / "pairs.jsonl").read_text().rstrip("\n").split("\n")
    pairs = [json.loads(line) for line in lines]

    def removed_ids(docs: list[dict], tmp: Path) -> tuple[set[str], dict]:
        (tmp / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        cfg = resolve({"input": {"paths": [str(tmp / "in.jsonl")]}, "output": str(tmp / "out"),
                       "outputs": {"dataset": False}, "engine": {"n_workers": 2, "progress": False},
                       "stages": [{"semantic_dedup": {"eps": eps, "store_embeddings": False}}]})
        run_pipeline(cfg)
        stage = tmp / "out" / "01-semantic_dedup"
        rej = [pq.read_table(p) for p in sorted((stage / "rejected").glob("*.parquet"))]
        ids = set(pa.concat_tables(rej).column("id").to_pylist()) if rej else set()
        return ids, json.loads((stage / "_manifest.json").read_text())

    with tempfile.TemporaryDirectory() as tmp:
        both = [{"id": f"{side}{p['pair_id']}", "text": p[f"text_{side}"]} for p in pairs for side in "ab"]
        (Path(tmp) / "pairs").mkdir()
        gone, manifest = removed_ids(both, Path(tmp) / "pairs")
        found = sum(1 for p in pairs if len({f"a{p['pair_id']}", f"b{p['pair_id']}"} & gone) == 1)
        (Path(tmp) / "alone").mkdir()
        gone_alone, _ = removed_ids([{"id": f"a{p['pair_id']}", "text": p["text_a"]} for p in pairs],
                                    Path(tmp) / "alone")
    print(f"\nsemantic_dedup (all-MiniLM-L6-v2, eps {eps}, k {manifest['clusters']}): GSM8K pairs found "
          f"{found / len(pairs):.3f} ({found}/{len(pairs)}); unrelated problems removed "
          f"{len(gone_alone) / len(pairs):.3f} ({len(gone_alone)}/{len(pairs)})")

    msrp = [json.loads(line) for line in (NEARDUP / "msrp" / "msrp_pairs.jsonl").read_text().rstrip("\n").split("\n")]
    a, _ = embed([m["sentence_a"] for m in msrp])
    b, _ = embed([m["sentence_b"] for m in msrp])
    cos = (a * b).sum(axis=1)
    labels = np.asarray([m["label"] for m in msrp])
    ranks = cos.argsort().argsort() + 1  # ROC AUC by the rank-sum (Mann-Whitney) identity
    n_pos, n_neg = labels.sum(), len(labels) - labels.sum()
    auc = (ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    print(f"MSRP: ROC AUC of embedding cosine for paraphrase vs not: {auc:.3f} ({len(msrp):,} pairs)")


def source_family(source: str) -> str:
    if source.startswith("julenminer/"):
        return "usenet"
    if source.split("/")[0] in {"adbar", "scrapinghub", "postlight", "mozilla"}:
        return "html pages"
    return "CC / C4"


def line_dedup_report() -> None:
    """line_dedup (line, keep_first; line, none kept; paragraph) on the web sample."""
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.pipeline.config import resolve
    from winnow.pipeline.run import run_pipeline

    def squash(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip()

    files = sorted(str(p) for p in WEB.rglob("*.jsonl"))
    configs = {"line (default)": {}, "line, keep_first false": {"keep_first": False},
               "paragraph": {"unit": "paragraph"}}
    rows, top, families = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, params in configs.items():
            out = Path(tmp) / str(len(rows))
            cfg = resolve({"input": {"paths": files}, "output": str(out), "outputs": {"dataset": False},
                           "engine": {"n_workers": 2, "progress": False}, "stages": [{"line_dedup": params}]})
            run_pipeline(cfg)
            stage = out / "01-line_dedup"
            m = json.loads((stage / "_manifest.json").read_text())
            inp = pa.concat_tables(pq.read_table(p) for p in sorted((out / "00-ingest").glob("train-*.parquet")))
            kept = pa.concat_tables(pq.read_table(p) for p in sorted(stage.glob("train-*.parquet")))
            rej = pa.concat_tables(pq.read_table(p) for p in sorted((stage / "rejected").glob("*.parquet")))
            after = dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist(), strict=True))
            snippets = {"boilerplate_snippets": [0, 0], "main_content_snippets": [0, 0]}  # present, removed
            for doc in inp.select(["id", "text", *snippets]).to_pylist():
                before, now = squash(doc["text"]), squash(after.get(doc["id"], ""))
                for col, counts in snippets.items():
                    for snip in doc[col] or []:
                        if squash(snip) in before:
                            counts[0] += 1
                            counts[1] += squash(snip) not in now
            t, stats = m["totals"], m["totals"]["stats"]
            chars_in = sum(len(x) for x in inp.column("text").to_pylist())
            rows.append((label, t["rows_in"], int(stats["documents_changed"]), m["units_seen"],
                         int(stats["units_removed"]), int(stats["chars_removed"]), chars_in, t["rejected"],
                         m["frequent_units"], snippets, m["fit_seconds"], m["wall_seconds"]))
            if not params:
                top = m["top_units"][:10]
                removed = pa.concat_tables([kept.select(["id", "line_dedup_removed_units", "line_dedup_removed_chars"]),
                                            rej.select(["id", "line_dedup_removed_units", "line_dedup_removed_chars"])])
                src = dict(zip(inp.column("id").to_pylist(), inp.column("source").to_pylist(), strict=True))
                texts = dict(zip(inp.column("id").to_pylist(), inp.column("text").to_pylist(), strict=True))
                rejected_ids = set(rej.column("id").to_pylist())
                for doc_id, units, chars in zip(*(removed.column(c).to_pylist() for c in removed.column_names),
                                                strict=True):
                    f = families.setdefault(source_family(src[doc_id]), [0, 0, 0, 0, 0, 0])
                    text = texts[doc_id]
                    f[0] += 1
                    f[1] += text.count("\n") + 1
                    f[2] += units
                    f[3] += len(text)
                    f[4] += chars
                    f[5] += doc_id in rejected_ids
    print(f"\nline_dedup on the web sample ({len(files)} files, {rows[0][1]:,} documents; min_count 1, "
          f"min_doc_chars 50, min_unit_chars 2, datatrove normalisation)")
    print(f"{'':26s}{'docs changed':>13s}{'units in':>10s}{'removed':>16s}{'chars removed':>22s}{'rejected':>10s}"
          f"{'frequent':>10s}   trafilatura snippets removed: boilerplate / main content   fit / wall s")
    for (label, _, changed, units, removed, chars, chars_in, rejected, frequent, sn, fit_s, wall_s) in rows:
        b, c = sn["boilerplate_snippets"], sn["main_content_snippets"]
        print(f"{label:26s}{changed:13,d}{units:10,d}{removed:9,d} ({removed / units:4.1%}){chars:12,d} "
              f"({chars / chars_in:4.1%}){rejected:10,d}{frequent:10,d}   {b[1] / b[0]:.3f} ({b[1]}/{b[0]})"
              f" / {c[1] / c[0]:.3f} ({c[1]}/{c[0]}){'':14s}{fit_s:.1f} / {wall_s:.1f}")
    print(f"\nline (default) by source: {'docs':>7s}{'lines':>10s}{'removed':>16s}{'chars removed':>16s}{'rejected':>10s}")
    for fam, (docs, lines, units, chars_in, chars, rejected) in sorted(families.items()):
        print(f"{fam:25s} {docs:7,d}{lines:10,d}{units:9,d} ({units / lines:4.1%})"
              f"{chars / chars_in:15.1%}{rejected:10,d}")
    print("\ntop 10 repeated lines (documents holding them):")
    for u in top:
        print(f"{u['documents']:7,d}  {u['text'][:70]!r}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line-dedup-only", action="store_true", help="run only the line_dedup section")
    ap.add_argument("--minhash-only", action="store_true", help="run only the MinHash section (both tools)")
    args = ap.parse_args()
    if args.line_dedup_only:
        line_dedup_report()
    else:
        main(minhash_only=args.minhash_only)
