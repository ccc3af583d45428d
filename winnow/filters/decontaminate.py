"""The `decontaminate` stage: find the evaluation benchmarks' items in the corpus, then drop the
documents that hold one (`action: drop`) or cut the matching spans out of them (`action: remove`).

Matching is winnow.pipeline.ngrams' (one module for this stage and `winnow eval`'s held-out checks):
word 13-grams after NFKC, lower-casing and punctuation removal, so a pasted item that was re-cased,
re-punctuated or re-wrapped is still found, and a shared phrase shorter than `ngram` words is not.
Each field value of a benchmark record is indexed on its own (each element of a list field, such as
HellaSwag's `endings`, too); a value shorter than `ngram` words but with at least `min_item_words`
is matched whole; shorter values are skipped and counted. An *item* is one record of a benchmark (a
question with its answers), numbered from 0 over its files in sorted order; `contaminated_by` names
the items a document matched, as `"<benchmark>:<item>"`.

The index is built once on the driver (`fit`) and the engine broadcasts it to each worker once. It
holds exact hashes, 8 bytes per n-gram plus a 4-byte text number (about 12 MB per million n-grams;
HellaSwag, PIQA and GSM8K together: 1.0 million n-grams, 12.3 MB). No Bloom filter: an exact hash
names the item that leaked, which a Bloom filter cannot, and a Bloom filter only pays where the
index would not fit a worker's memory (hundreds of millions of n-grams), which evaluation sets are
not; a 64-bit hash's false-positive rate per lookup is about n-grams / 2**64, nil.

`action: remove` cuts each run of matched words, from the first matched word's first character to
the last one's last character (the host text around and between such runs stays), declared as cuts
by reason `decontaminate:<benchmark>` (`Stage.split_edited`). Word positions in the original text
come from its runs of letters and digits, normalised one by one; where that does not give the very
words the matcher saw (NFKC composes a letter with a combining mark that follows it, as in NFD text),
the span cannot be located exactly and the document is dropped instead (reason `contaminated`,
counted as `unaligned` in the manifest).

The manifest names, per benchmark, the items indexed and skipped, the n-grams, and which items
appear in the corpus with one example each (the item's text and a matching document's id): it reads
the `contaminated_by` column of the stage's own output after the shards ran, so a resumed run reports
the same. The benchmark files' content is part of every shard's input fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from winnow.pipeline.errors import ConfigError, InputPathError
from winnow.pipeline.ngrams import (
    MIN_ITEM_WORDS,
    NGRAM,
    NgramIndex,
    ngram_hashes,
    normalize,
    word_hashes,
    words,
)
from winnow.pipeline.stage import Context, Cuts, ShardRef, Stage

COLUMN = "contaminated_by"
COLUMN_TYPE = pa.list_(pa.string())
REASON = "contaminated"
EXAMPLES = 20            # leaked items shown with their text in the manifest, per benchmark
EXAMPLE_CHARS = 400      # of each item's text
SCAN_ROWS = 5_000_000    # output rows whose `contaminated_by` the manifest reads at most
_WORD_RUN = re.compile(r"[^\W_]+")   # letters and digits: what normalize() keeps between separators


class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="what `contaminated_by` and the manifest call it, e.g. hellaswag")
    paths: list[str] = Field(description="JSONL, Parquet or `datasets` folders: files, folders or globs")
    fields: list[str] = Field(description="the record fields to index; a list field's elements each on its own")

    @field_validator("paths", "fields")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one")
        return value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or ":" in value:
            raise ValueError(f"a benchmark name must be non-empty and hold no ':' ({value!r})")
        return value


class DecontaminateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    benchmarks: list[BenchmarkSpec] = Field(description="the evaluation sets that must not be trained on")
    ngram: int = Field(NGRAM, ge=1, description="word n-gram length (13: GPT-3, DCLM, datatrove)")
    min_item_words: int | None = Field(MIN_ITEM_WORDS, ge=1, description="a value shorter than `ngram` words "
                                       "but this long is matched whole; shorter ones are skipped and counted; "
                                       "null: skip every value shorter than `ngram`")
    action: Literal["drop", "remove"] = Field("drop", description="drop: reject the document (reason "
                                              "contaminated); remove: cut the matching spans out of it")

    @field_validator("benchmarks")
    @classmethod
    def _named_once(cls, value: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
        if not value:
            raise ValueError("name at least one benchmark: {name, paths, fields}")
        names = [b.name for b in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"benchmark names must differ: {', '.join(twice)} given twice")
        return value


@dataclass
class Benchmark:
    """One benchmark read: its indexable texts, the item (record) each belongs to, each item's place."""

    name: str
    texts: list[str]
    text_items: list[int]
    places: list[str]          # item -> "file:line" (JSONL) or "file:row"
    files: list[str]

    @property
    def n_items(self) -> int:
        return len(self.places)

    def item_text(self, item: int) -> str:
        return " | ".join(t for t, i in zip(self.texts, self.text_items, strict=True) if i == item)


