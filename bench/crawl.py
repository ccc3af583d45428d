"""WARC -> main text: winnow (`input.format: warc` + `extract`, 2 Dask workers) against datatrove
(`WarcReader` + `Trafilatura` on a LocalPipelineExecutor, 2 workers), on the same WARC files.

The WARC files are built here with warcio from the 400 labelled trafilatura pages
(../shared/data/html/trafilatura_eval): `--copies` copies of every page, each under a new URL
(https://c<copy>.<host>/<path>), one response record each (raw page bytes, `Content-Type: text/html`
without a charset, so both readers decode as they would a crawl), in `--files` gzipped WARC files in a
temporary folder. 50 copies: 20,000 response records.

Printed: docs/s of each side (wall time of the whole run, the subprocess's start included) and its CPU
seconds (user + system over every process of its tree: on a shared, loaded machine the fairer count),
their ratio `ratio winnow/datatrove: X` with the extractor and options each side ran, the snippet scores
of each side's text on the labelled pages (bench/extract_quality.py's scoring, copy 0), the peak resident
memory of each side's process tree and, for winnow, of its driver, largest worker and largest extractor
child, and `language_id` docs/s on winnow's extracted text.

Sides, all on the same WARC files with a 1 s per-document limit:
- datatrove: `WarcReader` + `Trafilatura()` as datatrove ships it (favour_precision, deduplicate, comments off);
- winnow: `extract` as winnow ships it (trafilatura with comments off and no_fallback, resiliparse where
  trafilatura keeps < 0.4 of it): the headline ratio, each side's default, F1 beside it;
- winnow-same: `extract` with datatrove's trafilatura options and no fallback: the same extraction work;
- winnow-resiliparse: `extract` with resiliparse.
datatrove's blocks that download at run time are not used (no URL filter lists, no language model).
Run: .venv/bin/python bench/crawl.py [--copies 50] [--files 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_quality import PAGES, score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATATROVE_TRAFILATURA = {"favor_precision": True, "deduplicate": True, "include_comments": False}


def copy_url(url: str, copy: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme or "https", f"c{copy}.{parts.hostname}", parts.path, parts.query, ""))


def original_url(url: str) -> tuple[int, str]:
    """(copy, host/path/query) of a copied URL, the key it is scored under."""
    parts = urlsplit(url)
    prefix, _, host = parts.hostname.partition(".")
    return int(prefix[1:]), f"{host}{parts.path}?{parts.query}"


def write_warcs(folder: Path, copies: int, files: int) -> int:
    """`copies` x 400 response records over `files` .warc.gz files; returns the record count."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    items = sorted(json.loads((PAGES / "evaldata.json").read_text()).items(), key=lambda kv: kv[1]["file"])
    pages = [(url, gzip.decompress((PAGES / v["file"]).read_bytes())) for url, v in items]
    n = 0
    with contextlib.ExitStack() as stack:
        writers = [WARCWriter(stack.enter_context(open(folder / f"crawl-{i:03d}.warc.gz", "wb")), gzip=True)
                   for i in range(files)]
        for copy in range(copies):
            for url, body in pages:
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html"),
                                                      ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
                w = writers[n % files]
                w.write_record(w.create_warc_record(copy_url(url, copy), "response", payload=io.BytesIO(body),
                                                    http_headers=headers))
                n += 1
    return n


