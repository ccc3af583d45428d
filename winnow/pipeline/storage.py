"""Filesystems: a local path or an fsspec URL (`s3://`, `gs://`, `az://`, `hf://`, `file://`) → the
filesystem that holds it, with the run's `storage_options`, retries for transient errors, and errors
that name the bucket and key.

Credentials never pass through here: each cloud's own chain finds them (for S3 the AWS environment
variables, profiles, instance roles; `AWS_ENDPOINT_URL` too). `storage_options` holds only how to
reach the store (an `endpoint_url`, a region), and `scrub` blanks anything in it that looks like a
secret before a config is written anywhere.
An output folder on an object store: remote_output.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from distributed import WorkerPlugin

from winnow.pipeline.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

_options: dict[str, Any] = {}
# keys of a storage_options mapping (at any depth) whose values are credentials
SECRET_KEY = re.compile(r"(key|secret|token|password|passwd|credential|signature|sas)", re.I)
REDACTED = "<redacted>"
ATTEMPTS_ENV = "WINNOW_STORAGE_ATTEMPTS"
SCRATCH_ENV = "WINNOW_SCRATCH_DIR"
# error codes an object store answers when it is busy, not when the request is wrong
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
                   "InternalError", "ServiceUnavailable", "503", "500", "502", "504", "TooManyRequests",
                   "RequestThrottled", "BandwidthLimitExceeded"}


# ---------------------------------------------------------------- paths and filesystems

def is_url(path: str | Path) -> bool:
    """A path some filesystem other than the local one holds (`file://` is local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | Path) -> str:
    """A local path without its `file://` prefix."""
    text = str(path)
    return text[len("file://"):] if text.startswith("file://") else text


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a URL or a local path."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def configure(options: dict[str, Any] | None) -> None:
    """Set the `storage_options` every remote filesystem of this process is opened with."""
    _options.clear()
    _options.update(options or {})


def storage_options() -> dict[str, Any]:
    return dict(_options)


def filesystem(path: str | Path) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path or a URL."""
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    if not is_url(path):
        return LocalFileSystem(), local_path(path)
    try:
        # no listing cache: other processes (workers, a resumed run) change the folder under us
        return url_to_fs(str(path), **{"use_listings_cache": False, **_options})
    except (ImportError, ValueError) as e:   # no fsspec implementation installed for the protocol
        raise StorageError(f"cannot open this URL ({e}); for s3:// install winnow[s3] (s3fs)",
                           path=str(path)) from e


def bucket_and_key(url: str) -> tuple[str, str]:
    """`s3://bucket/a/b` → ("bucket", "a/b")."""
    rest = str(url).split("://", 1)[-1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def scrub(options: Any) -> Any:
    """`options` with every value under a secret-looking key replaced (config.resolved.yaml, logs)."""
    if isinstance(options, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k)) and not isinstance(options[k], bool | type(None))
                else scrub(v) for k, v in options.items()}
    if isinstance(options, list):
        return [scrub(v) for v in options]
    return options


# ---------------------------------------------------------------- retries and errors

def _codes(e: BaseException) -> set[str]:
    """Error codes and HTTP statuses carried by `e` and the exceptions it came from."""
    found: set[str] = set()
    seen = 0
    while e is not None and seen < 8:
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error", {}) or {}
            found.add(str(err.get("Code", "")))
            found.add(str((response.get("ResponseMetadata") or {}).get("HTTPStatusCode", "")))
        found.add(str(getattr(e, "code", "") or ""))
        found.add(str(getattr(e, "status", "") or ""))
        e = e.__cause__ or e.__context__
        seen += 1
    return found - {""}


def is_transient(e: BaseException) -> bool:
    """A timeout, a dropped connection, throttling or a 5xx: worth another try."""
    if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(e, TimeoutError | ConnectionError):
        return True
    codes = _codes(e)
    if codes & TRANSIENT_CODES or any(c.isdigit() and 500 <= int(c) < 600 for c in codes):
        return True
    name = type(e).__name__
    return name in {"ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError", "ServerDisconnectedError",
                    "ClientConnectorError", "ClientOSError", "ResponseStreamingError"}


def describe(e: BaseException, url: str, doing: str) -> StorageError:
    """A StorageError naming the bucket and key, saying what most likely went wrong."""
    bucket, key = bucket_and_key(url) if is_url(url) else ("", url)
    codes = _codes(e)
    where = f"(bucket {bucket!r}, key {key!r})" if is_url(url) else ""
    if codes & {"NoSuchBucket"} or (isinstance(e, FileNotFoundError) and "bucket" in str(e).lower()):
        why = f"bucket {bucket!r} does not exist (or these credentials cannot see it)"
    elif codes & {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken",
                  "InvalidToken"} or isinstance(e, PermissionError):
        why = (f"access denied to bucket {bucket!r}: check the credentials the standard chain finds "
               "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role)")
    elif isinstance(e, FileNotFoundError):
        why = "no such object"
    else:
        why = f"{type(e).__name__}: {e}"
    return StorageError(f"cannot {doing} {where}: {why}".replace("  ", " "), path=str(url))


def retry(fn: Callable[[], T], url: str, doing: str, attempts: int | None = None) -> T:
    """`fn()`, tried again with exponential backoff (and jitter) on transient errors; a StorageError
    naming the bucket and key when it still fails or fails for good."""
    attempts = attempts or int(os.environ.get(ATTEMPTS_ENV, "6"))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as e:
            if not is_transient(e):
                raise describe(e, url, doing) from e
            if attempt == attempts:
                err = describe(e, url, doing)
                raise StorageError(f"{err.args[0].split(': ', 1)[1]} (gave up after {attempts} attempts)",
                                   path=str(url)) from e
            delay = min(0.25 * 2 ** (attempt - 1), 20.0) * (0.5 + random.random())
            log.warning("%s: %s %s failed (%s), retrying in %.1f s", url, doing, type(e).__name__, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- reading inputs

def open_file(path: str, mode: str = "rb") -> Any:
    """An open file for a local path or a URL (a remote file reads by byte ranges, so seeking works)."""
    if not is_url(path):
        return open(local_path(path), mode)  # noqa: SIM115 - the caller closes it
    fs, inner = filesystem(path)
    return retry(lambda: fs.open(inner, mode), path, "open")


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(local_path(path))
    fs, inner = filesystem(path)
    return int(retry(lambda: fs.size(inner), path, "stat"))


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(local_path(path))
    fs, inner = filesystem(path)
    return bool(retry(lambda: fs.exists(inner), path, "stat"))


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(local_path(path))
    fs, inner = filesystem(path)
    return bool(retry(lambda: fs.isdir(inner), path, "stat"))


def signature(path: str) -> list:
    """What changes when a file's content may have: (path, size, mtime) locally, (path, size, ETag or
    checksum) on an object store."""
    if not is_url(path):
        st = os.stat(local_path(path))
        return [path, st.st_size, st.st_mtime_ns]
    fs, inner = filesystem(path)
    info = retry(lambda: fs.info(inner), path, "stat")
    return [path, info.get("size"), str(info.get("ETag") or info.get("etag") or info.get("md5Hash")
                                         or info.get("LastModified") or info.get("mtime") or "")]


def _with_protocol(fs: Any, inner: str, like: str) -> str:
    protocol = like.split("://", 1)[0]
    return f"{protocol}://{inner.split('://', 1)[-1]}"


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob (`**` recursive) as URLs of the same protocol."""
    fs, inner = filesystem(pattern)
    found = retry(lambda: fs.glob(inner), pattern, "list")
    return sorted(_with_protocol(fs, p, pattern) for p in found)


