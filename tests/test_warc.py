"""WARC/WET reading (winnow.pipeline.warc) on WARCs written here with warcio from the labelled pages, and on
the two real wget WARCs: every response record is a row or a rejection, other types are counted, bad
bytes name the file and offset."""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter

import pytest
from conftest import SHARED_DATA
from warcio.archiveiterator import ArchiveIterator as WarcioIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from winnow.pipeline.errors import InputError
from winnow.pipeline.readers import Part, Unreadable
from winnow.pipeline.warc import decode_html, fetch_record, format_of, plan_warc, read_warc, read_wet

PAGES = SHARED_DATA / "html" / "trafilatura_eval"
REAL_WARCS = sorted((SHARED_DATA / "warc").glob("*.warc.gz"))
GERMAN_PAGE = "1337kultur.de.picard.html.gz"


def page(name: str) -> bytes:
    return gzip.decompress((PAGES / name).read_bytes())


def labels() -> dict:
    return json.loads((PAGES / "evaldata.json").read_text())


def cp1252_page() -> tuple[bytes, str]:
    """A real German page re-encoded as cp1252, every charset declaration removed; and a snippet with umlauts."""
    entry = next(v for v in labels().values() if v["file"] == GERMAN_PAGE)
    html = page(GERMAN_PAGE).decode("utf-8")
    html = re.sub(r"<meta[^>]*charset[^>]*>", "", html, flags=re.I)
    snippet = next(s for s in entry["with"] if re.search("[äöüßÄÖÜ]", s) and s in html)
    return html.encode("cp1252", "replace"), snippet


def response(writer: WARCWriter, url: str, body: bytes, status: str = "200 OK", ctype: str | None = "text/html; charset=utf-8"):
    headers = [("Content-Type", ctype)] if ctype else []
    http = StatusAndHeaders(status, headers, protocol="HTTP/1.1")
    return writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)


def write_crawl(path, gz: bool = True, truncate_last: bool = False) -> dict:
    """warcinfo, request, 200 HTML, 404, PNG, cp1252 page without charset, revisit, metadata, chunked HTML."""
    names = sorted(v["file"] for v in labels().values())[:3]
    cp1252, _ = cp1252_page()
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=gz)
    w.write_record(w.create_warcinfo_record("crawl.warc", {"software": "winnow tests"}))
    w.write_record(w.create_warc_record("https://a.example/one", "request", payload=io.BytesIO(b"GET /one HTTP/1.1\r\n\r\n")))
    w.write_record(response(w, "https://a.example/one", page(names[0])))
    w.write_record(response(w, "https://a.example/missing", page(names[1]), status="404 Not Found"))
    w.write_record(response(w, "https://a.example/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ctype="image/png"))
    w.write_record(response(w, "https://a.example/cp1252", cp1252, ctype="text/html"))
    w.write_record(w.create_revisit_record("https://a.example/one", digest="sha1:AAAA", refers_to_uri="https://a.example/one",
                                           refers_to_date="2024-01-01T00:00:00Z"))
    w.write_record(w.create_warc_record("https://a.example/one", "metadata", payload=io.BytesIO(b"via: test"),
                                        warc_content_type="application/warc-fields"))
    body = page(names[2])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:1000], body[1000:])) + b"0\r\n\r\n"
    http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Transfer-Encoding", "chunked")],
                            protocol="HTTP/1.1")
    w.write_record(w.create_warc_record("https://a.example/chunked", "response", payload=io.BytesIO(chunked),
                                        http_headers=http))
    data = buf.getvalue()
    if truncate_last:
        data = data[:-3000]
    path.write_bytes(data)
    return {"pages": names, "size": len(data)}


def read_all(path, fmt: str = "warc") -> tuple[list[tuple[int, dict | Unreadable]], Counter]:
    skipped: Counter = Counter()
    reader = read_warc if fmt == "warc" else read_wet
    return list(reader(Part(str(path), fmt), skipped)), skipped


@pytest.mark.parametrize("gz", [True, False])
def test_crawl_records_become_rows_rejections_and_counts(tmp_path, gz):
    path = tmp_path / ("crawl.warc.gz" if gz else "crawl.warc")
    made = write_crawl(path, gz=gz)
    rows, skipped = read_all(path)
    assert skipped == {"warcinfo": 1, "request": 1, "revisit": 1, "metadata": 1}
    kept = [r for _, r in rows if isinstance(r, dict)]
    rejected = [r for _, r in rows if isinstance(r, Unreadable)]
    assert [r["url"] for r in kept] == ["https://a.example/one", "https://a.example/cp1252", "https://a.example/chunked"]
    assert [(r.reason, r.detail) for r in rejected] == [
        ("http_status", "HTTP status 404"), ("not_html", "content type 'image/png'")]
    first = kept[0]
    assert first["html"] == page(made["pages"][0]).decode("utf-8")
    assert first["http_status"] == 200 and first["content_type"] == "text/html; charset=utf-8"
    assert first["id"].startswith("urn:uuid:") and first["warc_date"].startswith("20")
    assert first["warc_file"] == str(path) and first["text"] is None
    # a chunked body is de-chunked: the page comes out whole
    assert kept[2]["html"] == page(made["pages"][2]).decode("utf-8")
    # the offset fetches the same record back
    assert fetch_record(str(path), kept[0]["warc_offset"]) == page(made["pages"][0])
    # locations are the byte offsets, increasing
    offsets = [loc for loc, _ in rows]
    assert offsets == sorted(offsets) and offsets[0] > 0


