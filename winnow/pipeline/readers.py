"""Raw input formats: find the files, cut them into shards, and yield their records.

Each format yields `(location, record)` pairs where `location` is the 1-based line (JSONL) or
row (tabular) number, and `record` is a dict, raw line bytes for JSONL (parsed by ingest so
that a broken line can be quarantined with its bytes), or `Unreadable` for a record the reader
could not decode (a .txt file that is not UTF-8, a Parquet row with invalid UTF-8 or a date out of
Python's range): ingest rejects it with the reason and the raw bytes it carries.
Large files are cut into byte ranges on line boundaries so one huge file still feeds every
worker; compressed files are cut in their decompressed stream (each shard re-decompresses up to
its start: simple, and cheap next to parsing).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from winnow.pipeline import storage
from winnow.pipeline.errors import InputPathError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".jsonl.zstd")
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
WET_SUFFIXES = (".wet", ".wet.gz", ".warc.wet", ".warc.wet.gz")
FORMAT_BY_SUFFIX = ({".parquet": "parquet", ".txt": "txt", ".md": "txt"} | {s: "jsonl" for s in JSONL_SUFFIXES}
                    | {s: "warc" for s in WARC_SUFFIXES} | {s: "wet" for s in WET_SUFFIXES})
CRAWL_FORMATS = ("warc", "wet")   # read by winnow.pipeline.warc; their readers also count skipped record types


@dataclass(frozen=True)
class Part:
    """A slice of one input: bytes [start, end) of a (decompressed) JSONL stream, rows of a table, files."""

    path: str
    fmt: str
    start: int = 0
    end: int | None = None
    first_line: int = 1
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unreadable:
    """A record a reader could not turn into a dict; ingest quarantines it as it is."""

    reason: str
    detail: str
    raw: bytes
    source: str | None = None   # the file, where a part holds several (.txt)


def _format_of(path: str) -> str | None:
    name = path.lower()
    for suffix, fmt in sorted(FORMAT_BY_SUFFIX.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return None


def discover(paths: list[str], fmt: str) -> list[tuple[str, str]]:
    """Expand files, folders and globs into a sorted list of (file, format). Every entry must yield
    at least one file: a missing file, a glob or a folder with nothing to read raises `InputPathError`
    at `input.paths[i]` (a run that reads nothing is a mistake, not an empty result)."""
    found: list[tuple[str, str]] = []
    for i, pattern in enumerate(paths):
        key = f"input.paths[{i}]"
        if storage.is_url(pattern):
            found.extend(_discover_remote(pattern, fmt, key))
            continue
        pattern = storage.local_path(pattern)
        if fmt == "hf" or (os.path.isdir(pattern) and os.path.exists(os.path.join(pattern, "state.json"))):
            found.append((pattern, "hf"))
            continue
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise InputPathError(f"no file matches the pattern {pattern!r}", file=pattern, key=key)
        before, skipped = len(found), 0
        for m in matches:
            if os.path.isdir(m):
                candidates = sorted(str(p) for p in Path(m).rglob("*") if p.is_file())
                readable = [(c, f) for c in candidates if (f := fmt if fmt != "auto" else _format_of(c)) and _format_of(c)]
                skipped += len(candidates) - len(readable)
                found.extend(readable)
            elif not os.path.exists(m):
                raise InputPathError(f"input file does not exist: {m!r}", file=m, key=key)
            else:
                f = fmt if fmt != "auto" else _format_of(m)
                if f is None:
                    raise InputPathError(f"cannot tell the format of {m!r} from its name; set input.format",
                                         file=m, key=key)
                found.append((m, f))
        if len(found) == before:   # folders (or a glob of folders) holding nothing to read
            if skipped:
                raise InputPathError(f"{pattern!r} holds {skipped} file(s), none with a suffix winnow reads "
                                     f"({' '.join(sorted(FORMAT_BY_SUFFIX))})",
                                     file=pattern, key=key)
            raise InputPathError(f"{pattern!r} holds no file", file=pattern, key=key)
    seen, unique = set(), []
    for path, f in found:
        if path not in seen:
            seen.add(path)
            unique.append((path, f))
    return unique


def _discover_remote(pattern: str, fmt: str, key: str) -> list[tuple[str, str]]:
    """`discover` for a URL: a glob, a folder (every readable file under it) or one object."""
    if fmt == "hf" or storage.exists(storage.join(pattern, "state.json")):
        return [(pattern, "hf")]
    if glob.has_magic(pattern):
        matches = storage.glob(pattern)
        if not matches:
            raise InputPathError(f"no object matches the pattern {pattern!r}", file=pattern, key=key)
    elif storage.isdir(pattern):
        matches = storage.find(pattern)
    elif storage.exists(pattern):
        return [(pattern, _known_format(pattern, fmt, key))]
    else:
        raise InputPathError(f"input object does not exist: {pattern!r}", file=pattern, key=key)
    readable = [(m, fmt if fmt != "auto" else _format_of(m)) for m in matches if _format_of(m)]
    if not readable:
        raise InputPathError(f"{pattern!r} holds {len(matches)} object(s), none with a suffix winnow reads "
                             f"({' '.join(sorted(FORMAT_BY_SUFFIX))})", file=pattern, key=key)
    return readable


def _known_format(path: str, fmt: str, key: str) -> str:
    f = fmt if fmt != "auto" else _format_of(path)
    if f is None:
        raise InputPathError(f"cannot tell the format of {path!r} from its name; set input.format", file=path, key=key)
    return f


def open_raw(path: str) -> io.BufferedIOBase:
    """The file's bytes as stored, from a local path or a URL (remote files read by byte ranges): the
    one place input files are opened (warc.py too)."""
    return storage.open_file(path, "rb")


def file_size(path: str) -> int:
    return storage.size(path)


def open_stream(path: str) -> io.BufferedIOBase:
    """A binary stream of the file's decompressed content."""
    lower = path.lower()
    if lower.endswith(".gz"):
        if not storage.is_url(path):
            return gzip.open(storage.local_path(path), "rb")
        stream = gzip.GzipFile(fileobj=open_raw(path), mode="rb")
        stream.myfileobj = stream.fileobj   # closed with the stream, as gzip.open does with the file it opens
        return stream
    if lower.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open_raw(path), closefd=True))
    return open_raw(path)


