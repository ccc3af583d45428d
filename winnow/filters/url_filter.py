"""`url_filter` stage: drop documents by their `url` against block lists, banned words and an allow list.

- `block_domains`: files (one domain per line, `#` comments) or folders in UT1's layout (one folder
  per category holding `domains` and `urls` files); a domain blocks its subdomains.
  Reason `url_blocked:<list>`: the file's name, or `<category>/<file>` inside a UT1 folder.
- `block_urls`: files of URLs (scheme optional); a URL blocks itself and the paths below it.
- `banned_words`: any of them among the URL's words (split at every non-alphanumeric) drops it:
  `url_banned_word`. `soft_banned_words`: `soft_threshold` or more of them drop it: `url_soft_banned_words`.
- `allow_domains`: domains (or files of them) that win over every block.
Hosts are normalised before matching: lower case, IDNA (punycode), no port, no trailing dot, no
leading `www.`. No list ships with winnow (licences): UT1 is at https://dsi.ut-capitole.fr/blacklists/
(rsync://ftp.ut-capitole.fr/blacklist/); point `block_domains` at its `dest/` folder or its categories.
Lists load once per worker process (UT1's adult list alone is millions of lines).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.stage import FilterStage

UT1_FILES = ("domains", "urls")
_WORD_SPLIT = re.compile(r"[^0-9a-z]+")
_LISTS: dict[tuple, tuple[dict[str, str], dict[str, str]]] = {}   # per worker process: (domains, urls)


class UrlFilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    block_domains: list[str] = Field(default_factory=list, description="domain list files or UT1 folders")
    block_urls: list[str] = Field(default_factory=list, description="URL list files")
    banned_words: list[str] = Field(default_factory=list, description="any one in the URL's words drops it")
    soft_banned_words: list[str] = Field(default_factory=list, description="soft_threshold of them drop it")
    soft_threshold: int = Field(2, ge=1, description="soft banned words needed to drop a URL")
    allow_domains: list[str] = Field(default_factory=list, description="domains (or files of them) never dropped")
    url_column: str = Field("url", description="column holding the document's URL")


def normalize_host(host: str) -> str:
    """Lower case, IDNA, no port or trailing dot, no leading `www.`: `WWW.Bücher.de:80` -> `xn--bcher-kva.de`."""
    host = host.strip().lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = host.split(":", 1)[0]
    with contextlib.suppress(UnicodeError):   # a label IDNA refuses (too long, odd characters): as written
        host = host.encode("idna").decode("ascii")
    return host.removeprefix("www.")


def split_url(url: str) -> tuple[str, str]:
    """(normalised host, path with query) of a URL with or without a scheme."""
    url = url.strip()
    if "://" not in url[:12]:
        url = "http://" + url
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return normalize_host(parts.netloc.rsplit("@", 1)[-1]), path


def parent_domains(host: str) -> list[str]:
    """`a.b.example.com` -> itself, `b.example.com`, `example.com`, `com`."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def _list_files(path: str) -> list[tuple[str, str]]:
    """(file, list name) for a list file, or for every category file of a UT1 folder."""
    p = Path(path)
    if p.is_file():
        return [(str(p), p.name)]
    if not p.is_dir():
        raise FileNotFoundError(f"url_filter list not found: {path}")
    found = []
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.name in UT1_FILES:
            found.append((str(f), f.relative_to(p).as_posix() if f.parent != p else f"{p.name}/{f.name}"))
    return found


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [s for line in f if (s := line.split("#", 1)[0].strip())]


def load_lists(domain_paths: list[str], url_paths: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """{domain: list name} and {host/path: list name}; a UT1 folder's `urls` files go to the URL map."""
    key = tuple((p, os.path.getmtime(p) if os.path.exists(p) else 0) for p in [*domain_paths, "|", *url_paths])
    if key in _LISTS:
        return _LISTS[key]
    domains: dict[str, str] = {}
    urls: dict[str, str] = {}
    for path in domain_paths:
        for file, name in _list_files(path):
            target = urls if Path(file).name == "urls" else domains
            for entry in _lines(file):
                if target is domains:
                    domains.setdefault(normalize_host(entry), name)
                else:
                    host, rest = split_url(entry)
                    urls.setdefault(host + rest.rstrip("/"), name)
    for path in url_paths:
        for file, name in _list_files(path):
            for entry in _lines(file):
                host, rest = split_url(entry)
                urls.setdefault(host + rest.rstrip("/"), name)
    _LISTS[key] = (domains, urls)
    return domains, urls


class UrlFilterStage(FilterStage):
    """Drops rows whose URL is on a block list or holds banned words, unless its domain is allowed."""

    name = "url_filter"
    Params = UrlFilterParams

    def allowed(self) -> set[str]:
        out = set()
        for entry in self.params.allow_domains:
            if os.path.isfile(entry):
                out.update(normalize_host(d) for d in _lines(entry))
            else:
                out.add(normalize_host(entry))
        return out

    def verdict(self, url: str | None, domains: dict[str, str], urls: dict[str, str], allow: set[str]) -> str | None:
        """The reason to drop `url`, or None to keep it."""
        p: UrlFilterParams = self.params
        if not url:
            return None
        host, path = split_url(url)
        parents = parent_domains(host)
        if allow and any(d in allow for d in parents):
            return None
        for d in parents:
            if d in domains:
                return f"url_blocked:{domains[d]}"
        if urls:
            full = host + path.rstrip("/")
            # the URL itself and every path prefix of it, at '/' boundaries
            cuts = [full] + [full[:i] for i in range(len(full) - 1, len(host) - 1, -1) if full[i] == "/"]
            for c in cuts:
                if c in urls:
                    return f"url_blocked:{urls[c]}"
        words = set(_WORD_SPLIT.split(url.lower()))
        if p.banned_words and words & {w.lower() for w in p.banned_words}:
            return "url_banned_word"
        if p.soft_banned_words and len(words & {w.lower() for w in p.soft_banned_words}) >= p.soft_threshold:
            return "url_soft_banned_words"
        return None

    def keep(self, table: pa.Table, state: None) -> tuple[np.ndarray, list[str | None]]:
        p: UrlFilterParams = self.params
        domains, urls = load_lists(p.block_domains, p.block_urls)
        allow = self.allowed()
        reasons = [self.verdict(u, domains, urls, allow) for u in table.column(p.url_column).to_pylist()]
        return np.array([r is None for r in reasons], dtype=bool), reasons
