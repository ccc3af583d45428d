"""A crawl file that is not a WARC, among good ones, on a real Dask LocalCluster: its shard fails with an
error naming the file and byte offset, every other file's shard is written, the run fails at the end naming
the file, and a rerun after the file is fixed does only that file's shard."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import check_conservation, kept_rows, run
from test_warc import GERMAN_PAGE, page, write_crawl

from winnow.pipeline.errors import WinnowError


def test_a_file_that_is_not_a_warc_fails_only_its_shard_and_a_rerun_resumes(tmp_path, client):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    write_crawl(crawl / "a.warc.gz")
    bad = crawl / "b.warc.gz"
    bad.write_bytes(gzip.compress(page(GERMAN_PAGE)))   # a gzipped HTML page saved under a WARC name
    write_crawl(crawl / "c.warc.gz", gz=False)
    out = tmp_path / "out"
    config = {"input": {"paths": [str(crawl / "*.warc.gz")]}, "output": str(out),
              "stages": [{"extract": {"extractor": "resiliparse", "keep_html": False}}]}

    with pytest.raises(WinnowError) as err:
        run(config, client)
    message = str(err.value)
    assert f"{bad}: not a WARC file from byte offset 0" in message and "1 shard(s) failed" in message
    ingest = out / "00-ingest"
    markers = sorted(p.name for p in (ingest / "_shards").glob("*.json"))
    assert markers == ["part-00000.json", "part-00002.json"]   # a and c written; b's shard has none
    assert set(kept_rows(ingest).column("warc_file").to_pylist()) == {str(crawl / "a.warc.gz"),
                                                                       str(crawl / "c.warc.gz")}
    assert not (out / "01-extract").exists()   # the run stops after the stage that failed

    write_crawl(bad)   # fixed: now a WARC
    run(config, client)
    manifest = json.loads((ingest / "_manifest.json").read_text())
    assert manifest["skipped_shards"] == 2 and len(manifest["shards"]) == 3
    check_conservation(out)
    assert len(set(kept_rows(out / "01-extract").column("warc_file").to_pylist())) == 3