def test_cp1252_page_without_charset_decodes_right(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    write_crawl(path)
    _, snippet = cp1252_page()
    rows, _ = read_all(path)
    row = next(r for _, r in rows if isinstance(r, dict) and r["url"].endswith("cp1252"))
    assert snippet in row["html"]
    assert "\ufffd" not in row["html"] and "Ã" not in row["html"]


def test_decode_html_order_header_then_meta_then_detection():
    text = "Größe und Übermaß – “Zitat”"
    body = f'<html><head><meta charset="windows-1252"></head><body>{text}</body></html>'.encode("cp1252")
    assert text in decode_html(body)                      # meta tag
    assert text in decode_html(body, "cp1252")            # header
    assert text in decode_html(body, "no-such-charset")   # unknown header label falls to the meta tag
    utf8 = f"<p>{text}</p>".encode()
    assert decode_html(utf8, "iso-8859-1") == f"<p>{text}</p>".encode().decode("cp1252", "replace")   # header wins, even if wrong
    assert decode_html(utf8) == f"<p>{text}</p>"


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_last_record_is_rejected_and_the_rest_kept(tmp_path, gz):
    path = tmp_path / ("cut.warc.gz" if gz else "cut.warc")
    write_crawl(path, gz=gz, truncate_last=True)
    rows, _ = read_all(path)
    kinds = [r.reason if isinstance(r, Unreadable) else r["url"] for _, r in rows]
    assert kinds == ["https://a.example/one", "http_status", "not_html", "https://a.example/cp1252", "truncated_record"]
    assert len(rows[-1][1].raw) > 0


def test_record_cut_inside_its_header_is_truncated_not_an_error(tmp_path):
    full = tmp_path / "full.warc"
    write_crawl(full, gz=False)
    data = full.read_bytes()
    last = data.rfind(b"WARC/1.")
    cut = tmp_path / "cut.warc"
    cut.write_bytes(data[:last + 60])
    rows, _ = read_all(cut)
    assert rows[-1][1].reason == "truncated_record" and rows[-1][0] == last
    assert sum(isinstance(r, dict) for _, r in rows) == 2


def test_a_file_that_is_not_a_warc_names_file_and_offset(tmp_path):
    bad = tmp_path / "notes.warc.gz"
    bad.write_bytes(gzip.compress(page(GERMAN_PAGE)))
    with pytest.raises(InputError) as err:
        read_all(bad)
    assert err.value.file == str(bad) and "byte offset 0" in str(err.value)


def test_garbage_after_good_records_names_its_offset(tmp_path):
    good = tmp_path / "good.warc"
    write_crawl(good, gz=False)
    data = good.read_bytes()
    bad = tmp_path / "bad.warc"
    bad.write_bytes(data + b"this is not a WARC record\n" * 50)
    with pytest.raises(InputError) as err:
        read_all(bad)
    assert f"byte offset {len(data)}" in str(err.value)


def test_plan_cuts_at_records_and_parts_read_the_same_rows(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    write_crawl(path)
    parts = plan_warc(str(path), 20_000)
    assert len(parts) > 2
    assert parts[0].start == 0 and parts[-1].end is None
    whole, skipped_whole = read_all(path)
    pieces, skipped = [], Counter()
    for part in parts:
        pieces.extend(read_warc(part, skipped))
    assert [loc for loc, _ in pieces] == [loc for loc, _ in whole]
    assert skipped == skipped_whole


@pytest.mark.parametrize("warc", REAL_WARCS, ids=lambda p: p.name)
def test_real_wget_warcs_every_response_accounted_for(warc):
    expected = Counter()
    responses = []
    with open(warc, "rb") as f:   # warcio's independent count
        for record in WarcioIterator(f):
            expected[record.rec_type] += 1
            if record.rec_type == "response":
                responses.append(record.rec_headers.get_header("WARC-Target-URI").strip("<>"))
    rows, skipped = read_all(warc)
    assert [r["url"] for _, r in rows] == responses
    assert skipped == {k: v for k, v in expected.items() if k != "response"}
    assert all("<html" in r["html"].lower() for _, r in rows)
    assert all(not r["html"].startswith(("HTTP/", "0\r\n")) and "\r\n0\r\n\r\n" not in r["html"] for _, r in rows)


def test_wet_conversion_records_go_to_text(tmp_path):
    path = tmp_path / "crawl.warc.wet.gz"
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    w.write_record(w.create_warcinfo_record("crawl.wet", {"software": "winnow tests"}))
    text = "Größe und Übermaß.\nZweite Zeile."
    w.write_record(w.create_warc_record("https://a.example/one", "conversion", payload=io.BytesIO(text.encode()),
                                        warc_content_type="text/plain"))
    path.write_bytes(buf.getvalue())
    rows, skipped = read_all(path, "wet")
    assert skipped == {"warcinfo": 1}
    assert [(r["url"], r["text"]) for _, r in rows] == [("https://a.example/one", text)]


def test_format_of_suffixes():
    assert [format_of(p) for p in ("a.warc", "a.warc.gz", "a.arc.gz", "a.wet", "a.warc.wet.gz", "a.jsonl")] == [
        "warc", "warc", "warc", "wet", "wet", None]
