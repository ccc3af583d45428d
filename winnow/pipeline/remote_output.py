"""An output folder on an object store, worked in a local scratch copy.

Stages read and write local files as ever (the scratch copy, `storage.scratch_for(url)`); every
finished object is put once under its final name (object stores have no rename, so nothing is
written under a temporary name there; s3fs sends large files in parts), a shard's marker last: on
the store the marker is the commit. `RemoteOutput.hydrate` makes the scratch copy hold exactly what
the store's markers vouch for (their checksums), so a run resumed on another machine, or after a
kill between a shard's objects and its marker, redoes exactly the uncommitted shards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from winnow.pipeline.storage import (
    configure,
    filesystem,
    find,
    is_url,
    join,
    local_path,
    retry,
    scratch_root,
    storage_options,
)

log = logging.getLogger(__name__)


@dataclass
class RemoteOutput:
    """The output folder `url` on an object store, worked in the local folder `local`.

    Picklable: Dask ships it to workers with each shard task, `options` (the run's storage_options)
    with it, so a worker opens the store the way the driver does; it is never written to a file."""

    url: str
    local: str
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def remote(self, rel: str) -> str:
        return join(self.url, rel)

    def _fs(self) -> tuple[Any, str]:
        if self.options and not storage_options():
            configure(self.options)   # a worker process: the driver's options travel with this object
        return filesystem(self.url)

    def check_reachable(self) -> None:
        """Fail early, naming the bucket, when it is missing or the credentials are refused."""
        fs, inner = self._fs()
        bucket = inner.split("/", 1)[0]

        def probe() -> None:
            fs.ls(bucket, detail=False)

        retry(probe, self.url, "list")

    def put(self, rel: str) -> None:
        """Upload one local file under its final name (s3fs sends a large one in parts)."""
        fs, inner = self._fs()
        src = str(Path(self.local) / rel)
        retry(lambda: fs.put_file(src, join(inner, rel)), self.remote(rel), "write")

    def remove(self, rel: str) -> None:
        fs, inner = self._fs()

        def rm() -> None:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(join(inner, rel))

        retry(rm, self.remote(rel), "delete")

    def get(self, rel: str, target: Path | None = None) -> Path:
        fs, inner = self._fs()
        target = target or Path(self.local) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        retry(lambda: fs.get_file(join(inner, rel), str(target)), self.remote(rel), "read")
        return target

    def cat(self, rel: str) -> bytes | None:
        fs, inner = self._fs()

        def read() -> bytes | None:
            try:
                return fs.cat_file(join(inner, rel))
            except FileNotFoundError:
                return None

        return retry(read, self.remote(rel), "read")

    def listing(self) -> list[str]:
        """Relative names of every object under the folder."""
        fs, inner = self._fs()

        def ls() -> list[str]:
            try:
                return fs.find(inner)
            except FileNotFoundError:
                return []

        base = inner.rstrip("/") + "/"
        return sorted(p[len(base):] for p in retry(ls, self.url, "list") if p.startswith(base))

    # ---- shards: files first, the marker last (the commit)
    def shard_files(self, stage: str, shard: str) -> list[str]:
        n = shard.removeprefix("part-")
        return [f"{stage}/train-{n}.parquet", f"{stage}/rejected/{shard}.parquet", f"{stage}/removed/{shard}.parquet"]

    def publish_shard(self, stage_dir: str, shard: str) -> None:
        """After a shard's local files are written: drop its old marker on the store (it would vouch for
        the files about to change), then put each file the shard has and delete each it no longer has."""
        stage = Path(stage_dir).name
        self.remove(f"{stage}/_shards/{shard}.json")
        for rel in self.shard_files(stage, shard):
            if (Path(self.local) / rel).is_file():
                self.put(rel)
            else:
                self.remove(rel)

    def commit_shard(self, stage_dir: str, shard: str) -> None:
        self.put(f"{Path(stage_dir).name}/_shards/{shard}.json")

    def publish_stage(self, stage_dir: str | Path, shards: set[str]) -> None:
        """When a stage ends: its side files (fit outputs such as tokenizer.json), objects of shards the
        input no longer has removed, and `_manifest.json` last."""
        stage = Path(stage_dir).name
        local = Path(self.local) / stage
        ours = {rel for s in shards for rel in self.shard_files(stage, s)} | \
            {f"{stage}/_shards/{s}.json" for s in shards}
        for path in sorted(local.rglob("*")):
            rel = path.relative_to(self.local).as_posix()
            if (path.is_file() and not rel.startswith(f"{stage}/_fit/") and rel not in ours
                    and not path.name.startswith(".") and path.name != "_manifest.json"):
                self.put(rel)
        for rel in self.listing_under(stage):   # the local copy holds every object the stage still has
            if not rel.startswith(f"{stage}/_fit/") and not (Path(self.local) / rel).is_file():
                self.remove(rel)
        self.put(f"{stage}/_manifest.json")

    def listing_under(self, prefix: str) -> list[str]:
        fs, inner = self._fs()

        def ls() -> list[str]:
            try:
                return fs.find(join(inner, prefix))
            except FileNotFoundError:
                return []

        base = inner.rstrip("/") + "/"
        return sorted(p[len(base):] for p in retry(ls, self.remote(prefix), "list") if p.startswith(base))

    def publish_tree(self, skip_stage_dirs: bool = True, last: str = "_run.json") -> None:
        """Run-level files (dataset/, packed/, tokens/, megatron/, report.html): every local file outside
        the stage folders that differs from what was last put, stale objects removed, `last` put last."""
        root = Path(self.local)
        uploaded_file = root / ".winnow-uploaded.json"
        uploaded = json.loads(uploaded_file.read_text()) if uploaded_file.is_file() else {}
        wanted: set[str] = set()
        from winnow.pipeline.shards import file_hash

        present = set(self.listing())
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            top = rel.split("/", 1)[0]
            if not path.is_file() or path.name.startswith(".") or (skip_stage_dirs and re.match(r"\d\d-", top)):
                continue
            wanted.add(rel)
            if rel == last:
                continue
            digest = file_hash(path)
            if uploaded.get(rel) != digest or rel not in present:
                self.put(rel)
                uploaded[rel] = digest
        # stale objects only inside the folders this run writes (a stale dataset/ shard): anything else
        # under the prefix is not ours to delete
        ours = {p.name for p in root.iterdir() if p.is_dir() and not re.match(r"\d\d-", p.name)}
        for rel in present:
            top = rel.split("/", 1)[0]
            if rel not in wanted and "/" in rel and top in ours:
                self.remove(rel)
                uploaded.pop(rel, None)
        uploaded_file.write_text(json.dumps(uploaded))
        if last in wanted:
            self.put(last)

    # ---- resume: the local copy holds exactly what the store's markers vouch for
    def hydrate(self, stage_dirs: list[str]) -> int:
        """Make the local copy of each stage folder agree with the store: a shard counts as done
        only when the store has its marker and every file that marker names hashes to its checksum.
        Local markers the store lacks (a run killed before its commit reached the store) are dropped,
        so those shards run again. Returns how many shards the store vouched for."""
        from winnow.pipeline.shards import file_hash

        vouched = 0
        remote_objects = set(self.listing())
        for stage in stage_dirs:
            markers_dir = Path(self.local) / stage / "_shards"
            remote_markers = {rel for rel in remote_objects if rel.startswith(f"{stage}/_shards/")
                              and rel.endswith(".json")}
            for local_marker in sorted(markers_dir.glob("*.json")) if markers_dir.is_dir() else []:
                rel = f"{stage}/_shards/{local_marker.name}"
                if rel not in remote_markers or self.cat(rel) != local_marker.read_bytes():
                    local_marker.unlink()
            for rel in sorted(remote_markers):
                data = self.cat(rel)
                try:
                    record = json.loads(data or b"")
                except ValueError:
                    continue
                shard = record.get("shard", "")
                files = {f"{stage}/rejected/{shard}.parquet": record.get("rejected_fingerprint")}
                if record.get("rows_out"):
                    files[f"{stage}/train-{shard.removeprefix('part-')}.parquet"] = record.get("output_fingerprint")
                if record.get("removed_fingerprint"):
                    files[f"{stage}/removed/{shard}.parquet"] = record.get("removed_fingerprint")
                if all(self._fetch_if_vouched(f, digest, remote_objects, file_hash) for f, digest in files.items()):
                    target = Path(self.local) / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    vouched += 1
                else:
                    (Path(self.local) / rel).unlink(missing_ok=True)
        return vouched

    def _fetch_if_vouched(self, rel: str, digest: str | None, remote_objects: set[str], file_hash: Any) -> bool:
        """The local copy of `rel` hashes to `digest`, downloading it when it does not already."""
        if not digest or rel not in remote_objects:
            return False
        target = Path(self.local) / rel
        if target.is_file() and file_hash(target) == digest:
            return True
        tmp = target.with_name(f".{target.name}.download")
        self.get(rel, tmp)
        if file_hash(tmp) != digest:
            tmp.unlink(missing_ok=True)
            log.warning("%s does not match its marker's checksum: the shard runs again", self.remote(rel))
            return False
        os.replace(tmp, target)
        return True


@contextlib.contextmanager
def local_copy(url: str, skip: Callable[[str], bool] = lambda rel: False) -> Iterator[Path]:
    """A local folder holding the objects under `url` (all but those `skip(relative path)` names),
    removed afterwards; a local path is handed over as it is."""
    if not is_url(url):
        yield Path(local_path(url))
        return
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="read-", dir=root))
    try:
        out = RemoteOutput(url, str(tmp))
        out.check_reachable()
        for remote in find(url):
            rel = remote[len(url.rstrip("/")) + 1:]
            if rel and not skip(rel):
                out.get(rel)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
