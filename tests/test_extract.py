"""The `extract` stage on the labelled trafilatura pages: real trafilatura and resiliparse, the per-document
time limit in a child process, and a pipeline run on a real Dask cluster."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA, check_conservation, run

from winnow.filters.extract import ExtractParams, ExtractStage

PAGES = SHARED_DATA / "html" / "trafilatura_eval"


def labelled(n: int) -> list[tuple[str, dict, str]]:
    """(url, labels, html) of the first `n` pages by file name whose labels are found by trafilatura."""
    items = sorted(json.loads((PAGES / "evaldata.json").read_text()).items(), key=lambda kv: kv[1]["file"])
    return [(url, v, gzip.decompress((PAGES / v["file"]).read_bytes()).decode("utf-8", "replace"))
            for url, v in items[:n]]


def table_of(pages: list[tuple[str, dict, str]]) -> pa.Table:
    return pa.table({"id": [f"p{i}" for i in range(len(pages))], "text": [None] * len(pages),
                     "url": [u for u, _, _ in pages], "html": [h for _, _, h in pages]},
                    schema=pa.schema([("id", pa.string()), ("text", pa.string()), ("url", pa.string()),
                                      ("html", pa.string())]))


def found_share(texts: list[str], pages, key: str) -> float:
    hits = [" ".join(s.split()) in " ".join((t or "").split()) for t, (_, v, _) in zip(texts, pages, strict=True)
            for s in v[key]]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("extractor", ["trafilatura", "resiliparse"])
def test_main_text_holds_the_article_and_leaves_out_boilerplate(extractor):
    pages = labelled(12)
    kept, rejected, _ = ExtractStage(ExtractParams(extractor=extractor)).apply(table_of(pages), None)
    assert kept.num_rows + rejected.num_rows == 12 and kept.num_rows >= 10
    texts = dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist(), strict=True))
    all_texts = [texts.get(f"p{i}", "") for i in range(12)]
    assert found_share(all_texts, pages, "with") >= 0.7
    assert found_share(all_texts, pages, "without") <= 0.3
    assert "html" in kept.column_names


def test_keep_html_false_drops_the_column_and_options_reach_the_extractor():
    pages = labelled(3)
    kept, _, _ = ExtractStage(ExtractParams(keep_html=False, options={"output_format": "xml"})).apply(
        table_of(pages), None)
    assert "html" not in kept.column_names
    assert all(t.startswith("<doc") for t in kept.column("text").to_pylist())


def test_min_chars_rejects_no_main_text():
    pages = labelled(3)
    table = table_of(pages)
    table = table.set_column(3, "html", pa.array([pages[0][2], "<html><body><nav>Home</nav></body></html>",
                                                  pages[2][2]]))
    kept, rejected, _ = ExtractStage(ExtractParams(min_chars=200)).apply(table, None)
    assert kept.column("id").to_pylist() == ["p0", "p2"]
    assert rejected.column("reason").to_pylist() == ["no_main_text"]
    assert rejected.column("stage").to_pylist() == ["extract"]


def test_a_page_past_timeout_is_rejected_and_the_shard_goes_on():
    pages = labelled(2)
    # a pathological page built from a real one: its paragraphs 1,500 times over (trafilatura needs ~20 s)
    body = pages[0][1]["with"]
    paragraph = "<p>" + " ".join(body * 6) + "</p>"
    huge = "<html><body><article>" + paragraph * 30_000 + "</article></body></html>"
    table = table_of(pages)
    table = table.set_column(3, "html", pa.array([huge, pages[1][2]]))
    kept, rejected, _ = ExtractStage(ExtractParams(timeout_s=1.0)).apply(table, None)
    assert rejected.column("reason").to_pylist() == ["extract_timeout"]
    assert kept.column("id").to_pylist() == ["p1"] and len(kept.column("text")[0].as_py()) > 100


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):   # a wall-clock limit has killed it already
        os.kill(pid, signal.SIGCONT)


def test_the_limit_counts_the_childs_cpu_time_not_its_wait_for_a_core():
    """A child held off the CPU (SIGSTOP, as a loaded machine would) for four times the limit has used no
    CPU on the page: it is extracted once the child runs again, by the same child."""
    from winnow.filters.extract import _ExtractorChild

    url, _, html = labelled(4)[3]   # 37 kB: the page fits the pipe while the child is stopped
    child = _ExtractorChild(ExtractParams().setup())
    try:
        assert child.extract("<html><body><p>warm up</p></body></html>", None, 60.0) is not None
        pid = child.proc.pid
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(2.0, _resume, (pid,)).start()
        start = time.monotonic()
        text = child.extract(html, url, 0.5)
        assert time.monotonic() - start >= 2.0
        assert text is not None and len(text) > 100
        assert child.proc is not None and child.proc.pid == pid   # not killed and restarted
    finally:
        child.close()


def test_a_child_that_hangs_without_cpu_is_stopped_by_the_wall_clock_backstop():
    from winnow.filters.extract import BACKSTOP_FACTOR, _ExtractorChild

    url, _, html = labelled(4)[3]
    child = _ExtractorChild(ExtractParams().setup())
    try:
        assert child.extract("<html><body><p>warm up</p></body></html>", None, 60.0) is not None
        os.kill(child.proc.pid, signal.SIGSTOP)   # never resumed: no CPU, no answer
        start = time.monotonic()
        assert child.extract(html, url, 0.1) is None
        assert 0.1 * BACKSTOP_FACTOR <= time.monotonic() - start < 0.1 * BACKSTOP_FACTOR + 5
        assert child.proc is None   # killed; the next page gets a fresh child
        assert child.extract(html, url, 30.0)
    finally:
        child.close()


def test_extract_runs_in_a_pipeline_on_dask_workers(client, tmp_path):
    pages = labelled(8)
    src = tmp_path / "pages.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "text": url, "url": url, "html": html}) + "\n"
                           for i, (url, _, html) in enumerate(pages)))
    out = tmp_path / "out"
    run({"input": {"paths": [str(src)]}, "output": str(out), "stages": [{"extract": {"keep_html": False}}]}, client)
    check_conservation(out)
    kept = pq.read_table(sorted((out / "01-extract").glob("*.parquet")))
    assert "html" not in kept.column_names and kept.num_rows >= 7
    texts = kept.column("text").to_pylist()
    assert not any(t.startswith("http") for t in texts)


def test_trafilatura_falls_back_to_resiliparse_where_it_misses_the_article():
    # a real page where trafilatura alone keeps 95 characters (a teaser) and none of the labelled article
    items = json.loads((PAGES / "evaldata.json").read_text())
    url, labels = next((u, v) for u, v in items.items() if v["file"] == "OnlineMarketing.de-Instagram.html.gz")
    page = [(url, labels, gzip.decompress((PAGES / labels["file"]).read_bytes()).decode("utf-8"))]
    alone, _, _ = ExtractStage(ExtractParams(fallback=None, min_chars=0)).apply(table_of(page), None)
    default, _, _ = ExtractStage(ExtractParams(min_chars=0)).apply(table_of(page), None)
    assert found_share(alone.column("text").to_pylist(), page, "with") == 0
    assert found_share(default.column("text").to_pylist(), page, "with") >= 0.6
    # a page trafilatura handles keeps trafilatura's text (the fallback does not replace it)
    first = labelled(1)
    kept, _, _ = ExtractStage(ExtractParams(timeout_s=None)).apply(table_of(first), None)
    import trafilatura

    assert kept.column("text")[0].as_py() == trafilatura.extract(first[0][2], url=first[0][0],
                                                                 include_comments=False, no_fallback=True)


@pytest.mark.parametrize("name", ["fluessiggas.de.dimethylether.html.gz", "munich2022.com-topathleten.html.gz"])
def test_the_fallback_leaves_out_resiliparse_menu_lines(name):
    # real pages where trafilatura keeps a fraction of the article and resiliparse's text, taken instead,
    # also holds labelled boilerplate on short lines (navigation, teasers): those lines are dropped
    items = json.loads((PAGES / "evaldata.json").read_text())
    url, labels = next((u, v) for u, v in items.items() if v["file"] == name)
    page = [(url, labels, gzip.decompress((PAGES / name).read_bytes()).decode("utf-8"))]
    unfiltered, _, _ = ExtractStage(ExtractParams(min_chars=0, fallback_below=0.4, fallback_min_words=0,
                                                  timeout_s=None)).apply(table_of(page), None)
    default, _, _ = ExtractStage(ExtractParams(min_chars=0, timeout_s=None)).apply(table_of(page), None)
    assert found_share(unfiltered.column("text").to_pylist(), page, "without") > 0
    assert found_share(default.column("text").to_pylist(), page, "without") == 0
    assert found_share(default.column("text").to_pylist(), page, "with") == 1.0