def plan_jsonl(path: str, shard_bytes: int) -> list[Part]:
    """Cut a JSONL file into parts of about `shard_bytes`, on line boundaries, with their first line number."""
    compressed = path.lower().endswith((".gz", ".zst", ".zstd"))
    if not compressed and file_size(path) <= shard_bytes:
        return [Part(path, "jsonl")]
    parts: list[Part] = []
    start, start_line = 0, 1
    pos, newlines = 0, 0  # bytes and newlines before the current block
    with open_stream(path) as f:
        while block := f.read(1 << 22):
            search_from = 0
            while True:
                target = max(start + shard_bytes - pos, search_from, 0)
                if target >= len(block):
                    break
                nl = block.find(b"\n", target)
                if nl < 0:
                    break
                parts.append(Part(path, "jsonl", start, pos + nl + 1, start_line))
                start, start_line = pos + nl + 1, newlines + block.count(b"\n", 0, nl + 1) + 1
                search_from = nl + 1
            newlines += block.count(b"\n")
            pos += len(block)
    if start < pos or not parts:
        parts.append(Part(path, "jsonl", start, None, start_line))
    return parts


def read_jsonl(part: Part) -> Iterator[tuple[int, bytes]]:
    with open_stream(part.path) as f:
        if part.start:
            if f.seekable() and not part.path.lower().endswith((".gz", ".zst", ".zstd")):
                f.seek(part.start)
            else:
                remaining = part.start
                while remaining:
                    skipped = f.read(min(remaining, 1 << 22))
                    if not skipped:
                        break
                    remaining -= len(skipped)
        data = f.read() if part.end is None else f.read(part.end - part.start)
    if part.start == 0 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]   # a UTF-8 byte order mark (Windows tools write one) is not part of the first record
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, raw in enumerate(lines):
        yield part.first_line + i, raw[:-1] if raw.endswith(b"\r") else raw   # CRLF: the line less its ending


def plan_parquet(path: str, shard_bytes: int) -> list[Part]:
    import pyarrow.parquet as pq

    with _parquet_source(path) as f:   # a remote file: only the footer is fetched
        meta = pq.ParquetFile(f).metadata
    parts, first, size = [], 0, 0
    for rg in range(meta.num_row_groups):
        size += meta.row_group(rg).total_byte_size
        if size >= shard_bytes:
            parts.append(Part(path, "parquet", first, rg + 1))
            first, size = rg + 1, 0
    if first < meta.num_row_groups or not parts:
        parts.append(Part(path, "parquet", first, meta.num_row_groups))
    return parts


def _parquet_source(path: str) -> contextlib.AbstractContextManager:
    """What pyarrow opens: a local path as it is (Arrow's own file, no Python in the read loop), a remote
    object as an fsspec file that reads the byte ranges pyarrow asks for."""
    return open_raw(path) if storage.is_url(path) else contextlib.nullcontext(storage.local_path(path))