def benchmark_files(spec: BenchmarkSpec) -> list[tuple[str, str]]:
    """(file, format) of a benchmark, in order; a path that reads nothing is an error naming it."""
    from winnow.pipeline.readers import discover

    found = []
    for i, path in enumerate(spec.paths):
        try:
            found += discover([path], "auto")
        except InputPathError as e:
            raise ConfigError(f"benchmark {spec.name!r}: {e.reason}", key=f"decontaminate.benchmarks.{spec.name}"
                              f".paths[{i}]") from None
    unknown = [f for f, fmt in found if fmt not in ("jsonl", "parquet", "hf")]
    if unknown:
        raise ConfigError(f"benchmark {spec.name!r}: {unknown[0]} is not JSONL, Parquet or a `datasets` folder",
                          key=f"decontaminate.benchmarks.{spec.name}.paths")
    return found


def _records(path: str, fmt: str):
    """(line or row number, record dict) of one benchmark file."""
    from winnow.pipeline.readers import Part, Unreadable, plan_hf, read_hf, read_jsonl, read_parquet

    if fmt == "jsonl":
        import orjson

        for line, raw in read_jsonl(Part(path, "jsonl")):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise ValueError(f"line {line}: not JSON ({e})") from None
            yield line, record
        return
    parts = plan_hf(path) if fmt == "hf" else [Part(path, "parquet")]
    row = 0
    for part in parts:
        for _, record in (read_hf(part) if fmt == "hf" else read_parquet(part)):
            row += 1
            if isinstance(record, Unreadable):
                raise ValueError(f"row {row}: {record.detail}")
            yield row, record


def read_benchmark(spec: BenchmarkSpec) -> Benchmark:
    """Every field value of every record (a list field: each element), with its item number."""
    bench = Benchmark(spec.name, [], [], [], [])
    for path, fmt in benchmark_files(spec):
        bench.files.append(path)
        try:
            for place, record in _records(path, fmt):
                if not isinstance(record, dict):
                    raise ValueError(f"line {place}: a {type(record).__name__}, not an object")
                item = bench.n_items
                bench.places.append(f"{path}:{place}")
                for name in spec.fields:
                    if name not in record:
                        raise ValueError(f"line {place}: no field {name!r} (it has {', '.join(map(str, record))})")
                    value = record[name]
                    values = value if isinstance(value, list) else [value]
                    for v in values:
                        if v is not None and not isinstance(v, str):
                            raise ValueError(f"line {place}: field {name!r} holds a {type(v).__name__}, "
                                             "not a string or a list of strings")
                        bench.texts.append(v or "")
                        bench.text_items.append(item)
        except (ValueError, OSError) as e:
            raise ConfigError(f"benchmark {spec.name!r}, {path}: {e}",
                              key=f"decontaminate.benchmarks.{spec.name}") from None
    return bench


def benchmarks_digest(specs: list[BenchmarkSpec]) -> str:
    """A hash of every benchmark file's bytes (a `datasets` folder: its Arrow files)."""
    h = hashlib.blake2b(digest_size=16)
    for spec in specs:
        h.update(spec.name.encode() + b"\0")
        for path, fmt in benchmark_files(spec):
            files = [p for p in sorted(Path(path).rglob("*")) if p.is_file()] if fmt == "hf" else [Path(path)]
            for f in files:
                h.update(str(f).encode() + b"\0" + hashlib.blake2b(f.read_bytes(), digest_size=16).digest())
    return h.hexdigest()


@dataclass
class DecontaminationIndex:
    """What every worker gets: one n-gram index over all benchmarks' texts and, per indexed text, its
    benchmark and item. Texts themselves stay on the driver."""

    index: NgramIndex
    names: list[str]
    text_benchmark: np.ndarray     # int16, per indexed text
    text_item: np.ndarray          # int32, per indexed text
    counts: dict[str, dict[str, int]]

    @property
    def nbytes(self) -> int:
        arrays = [*self.index.hashes.values(), *self.index.items.values(), self.text_benchmark, self.text_item]
        return int(sum(a.nbytes for a in arrays))

    def labels(self, texts: set[int]) -> list[str]:
        """`"<benchmark>:<item>"` of matched text numbers, benchmarks in config order, items ascending."""
        pairs = {(int(self.text_benchmark[t]), int(self.text_item[t])) for t in texts}
        return [f"{self.names[b]}:{i}" for b, i in sorted(pairs)]