def find(folder: str) -> list[str]:
    """Every file under a remote folder, sorted, as URLs."""
    fs, inner = filesystem(folder)
    found = retry(lambda: fs.find(inner), folder, "list")
    return sorted(_with_protocol(fs, p, folder) for p in found)


# ---------------------------------------------------------------- local scratch

def scratch_root() -> Path:
    """Where temporary and working copies go: `$WINNOW_SCRATCH_DIR`, else the winnow cache folder."""
    explicit = os.environ.get(SCRATCH_ENV)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("WINNOW_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "winnow")
    return Path(cache) / "scratch"


def scratch_for(url: str) -> Path:
    """The local working copy of a remote output folder: stable per URL, so a rerun on the same machine
    downloads nothing it already holds."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_")[-80:]
    digest = hashlib.blake2b(url.encode(), digest_size=6).hexdigest()
    return scratch_root() / f"{slug}-{digest}"


def cached_copy(url: str, cache: Path) -> str:
    """A local copy of a remote file or folder (a model, a held-out set) under `cache`, fetched once
    and fetched again when the object (or any object of the folder) changes; its local path."""
    fs, inner = filesystem(url)
    is_folder = retry(lambda: fs.isdir(inner), url, "stat")
    sources = find(url) if is_folder else [url]
    key = hashlib.blake2b(json.dumps([signature(s) for s in sources]).encode(), digest_size=8).hexdigest()
    name = inner.rstrip("/").rsplit("/", 1)[-1]
    final = cache / f"{name}-{key}"
    if (final / ".complete").is_file():
        return str(final / name)
    cache.mkdir(parents=True, exist_ok=True)
    # fetched into a private folder and renamed: workers asking at once never read a partial copy
    staging = cache / f".{name}-{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for source in sources:
        rel = source[len(url.rstrip("/")) + 1:] if is_folder else ""
        local = staging / name / rel if rel else staging / name
        local.parent.mkdir(parents=True, exist_ok=True)
        src_fs, src = filesystem(source)
        retry(lambda f=src_fs, s=src, d=local: f.get_file(s, str(d)), source, "read")
    (staging / ".complete").write_text(url)
    try:
        os.rename(staging, final)
    except OSError:   # another process finished first: its copy is the same objects
        shutil.rmtree(staging, ignore_errors=True)
    return str(final / name)


def localize(value: str, cache: Path) -> str:
    """A local path for a remote file, folder or glob (`s3://b/held/*.jsonl`: the folder before the first
    wildcard is fetched, the rest of the pattern kept); local paths and http(s) URLs pass unchanged."""
    if not is_url(value) or value.startswith(("http://", "https://")):
        return local_path(value)
    parts = value.split("/")
    magic = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), None)
    if magic is None:
        return cached_copy(value, cache)
    return "/".join([cached_copy("/".join(parts[:magic]), cache), *parts[magic:]])


class StoragePlugin(WorkerPlugin):
    """A Dask worker plugin that gives each worker process (including those started after a crash)
    the run's `storage_options`, so remote inputs open the same way on every worker."""

    name = "winnow-storage-options"

    def __init__(self, options: dict[str, Any]):
        self.options = dict(options)

    def setup(self, worker: Any) -> None:
        configure(self.options)