def read_parquet(part: Part) -> Iterator[tuple[int, dict | Unreadable]]:
    import pyarrow.parquet as pq

    with _parquet_source(part.path) as f:   # byte ranges: the footer, then this part's row groups only
        pf = pq.ParquetFile(f)
        row = sum(pf.metadata.row_group(rg).num_rows for rg in range(part.start)) + 1
        for rg in range(part.start, part.end or pf.metadata.num_row_groups):
            table = pf.read_row_group(rg)
            yield from _table_rows(table, row)
            row += table.num_rows


def _table_rows(table, first: int) -> Iterator[tuple[int, dict | Unreadable]]:
    """The rows of an Arrow table as dicts; a row Python cannot hold (a string that is not UTF-8, a
    timestamp past year 9999) becomes `Unreadable`, its raw bytes the row as an Arrow IPC stream."""
    import pyarrow as pa

    try:
        records = table.to_pylist()
    except (UnicodeDecodeError, ValueError, OverflowError, pa.ArrowException):
        records = None
    check_nat = _has_ns_temporal(table.schema)
    if records is not None and not (check_nat and any(_holds_nat(r) for r in records)):
        yield from enumerate(records, first)
        return
    for i in range(table.num_rows):
        one = table.slice(i, 1)
        try:
            record = one.to_pylist()[0]
            if check_nat and _holds_nat(record):
                raise ValueError("a nanosecond timestamp at the int64 minimum, which pandas reads as NaT")
        except (UnicodeDecodeError, ValueError, OverflowError, pa.ArrowException) as e:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, one.schema) as writer:
                writer.write_table(one)
            reason = "invalid_utf8" if isinstance(e, UnicodeDecodeError) else "unreadable_value"
            record = Unreadable(reason, f"{type(e).__name__}: {e}", sink.getvalue().to_pybytes())
        yield first + i, record


def _has_ns_temporal(typ) -> bool:
    """Whether a schema or type holds nanosecond timestamps or durations anywhere: pyarrow hands
    those to Python as pandas objects, and a stored int64 minimum comes back as NaT, a value nothing
    downstream can serialise (found by tests/test_fuzz.py)."""
    import pyarrow as pa

    if isinstance(typ, pa.Schema):
        return any(_has_ns_temporal(f.type) for f in typ)
    if pa.types.is_timestamp(typ) or pa.types.is_duration(typ):   # both come back as pandas objects
        return typ.unit == "ns"
    return any(_has_ns_temporal(typ.field(i).type) for i in range(typ.num_fields))


def _holds_nat(value) -> bool:
    if isinstance(value, dict):
        return any(_holds_nat(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_nat(v) for v in value)
    return type(value).__name__ == "NaTType"


def plan_hf(path: str) -> list[Part]:
    import json

    with open_raw(storage.join(path, "state.json")) as f:
        state = json.loads(f.read())
    return [Part(storage.join(path, f["filename"]), "hf") for f in state["_data_files"]]


def read_hf(part: Part) -> Iterator[tuple[int, dict | Unreadable]]:
    import pyarrow as pa

    if storage.is_url(part.path):
        with open_raw(part.path) as f:
            table = pa.ipc.open_stream(f.read()).read_all()
    else:
        with pa.memory_map(part.path) as source:
            table = pa.ipc.open_stream(source).read_all()
    yield from _table_rows(table, 1)


def plan_txt(files: list[str], shard_bytes: int) -> list[Part]:
    parts, group, size = [], [], 0
    for path in files:
        group.append(path)
        size += file_size(path)
        if size >= shard_bytes:
            parts.append(Part(group[0], "txt", files=tuple(group)))
            group, size = [], 0
    if group:
        parts.append(Part(group[0], "txt", files=tuple(group)))
    return parts


def read_txt(part: Part) -> Iterator[tuple[int, dict | Unreadable]]:
    for i, path in enumerate(part.files):
        with open_raw(path) as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i + 1, Unreadable("invalid_utf8", f"file is not valid UTF-8 (byte {e.start}: {e.reason})", data,
                                    source=path)
            continue
        yield i + 1, {"id": path, "text": text}


# ------------------------------------------------------------------ the embedded default corpus

_DOCSTRING = re.compile(rb'\A(?:\s*#[^\n]*\n|\s*\n)*\s*[rRuU]?("""|\'\'\')(.*?)\1', re.S)


def plan_installed(per_part: int = 40) -> list[Part]:
    """Shards of the installed distributions (sorted by name), plus the standard library."""
    from importlib import metadata

    names = sorted({d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]},
                   key=str.lower)
    names.append("<stdlib>")
    return [Part("<installed>", "installed_packages", i, min(i + per_part, len(names)),
                 files=tuple(names[i:i + per_part])) for i in range(0, len(names), per_part)]