class PeakRss:
    """Peak summed RSS of a process and its children, sampled every 0.2 s; also each process's peak RSS
    and last CPU time (user + system), by role: the driver (the process started), extractor children
    (`winnow.filters.extract`), workers (every other process)."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self.rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):   # a child that just ended
                        rss = p.memory_info().rss
                        total += rss
                        self.rss[p.pid] = max(self.rss.get(p.pid, 0), rss)
                        times = p.cpu_times()
                        self.cpu[p.pid] = times.user + times.system
                        if p.pid not in self.role:
                            cmd = " ".join(p.cmdline())
                            self.role[p.pid] = ("driver" if p.pid == self.proc.pid else
                                                "extractor child" if "winnow.filters.extract" in cmd else "worker")
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak

    def by_role(self) -> dict[str, int]:
        """The largest single-process peak RSS of each role."""
        peaks: dict[str, int] = {}
        for pid, rss in self.rss.items():
            role = self.role.get(pid, "worker")   # a process gone before its command line was read
            peaks[role] = max(peaks.get(role, 0), rss)
        return peaks


@dataclass
class Run:
    seconds: float       # wall
    cpu_seconds: float   # user + system over the process tree (as last sampled)
    rss: int             # peak summed RSS of the tree
    rss_by_role: dict[str, int]
    texts: dict[str, str]


def timed_run(cmd: list[str], cwd: Path) -> Run:
    """Wall seconds, CPU seconds and peak RSS of one command's process tree (texts filled by the caller)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = PeakRss(proc.pid)
    out, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    rss = peak.stop()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return Run(seconds, sum(peak.cpu.values()), rss, peak.by_role(), {})


def run_winnow(warcs: Path, out: Path, extract: dict) -> Run:
    """winnow run on the WARC folder: ingest + extract (`extract`: the stage's settings beyond the shared
    ones), 2 workers."""
    config = {"input": {"paths": [str(warcs)], "format": "warc"}, "output": str(out), "seed": 0,
              "engine": {"n_workers": 2, "threads_per_worker": 1, "progress": False},
              "stages": [{"extract": {**extract, "keep_html": False, "min_chars": 0, "timeout_s": 1.0}}]}
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    result = timed_run([sys.executable, "-m", "winnow.cli", "run", str(cfg)], ROOT)
    for path in sorted(out.glob("*-extract/train-*.parquet")):
        t = pq.read_table(path, columns=["url", "text"])
        result.texts.update(zip(t.column("url").to_pylist(), t.column("text").to_pylist(), strict=True))
    shards = json.loads(next(out.glob("*-ingest/_manifest.json")).read_text())["shards"]
    print(f"  winnow: {len(shards)} ingest shards", flush=True)
    return result


DATATROVE_SIDE = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.writers import JsonlWriter
warcs, out, logs, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
LocalPipelineExecutor(pipeline=[WarcReader(warcs, glob_pattern="*.warc.gz"),
                                Trafilatura(timeout=1.0),
                                JsonlWriter(out, compression=None)],
                      tasks=tasks, workers=2, logging_dir=logs).run()
"""


def run_datatrove(warcs: Path, out: Path, tasks: int) -> Run:
    result = timed_run([sys.executable, "-c", DATATROVE_SIDE, str(warcs), str(out / "data"),
                        str(out / "logs"), str(tasks)], ROOT)
    for path in sorted((out / "data").glob("*.jsonl")):
        for line in path.open():
            doc = json.loads(line)
            result.texts[doc["metadata"]["url"]] = doc["text"]
    return result


def snippet_scores(texts: dict[str, str]) -> dict[str, float]:
    """extract_quality's scores over copy 0 of every labelled page (a page with no text scores empty)."""
    by_page = {original_url(u)[1]: t for u, t in texts.items() if original_url(u)[0] == 0}
    items = sorted(json.loads((PAGES / "evaldata.json").read_text()).items(), key=lambda kv: kv[1]["file"])
    keys = [original_url(copy_url(url, 0))[1] for url, _ in items]
    return score([by_page.get(k, "") or "" for k in keys], [v for _, v in items])


