"""Shard storage: atomic Parquet writes, content hashes, and listing a stage's outputs.

A shard is written to a temporary name and renamed when complete, so a killed run never
leaves a half-written shard under a final name. Writer options depend on the schema alone, so that
the same table always gives the same bytes (resume after a kill must be byte-identical).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from winnow.pipeline.errors import StorageError

# with `use_dictionary=dictionary_columns(table.schema)`: the options depend on the schema alone
WRITE_OPTIONS = dict(compression="zstd", compression_level=3, write_statistics=True, row_group_size=8192)


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet leaf columns of `schema` to write with dictionary encoding: all but the integers
    inside lists or maps (token ids, masks, positions) and booleans (Parquet has no dictionary for them).
    Token ids' dictionary indices compress worse under zstd than the ids: the tokenize stage's `input_ids`
    column on the web sample with a 32k BPE took 18.0 MB with a dictionary and 15.4 MB without, and that
    column wrote 7% faster (whole shards: 8% smaller at the same speed; bench/LOG.md, session 13)."""
    return [path for path, repeated, kind in parquet_leaves(schema)
            if not (repeated and pa.types.is_integer(kind)) and not pa.types.is_boolean(kind)]


def parquet_leaves(schema: pa.Schema) -> Iterator[tuple[str, bool, pa.DataType]]:
    """(Parquet column path, whether inside a list or map, type) of every leaf, named as Parquet names
    them (pyarrow's compliant nested names: `x.list.element`, `m.key_value.key`)."""
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_list_view,
             pa.types.is_large_list_view)

    def walk(path: str, kind: pa.DataType, repeated: bool) -> Iterator[tuple[str, bool, pa.DataType]]:
        if isinstance(kind, pa.BaseExtensionType):
            yield from walk(path, kind.storage_type, repeated)
        elif pa.types.is_map(kind):
            yield from walk(f"{path}.key_value.key", kind.key_type, True)
            yield from walk(f"{path}.key_value.value", kind.item_type, True)
        elif any(is_list(kind) for is_list in lists):
            yield from walk(f"{path}.list.element", kind.value_type, True)
        elif pa.types.is_struct(kind):
            for child in kind:
                yield from walk(f"{path}.{child.name}", child.type, repeated)
        else:
            yield path, repeated, kind

    for field in schema:
        yield from walk(field.name, field.type, False)


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def kept_path(stage_dir: str | Path, shard: str) -> Path:
    """Where a stage's kept rows for `shard` live: `train-NNNNN.parquet`.

    The `train-` prefix is what lets `datasets.load_dataset("parquet", data_dir=stage_dir)` pick the
    kept shards (and only them) out of a folder that also holds `rejected/` and `_manifest.json`.
    """
    return Path(stage_dir) / f"train-{shard.removeprefix('part-')}.parquet"


def rejected_path(stage_dir: str | Path, shard: str) -> Path:
    return Path(stage_dir) / "rejected" / f"{shard}.parquet"


def removed_path(stage_dir: str | Path, shard: str) -> Path:
    """Where a text-editing stage's cuts for `shard` live with `outputs.removed` (id, reason, bytes, text)."""
    return Path(stage_dir) / "removed" / f"{shard}.parquet"


def write_parquet_atomic(table: pa.Table, path: str | Path) -> str:
    """Write `table` to `path` via a temporary file, fsync and a rename; returns the file's content hash.

    The data reaches the disk before the rename and the rename before the caller writes its marker,
    so after a power loss a marker never points at a file the disk did not keep."""
    path = Path(path)
    with _storage_errors(path) as tmp:
        # our own file object, closed on any error: Arrow's writer given a path can leave its handle
        # open when a write fails (a full disk), and an open deleted file keeps a disk busy
        with open(tmp, "wb") as f:
            pq.write_table(table, f, use_dictionary=dictionary_columns(table.schema), **WRITE_OPTIONS)
        digest = file_hash(tmp, sync=True)
        os.replace(tmp, path)
    _sync_dir(path.parent)
    return digest


def write_npy_atomic(array: np.ndarray, path: str | Path) -> None:
    """`np.save` under a temporary name, then a rename: a killed task never leaves a half-written
    .npy under its final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as f:   # a file object: np.save adds no suffix to it
        np.save(f, array)
    os.replace(tmp, path)


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    path = Path(path)
    with _storage_errors(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _sync_dir(path.parent)


def temp_path(path: str | Path) -> Path:
    """The name a file is written under before it is renamed to `path`: hidden, unique to this
    process and thread, and matched by `TEMP_GLOB`, so the engine sweeps away what a killed run left
    and `winnow verify` names it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


TEMP_GLOB = ".*.tmp-*"


@contextlib.contextmanager
def _storage_errors(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`; an OSError while writing it (disk full, read-only folder)
    removes the partial file and becomes a StorageError naming `path` (Arrow's own messages do not)."""
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write ({e.strerror or e})", path=str(path)) from e


def _sync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it is durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_hash(path: str | Path, sync: bool = False) -> str:
    """xxh3-128 of a file's bytes: the shard's identity for downstream resume checks. `sync`: also
    fsync the file (it was just written; reading it back to hash is the moment to flush it)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest()


def text_bytes(table: pa.Table, column: str = "text") -> int:
    """UTF-8 bytes of a text column (0 when absent)."""
    if column not in table.column_names or table.num_rows == 0:
        return 0
    import pyarrow.compute as pc

    total = pc.sum(pc.binary_length(table.column(column))).as_py()
    return int(total or 0)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder, add missing (null) columns and cast `table` to `schema`."""
    columns = []
    for fld in schema:
        if fld.name in table.column_names:
            col = table.column(fld.name)
            columns.append(col if col.type == fld.type else col.cast(fld.type))
        else:
            columns.append(pa.nulls(table.num_rows, fld.type))
    return pa.Table.from_arrays(columns, schema=schema)
