"""A crawl file is cut into bounded parts by default (so a worker's memory does not grow with the file),
at record starts found without reading the file through, and the parts read exactly the whole file's rows."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter

import pytest
from conftest import SHARED_DATA
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from winnow.pipeline import warc
from winnow.pipeline.readers import Part, plan

PAGES = SHARED_DATA / "html" / "trafilatura_eval"
DEFAULT_BYTES = getattr(warc, "CRAWL_SHARD_BYTES", 8 * 2**20)   # getattr: this test also runs on older code


def write_pages(path, gz: bool, min_bytes: int) -> int:
    """Labelled pages as response records (each after a request record) until the file passes `min_bytes`."""
    items = sorted(json.loads((PAGES / "evaldata.json").read_text()).items(), key=lambda kv: kv[1]["file"])
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=gz)
    n = 0
    for url, v in items:
        body = gzip.decompress((PAGES / v["file"]).read_bytes())
        w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
        n += 1
        if buf.tell() > min_bytes:
            break
    path.write_bytes(buf.getvalue())
    return n


# the default size on an uncompressed file (the 400 pages hold ~10 MiB gzipped: too few for 2.5 default
# parts), and gzip members at an explicit size
@pytest.mark.parametrize("gz,shard_bytes", [(False, None), (True, 2**20)], ids=["warc-default", "warc.gz-1MiB"])
def test_a_crawl_file_is_cut_into_bounded_parts(tmp_path, gz, shard_bytes):
    path = tmp_path / ("crawl.warc.gz" if gz else "crawl.warc")
    responses = write_pages(path, gz, int(2.5 * (shard_bytes or DEFAULT_BYTES)))
    parts = plan([str(path)], "warc", shard_bytes)   # None: input.shard_size_mb unset
    assert len(parts) == 3
    assert parts[0].start == 0 and parts[-1].end is None
    assert all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))
    # every cut is a record start: the record there reads, and it is the one a whole read finds there
    whole, skipped_whole = list(warc.read_warc(Part(str(path), "warc"), Counter())), Counter()
    list(warc.read_warc(Part(str(path), "warc"), skipped_whole))
    pieces, skipped = [], Counter()
    for part in parts:
        rows = list(warc.read_warc(part, skipped))
        assert rows and all(isinstance(r, dict) for _, r in rows)
        # bounded: a part spans about the shard size (a cut is the first record start past it)
        assert (part.end or path.stat().st_size) - part.start < 1.5 * (shard_bytes or DEFAULT_BYTES)
        pieces.extend(rows)
    assert [(loc, r["id"]) for loc, r in pieces] == [(loc, r["id"]) for loc, r in whole]
    assert len(pieces) == responses and skipped == skipped_whole == {"request": responses}


def test_payload_bytes_that_look_like_a_record_start_are_not_a_cut(tmp_path):
    """An uncompressed WARC whose page quotes a WARC record: the cut lands on a real record start."""
    fake = b"\r\n\r\nWARC/1.0\r\nnot a header at all\r\n\r\n" * 200
    path = tmp_path / "crawl.warc"
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=False)
    http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
    for i in range(40):
        body = b"<html><body><p>" + fake + b"x" * 20_000 + b"</p></body></html>"
        w.write_record(w.create_warc_record(f"https://a.example/{i}", "response", payload=io.BytesIO(body),
                                            http_headers=http))
    path.write_bytes(buf.getvalue())
    parts = warc.plan_warc(str(path), 100_000)
    assert len(parts) > 5
    rows = [r for part in parts for _, r in warc.read_warc(part)]
    assert [r["url"] for r in rows] == [f"https://a.example/{i}" for i in range(40)]