def language_id_rate(texts: list[str]) -> tuple[float, int]:
    """docs/s of the language_id stage's identify() in this process (one core) over `texts`."""
    from winnow.filters.language_id import default_model_path, identify, load_model

    load_model(default_model_path())
    t0 = time.perf_counter()
    identify(texts, default_model_path())
    return len(texts) / (time.perf_counter() - t0), len(texts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=50, help="copies of the 400 pages (50: 20,000 records)")
    ap.add_argument("--files", type=int, default=8, help="WARC files to spread the records over")
    ap.add_argument("--sides", default="datatrove,winnow,winnow-same,winnow-resiliparse")
    ap.add_argument("--lid-docs", type=int, default=4000, help="documents language_id is timed on")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="winnow-crawl-"))
    work.mkdir(parents=True, exist_ok=True)
    warcs = work / "warc"
    try:
        if not warcs.exists():
            warcs.mkdir()
            t0 = time.perf_counter()
            n = write_warcs(warcs, args.copies, args.files)
            print(f"wrote {n} response records in {args.files} WARC files "
                  f"({sum(p.stat().st_size for p in warcs.iterdir()) / 2**20:.0f} MiB) "
                  f"in {time.perf_counter() - t0:.0f} s")
        n = args.copies * 400
        sides = args.sides.split(",")
        results: dict[str, Run] = {}
        runs = {"datatrove": ("datatrove WarcReader + Trafilatura() (favour_precision, deduplicate)",
                              lambda: run_datatrove(warcs, work / "datatrove", args.files)),
                "winnow": ("winnow warc + extract as shipped (trafilatura no_fallback, resiliparse fallback)",
                           lambda: run_winnow(warcs, work / "winnow", {})),
                "winnow-same": ("winnow warc + extract trafilatura with datatrove's options, no fallback",
                                lambda: run_winnow(warcs, work / "winnow-same",
                                                   {"options": DATATROVE_TRAFILATURA, "fallback": None})),
                "winnow-resiliparse": ("winnow warc + extract resiliparse",
                                       lambda: run_winnow(warcs, work / "winnow-resiliparse",
                                                          {"extractor": "resiliparse"}))}
        print(f"load average before: {' '.join(f'{x:.1f}' for x in psutil.getloadavg())}", flush=True)
        for side in sides:
            label, run = runs[side]
            shutil.rmtree(work / side, ignore_errors=True)
            r = results[side] = run()
            s = snippet_scores(r.texts)
            roles = ", ".join(f"{role} {rss / 2**30:.2f}" for role, rss in sorted(r.rss_by_role.items()))
            print(f"{label}: {n} records, {len(r.texts)} docs with text, {r.seconds:.1f} s, {n / r.seconds:.1f} docs/s, "
                  f"CPU {r.cpu_seconds:.1f} s ({1000 * r.cpu_seconds / n:.1f} ms/record), peak RSS "
                  f"{r.rss / 2**30:.2f} GiB (largest per process, GiB: {roles}); snippets: with found "
                  f"{s['with_found']:.3f}, without left out {s['without_left_out']:.3f}, shingle F1 {s['shingle_f1']:.3f}; "
                  f"load {psutil.getloadavg()[0]:.1f}", flush=True)
        if "datatrove" in results:
            dt = results["datatrove"]
            for side, what in (("winnow", "each side's default: winnow trafilatura no_fallback + resiliparse fallback, "
                                          "datatrove Trafilatura() favour_precision + deduplicate"),
                               ("winnow-same", "both trafilatura with datatrove's options"),
                               ("winnow-resiliparse", "winnow resiliparse, datatrove trafilatura")):
                if side in results:
                    name = "winnow" if side == "winnow" else f"winnow({side.split('-', 1)[1]})"
                    print(f"ratio {name}/datatrove: {dt.seconds / results[side].seconds:.2f} wall, "
                          f"{dt.cpu_seconds / results[side].cpu_seconds:.2f} CPU ({what})")
        texts = next((list(r.texts.values()) for r in results.values() if r.texts), [])
        if texts:
            rate, docs = language_id_rate([t for t in texts if t][:args.lid_docs])
            print(f"language_id: {rate:.0f} docs/s on one core ({docs} extracted documents, lid.176.ftz)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