def build_index(benchmarks: list[Benchmark], n: int, min_words: int | None) -> DecontaminationIndex:
    texts, bench_of, item_of, counts = [], [], [], {}
    for b, bench in enumerate(benchmarks):
        texts += bench.texts
        bench_of += [b] * len(bench.texts)
        item_of += bench.text_items
    index = NgramIndex.build(texts, n=n, min_words=min_words)
    skipped = np.zeros(len(texts), bool)
    skipped[index.skipped] = True
    bench_arr, item_arr = np.asarray(bench_of, np.int16), np.asarray(item_of, np.int32)
    for b, bench in enumerate(benchmarks):
        mine = bench_arr == b
        indexed_items = np.unique(item_arr[mine & ~skipped])
        counts[bench.name] = {"items": bench.n_items, "items_indexed": int(len(indexed_items)),
                              "items_skipped": bench.n_items - int(len(indexed_items)),
                              "texts": int(mine.sum()), "texts_indexed": int((mine & ~skipped).sum()),
                              "texts_skipped": int((mine & skipped).sum()),
                              "ngrams": int(sum(np.isin(index.items[length], np.flatnonzero(mine)).sum()
                                                for length in index.items))}
    return DecontaminationIndex(index, [b.name for b in benchmarks], bench_arr, item_arr, counts)


def word_spans(text: str) -> list[tuple[int, int]] | None:
    """The character span in `text` of each word `ngrams.words(text)` gives, or None where the words of
    its letter-and-digit runs, normalised one run at a time, are not exactly those words."""
    spans, found = [], []
    for m in _WORD_RUN.finditer(text):
        for w in normalize(m.group()).split():
            found.append(w)
            spans.append((m.start(), m.end()))
    return spans if found == words(text) else None


def matched_runs(hashed: np.ndarray, state: DecontaminationIndex) -> list[tuple[int, int, int]]:
    """(first word, last word + 1, benchmark) of each run of words covered by an indexed n-gram; the
    benchmark is that of the n-gram that starts the run."""
    covered = np.full(len(hashed), -1, np.int32)
    for length in state.index.hashes:
        grams = ngram_hashes(hashed, length)
        if not len(grams):
            continue
        pos = state.index.positions(grams, length)
        for p in np.flatnonzero(pos >= 0).tolist():
            bench = int(state.text_benchmark[state.index.items[length][pos[p]]])
            window = covered[p:p + length]
            window[window < 0] = bench
    runs, start = [], None
    for w in range(len(covered) + 1):
        inside = w < len(covered) and covered[w] >= 0
        if inside and start is None:
            start = w
        elif not inside and start is not None:
            runs.append((start, w, int(covered[start])))
            start = None
    return runs


