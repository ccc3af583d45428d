"""Tokenize throughput against datatrove's DocumentTokenizer, and packing speed and quality.

1. Trains one byte-level BPE (32k) on the web sample and saves it as tokenizer.json.
2. Tokenizes all of ../shared/data/web with it, each side in its own process, N processes each, as a
   user runs each tool (wall time of the whole child process, start-up included), and peak RSS of each
   process tree:
   - datatrove: interpreter start and imports, LocalPipelineExecutor(workers=N) forking its pool,
     JsonlReader (each line parsed once) → DocumentTokenizer(eos, no shuffling: `encode_batch` with
     offsets, ids packed per document and written to .ds files with their index);
   - winnow: interpreter start and imports, `run_pipeline` (= `winnow run`) starting a LocalCluster
     (scheduler + N worker processes), the ingest stage (JSON to Parquet shards with ids, manifests,
     checksummed markers), the tokenize stage (tokenizer=that file: ids to Parquet, manifests,
     markers), the cluster's shutdown. The winnow line also prints the two stages' own wall seconds.
   `output` is what each side wrote: datatrove's token files and index (ids only), winnow's tokenize
   shards (Parquet: the ids with the text and every input column).
3. Packs winnow's tokenized shards with concat, best_fit and bm25 (in this process): documents/s,
   padding rate, and how related the documents sharing a row are (mean TF-IDF cosine).

    python bench/tokens.py [--workers 2] [--seq-len 1024] [--repeats 3]
Last line: `ratio winnow/datatrove: X.XX` (with --repeats, the median of the pairs' ratios).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from winnow.pipeline.measure import link_inputs, median_of_pairs, run_measured

REPO = Path(__file__).resolve().parents[1]
WEB = REPO.parent / "shared" / "data" / "web"
EOS = "<|endoftext|>"


def child_datatrove(files: list[str], workers: int, tokenizer: str, out: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    links = link_inputs(files, out / "in")
    LocalPipelineExecutor(pipeline=[JsonlReader(links), DocumentTokenizer(
        str(out / "tok"), tokenizer_name_or_path=tokenizer, eos_token=EOS, shuffle_documents=False)],
        tasks=len(files), workers=workers, logging_dir=str(out / "logs")).run()
    n_tokens = sum(p.stat().st_size for p in (out / "tok").glob("*.ds")) // 2
    print(json.dumps({"tokens": n_tokens, "output_bytes": sum(p.stat().st_size for p in (out / "tok").iterdir())}))


def child_winnow(files: list[str], workers: int, tokenizer: str, out: Path) -> None:
    from winnow.pipeline.config import resolve
    from winnow.pipeline.run import run_pipeline

    cfg = resolve({"input": {"paths": files}, "output": str(out / "w"), "outputs": {"dataset": False},
                   "engine": {"n_workers": workers, "progress": False},
                   "stages": [{"tokenize": {"tokenizer": tokenizer}}]})
    result = run_pipeline(cfg)
    stage = result.stages[-1]
    print(json.dumps({"tokens": _count_tokens(out / "w" / stage.dirname), "stage_seconds": stage.seconds,
                      "output_bytes": sum(p.stat().st_size for p in (out / "w" / stage.dirname).glob("train-*.parquet")),
                      "ingest_seconds": result.stages[0].seconds, "dir": str(out / "w" / stage.dirname)}))


def _count_tokens(stage_dir: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return sum(int(pc.sum(pq.read_table(p, columns=["n_tokens"]).column(0)).as_py())
               for p in stage_dir.glob("train-*.parquet"))


def pack_report(stage_dir: Path, seq_len: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.tokenize.metrics import row_relatedness
    from winnow.tokenize.pack import PackParams, PackStage

    shards = [pq.read_table(p) for p in sorted(stage_dir.glob("train-*.parquet"))]
    n_docs = sum(s.num_rows for s in shards)
    print(f"\npacking {n_docs:,} documents from {len(shards)} shards into rows of {seq_len} (per shard, one process)")
    for strategy in ("concat", "best_fit", "bm25"):
        stage = PackStage(PackParams(seq_len=seq_len, strategy=strategy))
        t0 = time.perf_counter()
        packed = [stage.apply(s, 0)[0] for s in shards]
        seconds = time.perf_counter() - t0
        rows = sum(p.num_rows for p in packed)
        pad = sum(int(np.sum(p.column("n_pad").to_numpy())) for p in packed) / (rows * seq_len)
        cut = sum(sum(len(set(d)) < len(d) or 0 for d in p.column("doc_ids").to_pylist()) for p in packed)
        related = row_relatedness(pa.concat_tables(packed), pa.concat_tables(shards))
        split_docs = sum(len(ids) for ids in pa.concat_tables(packed).column("doc_ids").to_pylist()) - n_docs
        print(f"  {strategy:9s} {n_docs / seconds:9.0f} docs/s  rows {rows:6,d}  padding {100 * pad:5.2f}%  "
              f"truncated 0 tokens  extra segments from splits {split_docs:5,d}  row relatedness {related:.3f}"
              + (f"  ({cut} rows hold two pieces of one doc)" if cut else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=1,
                    help="datatrove and winnow runs in turn; the printed ratio is their median (one pair's "
                         "ratio spreads over 1.2-1.5 on a shared 2-core machine)")
    ap.add_argument("--child", choices=["datatrove", "winnow"], help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--file-list", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.child:
        fn = child_datatrove if args.child == "datatrove" else child_winnow
        fn(json.loads(args.file_list), args.workers, args.tokenizer, Path(args.out))
        return

    from winnow.tokenize.tokenizer import train_bpe

    files = sorted(str(p) for p in WEB.rglob("*.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        texts = (json.loads(line)["text"] for f in files for line in Path(f).read_text().rstrip("\n").split("\n"))
        t0 = time.perf_counter()
        tok = train_bpe(texts, args.vocab, EOS)
        tok_path = str(Path(tmp) / "tokenizer.json")
        tok.save(tok_path)
        print(f"{len(files)} files; BPE {args.vocab} trained in {time.perf_counter() - t0:.1f} s; "
              f"{args.workers} processes each")
        ratios = []
        for repeat in range(args.repeats):
            results = {}
            for side in ("datatrove", "winnow"):
                out = Path(tmp) / f"{side}-{repeat}"
                out.mkdir()
                r = run_measured([sys.executable, __file__, "--child", side, "--workers", str(args.workers),
                                  "--tokenizer", tok_path, "--out", str(out), "--file-list", json.dumps(files)])
                results[side] = r
                stage = (f"  (ingest stage {r['ingest_seconds']:.1f} s, tokenize stage alone "
                         f"{r['stage_seconds']:.1f} s: {r['tokens'] / r['stage_seconds']:,.0f} tokens/s)"
                         if "stage_seconds" in r else "")
                print(f"  {side:9s} {r['tokens'] / r['seconds']:12,.0f} tokens/s  {r['tokens']:,} tokens  "
                      f"{r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  output "
                      f"{r['output_bytes'] / 2**20:5.1f} MiB{stage}", flush=True)
            ratios.append((results["winnow"]["tokens"] / results["winnow"]["seconds"])
                          / (results["datatrove"]["tokens"] / results["datatrove"]["seconds"]))
        pack_report(Path(results["winnow"]["dir"]), args.seq_len)
    ratio, each = median_of_pairs(ratios)
    print(f"ratio winnow/datatrove: {ratio:.2f}{each}")


if __name__ == "__main__":
    main()
