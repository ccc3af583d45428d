"""Stage 00: read raw input into Parquet shards with `id` and `text`, quarantining what cannot be read.

Every raw record ends in exactly one place: a kept row, or a `rejected/` row naming the file,
the line, the reason and the raw bytes. Reasons: blank_line, invalid_utf8, invalid_json,
not_an_object, too_deeply_nested, missing_text, null_text, text_not_string, empty_text,
text_too_long, duplicate_id, unreadable_value (a Parquet value Python cannot hold, e.g. a date past 9999) and
type_conflict (a value that does not fit its column's type across files, e.g. an integer past
2**53 in a column that other files made float64).
A rejected record that names its own id keeps it as `id` (else `file:line`), and `raw` holds the
line's original bytes (a table row: the row as JSON; an unreadable one: an Arrow IPC stream).
With `strict: true` the first bad record stops the run with an `InputError` naming file and line.

`fit` reads every shard once to learn the union schema of the extra columns (files may differ)
and to find duplicate ids globally; `apply` reads again, conforms to that schema and drops
later copies of a duplicate id. Parsing JSON twice costs little next to any filter downstream; a crawl
file's fit pass leaves the HTML undecoded (its ids and record checks are all it needs), and a crawl file
that is not a WARC fails only its own shards (in `apply`), so every other file is still ingested.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from winnow.pipeline import storage, warc
from winnow.pipeline.config import InputConfig, stable_hash
from winnow.pipeline.dupfind import KEY_SCHEMA, Duplicates, find_duplicates, hash128
from winnow.pipeline.errors import InputError, InputPathError
from winnow.pipeline.readers import CRAWL_FORMATS, READERS, Part, Unreadable, plan
from winnow.pipeline.shards import conform, shard_name
from winnow.pipeline.stage import Context, ShardRef, Stage

MAX_NESTING = 128       # JSON records nested deeper are rejected: orjson cannot write them back (255)
MAX_COLUMN_NESTING = 32  # deeper column types are stored as JSON text: Parquet reads at most 100 schema levels

REJECTED_SCHEMA = pa.schema([
    ("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("source_file", pa.string()), ("source_line", pa.int64()), ("raw", pa.large_binary()),
])


def plan_input(p: InputConfig, n_workers: int) -> list[Part]:
    """The input's parts; a path that reads nothing (missing, or a folder or glob with no file
    winnow reads) fails here, before any work, at its config line: `c.yaml:3 [input.paths[0]]: …`."""
    shard_bytes = int(p.shard_size_mb * 2**20) if p.shard_size_mb else None
    try:
        return plan(p.paths, p.format, shard_bytes, n_workers)
    except InputPathError as e:
        raise p.locate(e) from None


@dataclass
class Parsed:
    """One shard read: good records (with their line numbers) and quarantined ones."""

    records: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    raws: dict[int, bytes] = field(default_factory=dict)   # original bytes of the records asked for
    skipped: Counter = field(default_factory=Counter)      # crawl records that are not documents, by type


@dataclass
class IngestState:
    schema: pa.Schema
    json_columns: frozenset[str]
    duplicates: dict[str, Duplicates]


class IngestStage(Stage):
    """Reads JSONL (.gz/.zst), Parquet, `datasets` folders, .txt folders or the installed packages' docs."""

    name = "ingest"
    Params = InputConfig

    # ---------------------------------------------------------------- planning
    def inputs(self, upstream: list[ShardRef], ctx: Context) -> list[ShardRef]:
        p: InputConfig = self.params
        parts = plan_input(p, ctx.n_workers())
        refs = []
        for i, part in enumerate(parts):
            stat = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in (part.files or (part.path,))
                    if os.path.exists(f)] if part.fmt != "installed_packages" else list(part.files)
            # an object on a store: its size and ETag (a changed object reruns its shards)
            stat += [storage.signature(f) for f in (part.files or (part.path,)) if storage.is_url(f)]
            refs.append(ShardRef(shard_name(i), part.path, stable_hash([asdict(part), stat]),
                                 meta={"part": part}))
        return refs

    def load(self, ref: ShardRef) -> Part:
        return ref.meta["part"]  # ingest is the reader: apply() parses the part itself

    # ---------------------------------------------------------------- parsing
    def parse(self, part: Part, raw_for: frozenset[int] = frozenset(), with_html: bool = True) -> Parsed:
        """Read and check every record of `part`. `raw_for`: locations whose original bytes (the JSONL
        line as it is in the file; a table row as JSON) `Parsed.raws` keeps, for rows rejected later.
        `with_html=False`: a crawl record's `html` stays None (the duplicate-id scan needs ids only)."""
        p: InputConfig = self.params
        out = Parsed()
        source = part.path
        crawl = part.fmt in CRAWL_FORMATS
        records = warc.read_crawl(part, out.skipped, with_html) if crawl else READERS[part.fmt](part)
        for loc, item in records:
            if part.fmt == "txt":
                source = item.source if isinstance(item, Unreadable) else item.get("id", source)
            own_id = None
            if isinstance(item, Unreadable):
                record, reason, detail, raw = None, item.reason, item.detail, item.raw
            elif crawl:   # the reader built the row (a WARC response's `text` stays null until `extract`)
                record, reason, detail, raw = dict(item), None, None, None
            else:
                raw = item if isinstance(item, bytes) else None
                record, reason, detail, own_id = self._record(raw, item, p)
            if reason is not None:
                if p.strict:
                    raise InputError(f"{reason}: {detail}", file=source, line=loc, reason=reason)
                if raw is None:
                    raw = orjson.dumps(item, default=_jsonable)
                # a record that names its own id is found by it; one that does not, by where it was
                out.rejected.append({"id": f"{source}:{loc}" if own_id is None else own_id, "stage": self.name,
                                     "reason": reason, "detail": detail, "source_file": source,
                                     "source_line": loc, "raw": raw})
                continue
            if loc in raw_for:
                out.raws[loc] = raw if raw is not None else orjson.dumps(item, default=_jsonable)
            if record.get("id") is None:
                record["id"] = f"{source}:{loc}"
            elif not isinstance(record["id"], str):
                record["id"] = str(record["id"])
            out.records.append(record)
            out.lines.append(loc)
        return out

    @staticmethod
    def _record(raw: bytes | None, item: Any, p: InputConfig) -> tuple[dict | None, str | None, str | None,
                                                                       str | None]:
        """(record with `id` and `text`, None, None, None), or (None, reason, detail, the record's own
        id as a string when it has one). `item` (a reader's dict) is left as it came."""
        if raw is not None:
            if not raw.strip():
                return None, "blank_line", "empty line in a JSONL file", None
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as ue:
                    if p.utf8_errors == "reject":
                        return None, "invalid_utf8", f"byte {ue.start}: {ue.reason}", None
                    try:
                        item = orjson.loads(raw.decode("utf-8", "replace"))
                    except orjson.JSONDecodeError as e2:
                        return None, "invalid_json", str(e2), None
                else:
                    return None, "invalid_json", str(e), None
        if not isinstance(item, dict):
            return None, "not_an_object", f"{_kind(item)}, not a JSON object", None
        if raw is not None and raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _nesting(item) > MAX_NESTING:
            return None, "too_deeply_nested", f"lists and objects nested more than {MAX_NESTING} deep", None
        own_id = item.get(p.id_field)
        own_id = None if own_id is None else own_id if isinstance(own_id, str) else str(own_id)
        if p.text_field not in item:
            return None, "missing_text", f"no {p.text_field!r} field", own_id
        text = item[p.text_field]
        if text is None:
            return None, "null_text", f"{p.text_field!r} is null", own_id
        if not isinstance(text, str):
            return None, "text_not_string", f"{p.text_field!r} is {_kind(text)}, not a string", own_id
        if not text.strip():
            return None, "empty_text", f"{p.text_field!r} is empty or whitespace", own_id
        if len(text) > p.max_text_bytes // 4 and len(text.encode("utf-8", "surrogatepass")) > p.max_text_bytes:
            return (None, "text_too_long", f"{len(text.encode('utf-8', 'surrogatepass'))} bytes > max_text_bytes",
                    own_id)
        rest = {k: v for k, v in item.items() if k not in (p.text_field, p.id_field)}
        for reserved in ("id", "text"):
            if reserved in rest:  # keep a colliding input column under another name, never overwrite
                rest[f"input_{reserved}"] = rest.pop(reserved)
        return {"id": item.get(p.id_field), "text": text, **rest}, None, None, None

    def to_table(self, parsed: Parsed, json_columns: frozenset[str] = frozenset()) -> tuple[pa.Table, set[str]]:
        """Kept records as a table; columns whose values do not share one Arrow type are stored as JSON."""
        names: dict[str, None] = {"id": None, "text": None}
        for r in parsed.records:
            names.update(dict.fromkeys(r))
        arrays, fields, as_json = [], [], set()
        for name in names:
            values = [r.get(name) for r in parsed.records]
            arr = None
            if name not in json_columns:
                try:
                    arr = pa.array(values)
                    # pyarrow puts bytes met among str values into a string column unchecked
                    # (e.g. a Parquet map<string, binary>): full validation catches invalid UTF-8
                    arr.validate(full=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError):
                    arr = None
                if arr is not None and not _storable(arr.type):
                    arr = None
            if arr is None:
                as_json.add(name)
                arr = pa.array([None if v is None else orjson.dumps(v, default=_jsonable).decode()
                                for v in values], pa.string())
            if name in ("id", "text"):
                arr = arr.cast(pa.string())
            arrays.append(arr)
            fields.append(name)
        return pa.Table.from_arrays(arrays, names=fields), as_json

    def rejected_table(self, rows: list[dict]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)

    # ---------------------------------------------------------------- fit and apply
    def fit(self, shards: list[ShardRef], ctx: Context) -> IngestState:
        duplicates, extras = find_duplicates(ctx, shards, self._scan)
        schemas = [s for s, _ in extras]
        json_columns = frozenset().union(*(j for _, j in extras)) if extras else frozenset()
        schema, incompatible = _unify(schemas, json_columns)
        json_columns |= incompatible
        losing = [(name, dups) for name, dups in duplicates.items() if len(dups.rows)]  # survivors' shards too
        if self.params.strict and losing:
            name, dups = losing[0]
            ref = next(r for r in shards if r.name == name)
            raise InputError(f"duplicate id (first seen at {dups.dup_of[0]})", file=ref.path,
                             line=int(dups.rows[0]), reason="duplicate_id")
        return IngestState(schema, json_columns, duplicates)

    def _scan(self, ref: ShardRef) -> tuple[pa.Table, tuple[pa.Schema, set[str]]]:
        part: Part = ref.meta["part"]
        crawl = part.fmt in CRAWL_FORMATS
        try:   # a crawl page's HTML is most of the work of reading it and no part of its id
            parsed = self.parse(part, with_html=not crawl)
        except InputError:
            if not crawl or self.params.strict:
                raise
            # a crawl file that is not a WARC fails its own shard in `apply` (same error, file and byte
            # offset); the other files' shards are still written, and the run fails at the end
            parsed = Parsed()
        table, as_json = self.to_table(parsed)
        hi, lo = hash128(table.column("id").to_pylist())
        source = ref.path
        keys = pa.table({"hi": hi, "lo": lo, "row": pa.array(parsed.lines, pa.int64()),
                         "label": [f"{source}:{line}" for line in parsed.lines]}, schema=KEY_SCHEMA)
        return keys, (table.schema, as_json)

    def shard_state(self, state: IngestState, ref: ShardRef) -> IngestState:
        dups = state.duplicates.get(ref.name)
        return IngestState(state.schema, state.json_columns, {ref.name: dups} if dups else {})

    def apply(self, part: Part, state: IngestState) -> tuple[pa.Table, pa.Table]:
        dups = next(iter(state.duplicates.values())).lookup() if state.duplicates else {}
        parsed = self.parse(part, raw_for=frozenset(dups))
        if dups:
            keep_records, keep_lines = [], []
            for record, line in zip(parsed.records, parsed.lines, strict=True):
                if line in dups:
                    first, size = dups[line]
                    parsed.rejected.append({
                        "id": record["id"], "stage": self.name, "reason": "duplicate_id",
                        "detail": f"id also at {first} (kept there; {size} copies)", "source_file": part.path,
                        "source_line": line, "raw": parsed.raws[line]})
                else:
                    keep_records.append(record)
                    keep_lines.append(line)
            parsed.records, parsed.lines = keep_records, keep_lines
        table, _ = self.to_table(parsed, state.json_columns)
        try:
            kept = conform(table, state.schema)
        except CAST_ERRORS:
            kept = self._conform_rows(parsed, table, state.schema, part)
        parsed.rejected.sort(key=lambda r: r["source_line"])
        self._skipped = parsed.skipped   # for shard_stats, which the engine calls next in the same task
        return kept, self.rejected_table(parsed.rejected)

    def shard_stats(self, data: Any, kept: pa.Table, rejected: pa.Table) -> dict[str, float]:
        """WARC records that are not documents (request, warcinfo, metadata, revisit…), by type."""
        return {f"warc_{kind}_records": n for kind, n in sorted(getattr(self, "_skipped", {}).items())}

    def _conform_rows(self, parsed: Parsed, table: pa.Table, schema: pa.Schema, part: Part) -> pa.Table:
        """`conform` row by row, for a shard where some value does not fit the type its column has across
        all files (an integer past 2**53 in a column other files made float64): those records are
        rejected as type_conflict, the rest kept. In strict mode the InputError is raised here, in
        `apply`, so the engine reports it inside its ShardError."""
        source, raws = part.path, None
        rows = []
        for i, (record, line) in enumerate(zip(parsed.records, parsed.lines, strict=True)):
            row = table.slice(i, 1)
            try:
                rows.append(conform(row, schema))
                continue
            except CAST_ERRORS as e:
                error = e
            bad = [f"{f.name!r} ({row.column(f.name).type} to {f.type})" for f in schema
                   if f.name in row.column_names and not _casts(row.column(f.name), f.type)]
            detail = f"does not fit the column types of all input files: {', '.join(bad)}: {error}"
            if self.params.strict:
                raise InputError(f"type_conflict: {detail}", file=source, line=line, reason="type_conflict")
            if raws is None:   # the original bytes of the records, read again on this rare path only
                raws = self.parse(part, raw_for=frozenset(parsed.lines)).raws
            parsed.rejected.append({"id": record["id"], "stage": self.name, "reason": "type_conflict",
                                    "detail": detail, "source_file": source, "source_line": line,
                                    "raw": raws[line]})
        return pa.concat_tables(rows) if rows else conform(table.slice(0, 0), schema)


CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def _casts(column: pa.ChunkedArray, to: pa.DataType) -> bool:
    try:
        column.cast(to)
    except CAST_ERRORS:
        return False
    return True


def _kind(value: Any) -> str:
    """How a message names a value's type: 'an integer (42)', 'a list', 'an object'."""
    words = {bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "an object",
             bytes: "bytes", str: "a string"}
    word = words.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, (list, dict)):
        return word
    shown = repr(value) if not isinstance(value, bool) else str(value).lower()
    return f"{word} ({shown[:40]}{'…' if len(shown) > 40 else ''})"


def _nesting(value: Any) -> int:
    """How deep lists and dicts nest in `value` (a scalar: 0), level by level: no recursion."""
    depth, level = 0, [value]
    while depth <= MAX_NESTING:
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def _storable(t: pa.DataType, depth: int = 0) -> bool:
    """Whether a column of type `t` round-trips through Parquet: no struct without fields (Parquet
    cannot write one), nesting within `MAX_COLUMN_NESTING`."""
    if depth > MAX_COLUMN_NESTING or (pa.types.is_struct(t) and t.num_fields == 0):
        return False
    return all(_storable(t.field(i).type, depth + 1) for i in range(t.num_fields))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _unify(schemas: list[pa.Schema], json_columns: frozenset[str]) -> tuple[pa.Schema, frozenset[str]]:
    """One schema for every shard: id and text first, other columns in order of first appearance.

    A column whose types cannot be promoted to one (a list in one file, a string in another) is
    stored as JSON text everywhere; those names are returned.
    """
    incompatible = set()
    order: dict[str, None] = {"id": None, "text": None}
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for fld in schema:
            order.setdefault(fld.name, None)
            types.setdefault(fld.name, []).append(fld.type)
    fields = []
    for name in order:
        if name in ("id", "text") or name in json_columns:
            fields.append(pa.field(name, pa.string()))
            continue
        candidates = [t for t in types.get(name, []) if t != pa.null()] or [pa.null()]
        try:
            unified = pa.unify_schemas([pa.schema([(name, t)]) for t in candidates],
                                       promote_options="permissive").field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            unified = pa.string()
            incompatible.add(name)
        if unified == pa.null():
            unified = pa.string()
        fields.append(pa.field(name, unified))
    return pa.schema(fields), frozenset(incompatible)