def read_installed(part: Part) -> Iterator[tuple[int, dict]]:
    """Package descriptions, licence files and module docstrings: real, messy, duplicated text."""
    import sysconfig
    from importlib import metadata

    n = 0
    for name in part.files:
        if name == "<stdlib>":
            root = Path(sysconfig.get_paths()["stdlib"])
            files = sorted([*root.glob("*.py"), *root.glob("*/__init__.py")])  # modules and packages
            for path in files:
                doc = _module_docstring(path)
                if doc:
                    n += 1
                    yield n, {"id": f"stdlib/{path.relative_to(root).as_posix()}", "text": doc, "package": "python",
                              "kind": "docstring"}
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        version = dist.metadata["Version"] or ""
        description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if isinstance(description, str) and description.strip():
            n += 1
            yield n, {"id": f"{name}/{version}/DESCRIPTION", "text": description, "package": name,
                      "kind": "description"}
        for f in sorted(dist.files or [], key=str):
            fname = str(f)
            lower = fname.lower()
            is_license = ".dist-info/" in lower and ("licen" in lower or "copying" in lower or "notice" in lower)
            is_module = lower.endswith(".py") and fname.count("/") <= 2 and ".dist-info/" not in lower
            if not (is_license or is_module):
                continue
            path = Path(dist.locate_file(f))
            if not path.is_file() or path.stat().st_size > 1_000_000:
                continue
            if is_license:
                text = path.read_bytes().decode("utf-8", "replace")
                kind = "license"
            else:
                text = _module_docstring(path)
                kind = "docstring"
            if text and text.strip():
                n += 1
                yield n, {"id": f"{name}/{version}/{fname}", "text": text, "package": name, "kind": kind}


def _module_docstring(path: Path) -> str | None:
    # a regex over the file's head instead of ast.parse: parsing every module of every package
    # would dominate the quickstart's run time
    with open(path, "rb") as f:
        head = f.read(65536)
    m = _DOCSTRING.match(head)
    if not m:
        return None
    return m.group(2).decode("utf-8", "replace").strip() or None


def auto_shard_bytes(total_bytes: int, n_workers: int) -> int:
    """About 12 shards per worker, so uneven documents still balance; between 256 KiB and 4 MiB
    (a parsed shard lives in a worker's memory as Python objects, several times its size on disk)."""
    return int(min(max(total_bytes / (12 * max(n_workers, 1)), 256 * 2**10), 4 * 2**20))


def plan(paths: list[str], fmt: str, shard_bytes: int | None, n_workers: int = 1) -> list[Part]:
    """All parts of an input spec, in a deterministic order; `shard_bytes=None` sizes them for `n_workers`."""
    if fmt == "installed_packages":
        return plan_installed()
    if not paths:
        raise InputPathError("input.paths is empty: name at least one file, folder or glob", file="<config>",
                             key="input.paths")
    files = discover(paths, fmt)
    # crawl files are cut by their own default (warc.CRAWL_SHARD_BYTES) unless shard_size_mb is set
    crawl_shard_bytes = shard_bytes
    if shard_bytes is None:
        shard_bytes = auto_shard_bytes(sum(file_size(p) for p, f in files if f != "hf"), n_workers)
    parts: list[Part] = []
    txt_files = [p for p, f in files if f == "txt"]
    for path, f in files:
        if f == "jsonl":
            parts.extend(plan_jsonl(path, shard_bytes))
        elif f == "parquet":
            parts.extend(plan_parquet(path, shard_bytes))
        elif f == "hf":
            parts.extend(plan_hf(path))
        elif f in CRAWL_FORMATS:
            from winnow.pipeline import warc

            parts.extend(warc.plan_warc(path, crawl_shard_bytes, f))
    parts.extend(plan_txt(txt_files, shard_bytes))
    return parts


def read_crawl(part: Part, skipped: Counter | None = None) -> Iterator[tuple[int, dict | Unreadable]]:
    """WARC (`response` records) or WET (`conversion` records); other record types counted in `skipped`."""
    from winnow.pipeline import warc

    reader = warc.read_warc if part.fmt == "warc" else warc.read_wet
    yield from reader(part, skipped)


READERS = {"jsonl": read_jsonl, "parquet": read_parquet, "hf": read_hf, "txt": read_txt,
           "installed_packages": read_installed, "warc": read_crawl, "wet": read_crawl}
