"""What must not be trained on, measured: the `decontaminate` stage with HellaSwag, PIQA and GSM8K
indexed, and the `pii` stage beside datatrove's `PIIFormatter`.

decontaminate: the index of all three benchmarks beside the repository (../shared/data/eval) is
built once (seconds; its n-grams, its bytes as shipped to a worker, bytes per million n-grams),
then `DecontaminateStage.apply` runs over the web documents in one process, one core: docs/s for
`action: drop`, and for `action: remove` on the same documents with one GSM8K question pasted
into every 20th (so the span-cutting path runs); documents flagged per benchmark.

    python bench/contamination.py decontaminate      # all 13,255 web documents

pii: both read the same documents (all of ../shared/data/web unless --limit) in one process, one
core, and replace what they find; docs/s for each:
  - datatrove: `PIIFormatter().format(text)` per document (e-mails and public IPv4 addresses);
  - winnow:    `PIIStage.apply` on an Arrow table of the same documents (detection, redaction,
               `pii_found`, the byte account), with `kinds: [email, ip]` (the same work as datatrove:
               the ratio compares these two) and with all five kinds.
Then what each found per kind on the same text (datatrove's own patterns and validator, counted),
and how many documents only one of them touched.

    python bench/contamination.py pii                 # all 13,255 web documents
    python bench/contamination.py pii --limit 2000
Last line: `ratio winnow/datatrove: X.XX` (docs/s, e-mail + IP, winnow over datatrove).
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEB = REPO.parent / "shared" / "data" / "web"


def read_web(limit: int | None) -> list[tuple[str, str]]:
    docs = []
    for path in sorted(glob.glob(str(WEB / "**" / "*.jsonl"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                docs.append((str(row["id"]), row["text"]))
                if limit and len(docs) == limit:
                    return docs
    return docs


def time_datatrove(texts: list[str]) -> tuple[float, list[str]]:
    from datatrove.pipeline.formatters import PIIFormatter

    formatter = PIIFormatter()
    t0 = time.perf_counter()
    out = [formatter.format(t) for t in texts]
    return time.perf_counter() - t0, out


def datatrove_counts(texts: list[str]) -> tuple[Counter, set[int]]:
    """What PIIFormatter replaces, per kind (its own regexes and public-IP validator), and in which
    documents."""
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.formatters.pii import public_ip_validator

    f = PIIFormatter()
    counts, touched = Counter(), set()
    for i, t in enumerate(texts):
        emails = len(f.emails_replacer.regex.findall(t))
        # datatrove replaces e-mails first, then looks for IPs in what is left
        rest = f.emails_replacer.regex.sub("", t)
        ips = sum(public_ip_validator(m.group(0)) for m in f.ip_replacer.regex.finditer(rest))
        counts["email"] += emails
        counts["ip"] += ips
        if emails or ips:
            touched.add(i)
    return counts, touched


def time_winnow(docs: list[tuple[str, str]], kinds: list[str]):
    import pyarrow as pa

    from winnow.filters.pii import PIIParams, PIIStage

    table = pa.table({"id": pa.array([d[0] for d in docs], pa.string()),
                      "text": pa.array([d[1] for d in docs], pa.string())})
    stage = PIIStage(PIIParams(kinds=kinds))
    t0 = time.perf_counter()
    kept, _, _ = stage.apply(table, None)
    return time.perf_counter() - t0, kept


def winnow_counts(kept, kinds: list[str]) -> tuple[Counter, set[int]]:
    counts, touched = Counter(), set()
    for i, found in enumerate(kept.column("pii_found").to_pylist()):
        for kind in kinds:
            counts[kind] += found[kind]
        if any(found[k] for k in kinds):
            touched.add(i)
    return counts, touched


def bench_pii(limit: int | None) -> None:
    docs = read_web(limit)
    texts = [t for _, t in docs]
    n = len(docs)
    print(f"pii: {n} documents, {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB, one process")
    dt_seconds, _ = time_datatrove(texts)
    w2_seconds, kept2 = time_winnow(docs, ["email", "ip"])
    all_kinds = ["email", "ip", "phone", "credit_card", "iban"]
    w5_seconds, kept5 = time_winnow(docs, all_kinds)
    dt_counts, dt_docs = datatrove_counts(texts)
    w2_counts, w2_docs = winnow_counts(kept2, ["email", "ip"])
    w5_counts, _ = winnow_counts(kept5, all_kinds)
    print(f"{'':32}{'seconds':>9}{'docs/s':>10}")
    for label, seconds in (("datatrove PIIFormatter", dt_seconds), ("winnow pii [email, ip]", w2_seconds),
                           ("winnow pii (all five kinds)", w5_seconds)):
        print(f"{label:32}{seconds:9.2f}{n / seconds:10.0f}")
    print("found per kind (spans):")
    print(f"{'kind':14}{'datatrove':>11}{'winnow':>9}")
    for kind in all_kinds:
        dt = dt_counts[kind] if kind in ("email", "ip") else "-"
        print(f"{kind:14}{dt!s:>11}{w5_counts[kind]:>9}")
    print(f"documents touched (email, ip): datatrove {len(dt_docs)}, winnow {len(w2_docs)}, "
          f"only datatrove {len(dt_docs - w2_docs)}, only winnow {len(w2_docs - dt_docs)}")
    print(f"ratio winnow/datatrove: {dt_seconds / w2_seconds:.2f}")


EVAL = REPO.parent / "shared" / "data" / "eval"
BENCHMARKS = [{"name": "hellaswag", "paths": [str(EVAL / "hellaswag" / "*.jsonl")], "fields": ["ctx", "endings"]},
              {"name": "piqa", "paths": [str(EVAL / "piqa" / "valid.jsonl")], "fields": ["goal", "sol1", "sol2"]},
              {"name": "gsm8k", "paths": [str(EVAL / "gsm8k" / "test.jsonl")], "fields": ["question", "answer"]}]


def bench_decontaminate(limit: int | None) -> None:
    import pyarrow as pa

    from winnow.filters.decontaminate import DecontaminateParams, DecontaminateStage, index_size

    docs = read_web(limit)
    n = len(docs)
    t0 = time.perf_counter()
    state = DecontaminateStage(DecontaminateParams(benchmarks=BENCHMARKS)).fit([], None)
    fit_seconds = time.perf_counter() - t0
    size = index_size(state)
    print(f"decontaminate: {n} documents, {sum(len(t.encode()) for _, t in docs) / 1e6:.1f} MB, one process")
    for name, c in state.counts.items():
        print(f"  {name:10} items {c['items']:>6,}  indexed {c['items_indexed']:>6,}  skipped {c['items_skipped']:>5,}"
              f"  values skipped {c['texts_skipped']:>5,}  n-grams {c['ngrams']:>8,}")
    print(f"index: {size['ngrams']:,} n-grams built in {fit_seconds:.1f} s; {size['array_bytes'] / 1e6:.1f} MB of "
          f"arrays, {size['pickled_bytes'] / 1e6:.1f} MB shipped to each worker")
    print(f"index memory per million n-grams: {size['bytes_per_million_ngrams'] / 1e6:.1f} MB")
    question = json.loads((EVAL / "gsm8k" / "test.jsonl").open().readline())["question"]
    planted = [(i, f"{t}\n\n{question}" if k % 20 == 0 else t) for k, (i, t) in enumerate(docs)]
    print(f"{'':40}{'seconds':>9}{'docs/s':>10}{'flagged':>9}")
    rates = {}
    for action, rows in (("drop", docs), ("remove", planted)):
        table = pa.table({"id": pa.array([d[0] for d in rows], pa.string()),
                          "text": pa.array([d[1] for d in rows], pa.string())})
        stage = DecontaminateStage(DecontaminateParams(benchmarks=BENCHMARKS, action=action))
        t0 = time.perf_counter()
        kept, rejected, removed = stage.apply(table, state)
        seconds = time.perf_counter() - t0
        flagged = stage.shard_stats(table, kept, rejected)
        label = f"decontaminate {action}" + (" (1 in 20 planted)" if action == "remove" else "")
        rates[action] = n / seconds
        print(f"{label:40}{seconds:9.2f}{n / seconds:10.0f}{int(flagged['documents']):9}  "
              + ", ".join(f"{k.split(':')[1]} {int(v)}" for k, v in flagged.items() if k.startswith("documents:")))
    print(f"decontaminate docs/s: drop {rates['drop']:.0f}, remove {rates['remove']:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["pii", "decontaminate"], help="which measurement")
    ap.add_argument("--limit", type=int, default=None, help="the first N web documents only")
    args = ap.parse_args()
    if args.part == "pii":
        bench_pii(args.limit)
    else:
        bench_decontaminate(args.limit)


if __name__ == "__main__":
    main()
