"""`extract` stage: the `html` column becomes main-content `text` (trafilatura, or resiliparse's much faster
main-content plain text), with a per-document time limit.

By default trafilatura runs without its own backup extractors (`no_fallback`: readability-lxml and
jusText, ~40% of its time) and falls back to resiliparse on a page where it finds less than 0.4 of what
resiliparse finds, with resiliparse's short non-sentence lines (menus, buttons) dropped first
(`fallback`, `fallback_below`, `fallback_min_words`; why: at TRAFILATURA_DEFAULTS and FALLBACK_BELOW).

Rows whose extracted text is shorter than `min_chars` are rejected `no_main_text`; a page the
extractor has spent `timeout_s` seconds of CPU time on without finishing is rejected `extract_timeout`
and the shard goes on.

Why a child process for the time limit: trafilatura walks lxml trees (C) and resiliparse is C++;
a signal (SIGALRM) is only handled between Python bytecodes and only in the main thread (Dask runs
tasks in worker threads), and a thread cannot be killed, so a page that spins inside C would hold
the worker for good. Each worker process instead keeps one child process (`python -m
winnow.filters.extract`, started with Popen because Dask's daemonic workers may not use
multiprocessing children) and sends it one page at a time over a pipe; when the child has used
`timeout_s` of CPU time on a page without answering, it is SIGKILLed (the OS frees whatever it held),
the page is rejected and a fresh child takes the next one. The pipe costs well under a millisecond per
page against tens of milliseconds of extraction. `timeout_s: null` extracts in the worker itself (no
limit, no pipe).

Why CPU time, not wall-clock time: on a loaded machine (other workers, other jobs) a normal page waits
for a core, and a wall-clock limit rejected pages that never spun (4 of 38 at 2 s under load 20, ~70 of
400 at 1 s), each time also killing the child, whose successor re-imports trafilatura. The child's
own CPU time (user + system, read from the OS every POLL_S while waiting) counts only what extraction
did. A child that hangs without using CPU is still stopped by a wall-clock backstop, BACKSTOP_FACTOR
times `timeout_s`. A fresh child imports its extractor before it says it is ready, so that import
is not charged to the first page it gets.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import time
from typing import Any, Literal

import numpy as np
import psutil
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.stage import Cuts, Stage, utf8_bytes

# trafilatura's defaults, except comments off (reader comments are not the article) and no_fallback (its
# readability/jusText backups cost ~40% of its CPU; with resiliparse as this stage's fallback they add
# 0.0014 shingle F1 on the tuning half: bench/extract_quality.py). The stage's options override these.
TRAFILATURA_DEFAULTS: dict[str, Any] = {"include_comments": False, "no_fallback": True}
RESILIPARSE_DEFAULTS: dict[str, Any] = {"main_content": True, "preserve_formatting": True,
                                        "alt_texts": False, "comments": False}
# The fallback: when trafilatura keeps less than half of what resiliparse's main-content pass finds, it has
# usually locked onto one block of a page (a teaser, a caption, a cookie notice) and missed the article, so
# resiliparse's text is taken instead. Chosen by bench/extract_quality.py on the tuning half of the 400
# labelled pages (trafilatura's modes with and without no_fallback, fallback shares 0.2-0.8, line filters
# 0/3/4 words, by 4-word-shingle F1 there); resiliparse costs ~1.6 ms of CPU a page against ~12-19.
FALLBACK_BELOW = 0.4
# the fallback's lines with fewer words than this that do not end like a sentence are navigation, buttons,
# "Auch interessant": dropped before its text is compared and used (chosen with FALLBACK_BELOW)
FALLBACK_MIN_WORDS = 4
_SENTENCE_END = tuple('.!?:;"”“»«)')
# a page whose child has used no CPU for this many times timeout_s (stopped, swapped out, blocked) is rejected
BACKSTOP_FACTOR = 10.0
# how often the child's CPU time is read while waiting for its answer (at most; less for tiny limits)
POLL_S = 0.05
# a fresh child has this long (wall clock) to import its extractor and say it is ready
START_TIMEOUT_S = 300.0

class ExtractParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extractor: Literal["trafilatura", "resiliparse"] = Field("trafilatura", description="main-content extractor")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the extractor "
                                    "(trafilatura.extract or resiliparse's extract_plain_text)")
    keep_html: bool = Field(True, description="false: drop the html column once extracted (it is ~10x the text)")
    min_chars: int = Field(1, ge=0, description="shorter extracted text is rejected as no_main_text")
    timeout_s: float | None = Field(2.0, gt=0, description="per-document limit (extract_timeout); null: none")
    html_column: str = Field("html", description="column holding the decoded HTML")
    fallback: Literal["resiliparse"] | None = Field(
        "resiliparse", description="trafilatura only: take this extractor's text when trafilatura's is shorter "
        "than fallback_below of it; null: trafilatura alone")
    fallback_below: float = Field(FALLBACK_BELOW, ge=0, le=1, description="share of the fallback's length below "
                                  "which trafilatura's text is replaced")
    fallback_min_words: int = Field(FALLBACK_MIN_WORDS, ge=0, description="the fallback's lines with fewer "
                                    "words that do not end like a sentence are dropped; 0: keep every line")

    def setup(self) -> tuple:
        """What `extract_one` needs, picklable for the child process."""
        return (self.extractor, self.options, self.fallback, self.fallback_below, self.fallback_min_words)


def _extract_with(extractor: str, options: dict[str, Any], html: str, url: str | None) -> str:
    if extractor == "trafilatura":
        import trafilatura

        return trafilatura.extract(html, url=url, **{**TRAFILATURA_DEFAULTS, **options}) or ""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, **{**RESILIPARSE_DEFAULTS, **options}) or ""


def extract_one(setup: tuple, html: str, url: str | None) -> str:
    """Main text of one page ('' when the extractor finds none); runs in the child process or in-line.

    `setup` is (extractor, options, fallback, fallback_below, fallback_min_words), as
    `ExtractParams.setup()` gives it."""
    extractor, options, fallback, fallback_below, min_words = setup
    if not html:
        return ""
    text = _extract_with(extractor, options, html, url)
    # the fallback is plain text: it only stands in for trafilatura's plain-text output
    if fallback is None or fallback == extractor or options.get("output_format", "txt") != "txt":
        return text
    other = drop_short_lines(_extract_with(fallback, {}, html, url), min_words)
    return other if len(text) < fallback_below * len(other) else text


def drop_short_lines(text: str, min_words: int) -> str:
    """`text` without its lines of fewer than `min_words` words that do not end like a sentence."""
    if min_words <= 0:
        return text
    return "\n".join(line for line in text.splitlines()
                     if len(line.split()) >= min_words or line.rstrip().endswith(_SENTENCE_END)
                     or not line.strip())


def _import_extractors(setup: tuple) -> None:
    """Import the modules `extract_one` will use with this setup (a second or more of CPU for trafilatura)."""
    extractor, _, fallback = setup[:3]
    for name in {extractor, fallback} - {None}:
        if name == "trafilatura":
            import trafilatura  # noqa: F401
        else:
            import resiliparse.extract.html2text  # noqa: F401


class _ExtractorChild:
    """One child process serving `extract_one` over length-prefixed pickles on its stdin/stdout."""

    def __init__(self, setup: tuple):
        self.setup = setup
        self.proc: subprocess.Popen | None = None
        self.usage: psutil.Process | None = None   # reads the child's CPU time

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "winnow.filters.extract"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, bufsize=0)
        _write_frame(proc.stdin, self.setup)
        try:   # the child imports its extractor first: that time is not any page's
            ok, value = _read_frame(proc.stdout.fileno(), time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, EOFError) as e:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"extractor process did not start: {type(e).__name__}") from e
        if not ok:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"extractor process did not start: {value}")
        self.usage = psutil.Process(proc.pid)
        return proc

    def extract(self, html: str, url: str | None, timeout_s: float) -> str | None:
        """The page's text, or None when the child spent `timeout_s` of CPU time on it (or hung for
        BACKSTOP_FACTOR times that without using CPU); then the child is replaced."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        cpu_before = self._cpu_seconds()
        try:
            _write_frame(self.proc.stdin, (html, url))
        except BrokenPipeError:   # the child died between pages (killed from outside): start another
            self.close()
            self.proc = self._start()
            cpu_before = self._cpu_seconds()
            _write_frame(self.proc.stdin, (html, url))
        fd = self.proc.stdout.fileno()
        if not self._answers_within(fd, cpu_before, timeout_s):
            self.close()
            return None
        # the answer has begun: the rest of the frame follows at pipe speed (the backstop guards a stall)
        try:
            ok, value = _read_frame(fd, time.monotonic() + BACKSTOP_FACTOR * timeout_s)
        except TimeoutError:
            self.close()
            return None
        if not ok:
            raise RuntimeError(f"extractor failed: {value}")
        return value

    def _cpu_seconds(self) -> float:
        """The child's CPU time so far (user + system); it idles between pages, so the growth while it
        holds one page is that page's."""
        try:
            times = self.usage.cpu_times()
        except psutil.Error:   # it died: the next read of its pipe says so
            return 0.0
        return times.user + times.system

    def _answers_within(self, fd: int, cpu_before: float, timeout_s: float) -> bool:
        """Wait until the child starts answering: False once it has used `timeout_s` of CPU on this
        page, or BACKSTOP_FACTOR * timeout_s of wall time has gone by."""
        backstop = time.monotonic() + BACKSTOP_FACTOR * timeout_s
        poll = min(POLL_S, timeout_s / 10)
        while True:
            left = backstop - time.monotonic()
            if left <= 0:
                return False
            if select.select([fd], [], [], min(left, poll))[0]:
                return True
            if self._cpu_seconds() - cpu_before >= timeout_s:
                return False

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_CHILDREN: dict[str, _ExtractorChild] = {}   # one per worker process and setup, like a loaded model


