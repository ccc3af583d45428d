"""WARC -> main text: winnow (`input.format: warc` + `extract`, 2 Dask workers) against datatrove
(`WarcReader` + `Trafilatura` on a LocalPipelineExecutor, 2 workers), on the same WARC files.

The WARC files are built here with warcio from the 400 labelled trafilatura pages
(../shared/data/html/trafilatura_eval): `--copies` copies of every page, each under a new URL
(https://c<copy>.<host>/<path>), one response record each (raw page bytes, `Content-Type: text/html`
without a charset, so both readers decode as they would a crawl), in `--files` gzipped WARC files in a
temporary folder. 50 copies: 20,000 response records.

Printed: docs/s of each side (wall time of the whole run, the subprocess's start included), their
ratio `ratio winnow/datatrove: X` with the extractor each side ran, winnow again with resiliparse, the
snippet scores of each side's text on the labelled pages (bench/extract_quality.py's scoring, copy 0), the
peak resident memory of each side's process tree, and `language_id` docs/s on winnow's extracted text.

Headline ratio: both sides run trafilatura with datatrove's settings (favor_precision, deduplicate,
comments off; no URL passed, no fallback) and datatrove's 1 s per-document limit.
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
    """Peak summed RSS of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):   # a child that just ended
                        total += p.memory_info().rss
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed_run(cmd: list[str], cwd: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes of the process tree) of one command; fails loudly."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = PeakRss(proc.pid)
    out, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    rss = peak.stop()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return seconds, rss


def run_winnow(warcs: Path, out: Path, extractor: str, options: dict) -> tuple[float, int, dict[str, str]]:
    """winnow run on the WARC folder: ingest + extract, 2 workers; (seconds, peak RSS, url -> text)."""
    config = {"input": {"paths": [str(warcs)], "format": "warc"}, "output": str(out), "seed": 0,
              "engine": {"n_workers": 2, "threads_per_worker": 1, "progress": False},
              "stages": [{"extract": {"extractor": extractor, "options": options, "fallback": None,
                                      "keep_html": False, "min_chars": 0, "timeout_s": 1.0}}]}
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    seconds, rss = timed_run([sys.executable, "-m", "winnow.cli", "run", str(cfg)], ROOT)
    texts: dict[str, str] = {}
    for path in sorted(out.glob("*-extract/train-*.parquet")):
        t = pq.read_table(path, columns=["url", "text"])
        texts.update(zip(t.column("url").to_pylist(), t.column("text").to_pylist(), strict=True))
    return seconds, rss, texts


DATATROVE_SIDE = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.writers import JsonlWriter
warcs, out, logs, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
LocalPipelineExecutor(pipeline=[WarcReader(warcs, glob_pattern="*.warc.gz"),
                                Trafilatura(favour_precision=True, deduplicate=True, timeout=1.0),
                                JsonlWriter(out, compression=None)],
                      tasks=tasks, workers=2, logging_dir=logs).run()
"""


def run_datatrove(warcs: Path, out: Path, tasks: int) -> tuple[float, int, dict[str, str]]:
    seconds, rss = timed_run([sys.executable, "-c", DATATROVE_SIDE, str(warcs), str(out / "data"),
                              str(out / "logs"), str(tasks)], ROOT)
    texts: dict[str, str] = {}
    for path in sorted((out / "data").glob("*.jsonl")):
        for line in path.open():
            doc = json.loads(line)
            texts[doc["metadata"]["url"]] = doc["text"]
    return seconds, rss, texts


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
    ap.add_argument("--sides", default="datatrove,winnow,winnow-resiliparse")
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
        results: dict[str, tuple[float, int, dict[str, str]]] = {}
        runs = {"datatrove": ("datatrove WarcReader + Trafilatura(favour_precision, deduplicate)",
                              lambda: run_datatrove(warcs, work / "datatrove", args.files)),
                "winnow": ("winnow warc + extract trafilatura (datatrove's options)",
                           lambda: run_winnow(warcs, work / "winnow", "trafilatura", DATATROVE_TRAFILATURA)),
                "winnow-resiliparse": ("winnow warc + extract resiliparse",
                                       lambda: run_winnow(warcs, work / "winnow-resiliparse", "resiliparse", {}))}
        for side in sides:
            label, run = runs[side]
            shutil.rmtree(work / side, ignore_errors=True)
            results[side] = run()
            seconds, rss, texts = results[side]
            s = snippet_scores(texts)
            print(f"{label}: {n} records, {len(texts)} docs with text, {seconds:.1f} s, {n / seconds:.1f} docs/s, "
                  f"peak RSS {rss / 2**30:.2f} GiB; snippets: with found {s['with_found']:.3f}, "
                  f"without left out {s['without_left_out']:.3f}, shingle F1 {s['shingle_f1']:.3f}", flush=True)
        if "winnow" in results and "datatrove" in results:
            ratio = results["datatrove"][0] / results["winnow"][0]
            print(f"ratio winnow/datatrove: {ratio:.2f} (both trafilatura with datatrove's options)")
        if "winnow-resiliparse" in results and "datatrove" in results:
            ratio = results["datatrove"][0] / results["winnow-resiliparse"][0]
            print(f"ratio winnow(resiliparse)/datatrove(trafilatura): {ratio:.2f}")
        texts = next((list(r[2].values()) for r in results.values() if r[2]), [])
        if texts:
            rate, docs = language_id_rate([t for t in texts if t][:args.lid_docs])
            print(f"language_id: {rate:.0f} docs/s on one core ({docs} extracted documents, lid.176.ftz)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