class DecontaminateStage(Stage):
    name = "decontaminate"
    Params = DecontaminateParams
    edits_text = True

    def inputs(self, upstream: list[ShardRef], ctx: Context) -> list[ShardRef]:
        """The upstream shards, their fingerprints joined with the benchmark files' content."""
        self._stage_dir = Path(ctx.workdir).parent   # manifest_extra reads this stage's output there
        digest = benchmarks_digest(self.params.benchmarks)
        return [ShardRef(ref.name, ref.path, hashlib.blake2b(f"{ref.fingerprint}:{digest}".encode(),
                                                             digest_size=16).hexdigest(), ref.meta)
                for ref in upstream]

    def fit(self, shards: list[ShardRef], ctx: Context) -> DecontaminationIndex:
        p: DecontaminateParams = self.params
        return build_index([read_benchmark(b) for b in p.benchmarks], p.ngram, p.min_item_words)

    def apply(self, table: pa.Table, state: DecontaminationIndex) -> tuple[pa.Table, pa.Table, pa.Table]:
        p: DecontaminateParams = self.params
        texts = table.column("text").to_pylist()
        n = len(texts)
        keep = np.ones(n, bool)
        reasons: list[str | None] = [None] * n
        new_texts, labels = list(texts), [[] for _ in range(n)]
        cuts = Cuts()
        for i, text in enumerate(texts):
            hashed = word_hashes(words(text or ""))
            matched = state.index.matches_words(hashed) if len(hashed) else set()
            if not matched:
                continue
            labels[i] = state.labels(matched)
            spans = word_spans(text) if p.action == "remove" else None
            if spans is None:   # drop, or a remove whose words cannot be located exactly
                keep[i], reasons[i] = False, REASON
                continue
            pieces = []
            for first, last, bench in matched_runs(hashed, state):
                start, end = spans[first][0], spans[last - 1][1]
                pieces.append((start, end))
                cuts.add(i, f"decontaminate:{state.names[bench]}", len(text[start:end].encode()), text[start:end])
            for start, end in reversed(pieces):
                new_texts[i] = new_texts[i][:start] + new_texts[i][end:]
        if COLUMN in table.column_names:   # an earlier decontaminate stage: the column describes this one
            table = table.drop_columns([COLUMN])
        table = table.append_column(COLUMN, pa.array(labels, COLUMN_TYPE))
        return self.split_edited(table, pa.array(new_texts, pa.string()), keep, reasons, cuts)

    def shard_stats(self, data: pa.Table, kept: pa.Table, rejected: pa.Table) -> dict[str, float]:
        """Documents that matched each benchmark (`documents:<name>`), and those `remove` had to drop
        because their words could not be located (`unaligned`)."""
        out = {f"documents:{b.name}": 0.0 for b in self.params.benchmarks}
        out["documents"] = 0.0
        for t in (kept, rejected):
            if not t.num_rows or COLUMN not in t.column_names:
                continue
            for labels in t.column(COLUMN).to_pylist():
                if labels:
                    out["documents"] += 1
                    for name in dict.fromkeys(label.rsplit(":", 1)[0] for label in labels):
                        out[f"documents:{name}"] += 1
        if self.params.action == "remove":
            out["unaligned"] = float(rejected.num_rows)
        return out

    def manifest_extra(self, state: DecontaminationIndex) -> dict:
        p: DecontaminateParams = self.params
        ngrams = len(state.index)
        stage_dir = getattr(self, "_stage_dir", None)
        leaked = leaked_items(stage_dir) if stage_dir is not None else {}
        benchmarks = {}
        for spec in p.benchmarks:
            found = leaked.get(spec.name, {})
            entry = {**state.counts[spec.name], "items_leaked": len(found), "leaked_items": sorted(found)}
            if found:
                bench = read_benchmark(spec)   # item texts stay on the driver, read again only here
                entry["examples"] = [{"item": item, "where": bench.places[item],
                                      "text": bench.item_text(item)[:EXAMPLE_CHARS],
                                      "document": found[item][0], "documents": found[item][1]}
                                     for item in sorted(found)[:EXAMPLES]]
            benchmarks[spec.name] = entry
        return {"benchmarks": benchmarks,
                "index": {"ngrams": ngrams, "texts": len(state.text_item), "bytes": state.nbytes,
                          "bytes_per_million_ngrams": round(state.nbytes / ngrams * 1e6) if ngrams else None,
                          "ngram": p.ngram, "min_item_words": p.min_item_words}}


def leaked_items(stage_dir: Path) -> dict[str, dict[int, tuple[str, int]]]:
    """benchmark -> item -> (the first matching document's id, how many documents matched), from the
    `contaminated_by` column of a decontaminate stage folder's kept and rejected rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(stage_dir.glob("train-*.parquet")) + sorted((stage_dir / "rejected").glob("*.parquet"))
    out: dict[str, dict[int, tuple[str, int]]] = {}
    read = 0
    for f in files:
        if read >= SCAN_ROWS or COLUMN not in pq.read_schema(f).names:
            continue
        t = pq.read_table(f, columns=["id", COLUMN])
        read += t.num_rows
        t = t.filter(pc.greater(pc.fill_null(pc.list_value_length(t.column(COLUMN)), 0), 0))   # most rows matched nothing
        for doc_id, labels in zip(t.column("id").to_pylist(), t.column(COLUMN).to_pylist(), strict=True):
            for label in labels or ():
                name, _, item = label.rpartition(":")
                seen = out.setdefault(name, {}).get(int(item))
                out[name][int(item)] = (doc_id, 1) if seen is None else (seen[0], seen[1] + 1)
    return out


def index_size(state: DecontaminationIndex) -> dict[str, Any]:
    """The shipped index's size: bytes, n-grams, bytes per million n-grams (bench/contamination.py)."""
    import pickle

    shipped = len(pickle.dumps(state, protocol=5))
    ngrams = len(state.index)
    return {"ngrams": ngrams, "array_bytes": state.nbytes, "pickled_bytes": shipped,
            "bytes_per_million_ngrams": shipped / ngrams * 1e6 if ngrams else float("nan")}


__all__ = ["DecontaminateStage", "DecontaminationIndex", "read_benchmark", "build_index", "word_spans",
           "leaked_items", "index_size", "COLUMN", "REASON"]