def _child(setup: tuple) -> _ExtractorChild:
    key = repr(setup)
    if key not in _CHILDREN:
        _CHILDREN[key] = _ExtractorChild(setup)
    return _CHILDREN[key]


def _write_frame(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("extractor process closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None) -> Any:
    (size,) = struct.unpack("<Q", _read_exact(fd, 8, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


class ExtractStage(Stage):
    """html -> text with trafilatura or resiliparse; rejects no_main_text and extract_timeout."""

    name = "extract"
    Params = ExtractParams
    edits_text = True

    def apply(self, table: pa.Table, state: None) -> tuple[pa.Table, pa.Table, pa.Table]:
        p: ExtractParams = self.params
        html = table.column(p.html_column).to_pylist()
        urls = table.column("url").to_pylist() if "url" in table.column_names else [None] * len(html)
        child = _child(p.setup()) if p.timeout_s is not None else None
        texts: list[str | None] = []
        reasons: list[str | None] = []
        for page, url in zip(html, urls, strict=True):
            if child is None:
                text = extract_one(p.setup(), page or "", url)
            else:
                text = child.extract(page or "", url, p.timeout_s)
            if text is None:
                texts.append(None)
                reasons.append("extract_timeout")
            elif len(text) < max(p.min_chars, 1):
                texts.append(text)
                reasons.append("no_main_text")
            else:
                texts.append(text)
                reasons.append(None)
        if "text" not in table.column_names:
            table = table.append_column("text", pa.nulls(table.num_rows, pa.string()))
        new_text = pa.array(texts, pa.string())
        keep = np.array([r is None for r in reasons], dtype=bool)
        # the text a row came in with (null from a WARC) is replaced whole: one signed cut per row, so
        # the engine's byte rule holds (text grown from nothing is a negative cut)
        cuts = Cuts()
        cuts.add_many(np.arange(table.num_rows), "extract:replaced",
                      utf8_bytes(table.column("text")) - utf8_bytes(new_text))
        kept, rejected, removed = self.split_edited(table, new_text, keep, reasons, cuts)
        if not p.keep_html:
            kept = kept.drop_columns([p.html_column])
        return kept, rejected, removed


def _serve() -> None:
    """The child's loop: the first frame is the setup, then (html, url) -> (ok, text or error)."""
    fd_in = sys.stdin.buffer.fileno()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)   # a stray print in an extractor must not corrupt the reply stream
    try:
        setup = _read_frame(fd_in, None)
        try:
            _import_extractors(setup)
            _write_frame(out, (True, "ready"))
        except Exception as e:  # noqa: BLE001 - the parent reports it
            _write_frame(out, (False, f"{type(e).__name__}: {e}"))
            return
        while True:
            html, url = _read_frame(fd_in, None)
            try:
                reply = (True, extract_one(setup, html, url))
            except Exception as e:  # noqa: BLE001 - the parent decides; the child keeps serving
                reply = (False, f"{type(e).__name__}: {e}")
            _write_frame(out, reply)
    except EOFError:
        return   # the worker closed the pipe or died


if __name__ == "__main__":
    _serve()
