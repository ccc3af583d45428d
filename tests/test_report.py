"""`winnow report`: a real run (dedup, heuristics, fastText, tokenize + pack) and a tiny `winnow eval`,
rendered to one HTML file; markup planted in documents stays text; the page opens in headless
Chromium with no console error, every section present and every image decoded."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import pytest
from conftest import SHARED_DATA, run, web_files

from winnow.report.render import SECTIONS

XSS = "<script>alert(1)</script>"
REFERENCE = str(SHARED_DATA / "reference" / "wikipedia" / "*.jsonl")


def _planted(folder: Path) -> str:
    """A JSONL file whose documents carry markup: an exact copy, a near copy (one word changed) and a
    broken line, so the markup reaches the rejection, dedup and ingest examples."""
    wiki = json.loads((SHARED_DATA / "reference/wikipedia/llamafactory_wiki_demo-000.jsonl").open().readline())
    body = " ".join(wiki["text"].split()[:400])
    text = f"{XSS} planted markup in a document\n{body}"
    near = text.replace(" the state", " the nation", 1)   # dedup lower-cases: change a word, not its case
    assert near != text
    lines = [json.dumps({"id": "planted-xss", "text": text}), json.dumps({"id": "planted-xss-copy", "text": text}),
             json.dumps({"id": "planted-near", "text": near}), '{"id": "planted-broken", "text": "<script>alert(2)']
    path = folder / "planted.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def reported(tmp_path_factory, client):
    from winnow.proxy.evaluate import EvalConfig, run_eval
    from winnow.report import build_report

    root = tmp_path_factory.mktemp("report")
    out = root / "run"
    run({"input": {"paths": [_planted(root), *web_files(2)]}, "output": str(out),
         "stages": [{"normalize": {}}, {"exact_dedup": {}}, {"minhash_dedup": {}}, {"heuristics": {}},
                    {"fasttext_quality": {"positives": {"paths": [REFERENCE], "max_docs": 300}, "keep_top": 0.5,
                                          "train_args": {"bucket": 50_000}}},
                    {"tokenize": {"vocab_size": 600, "train_docs": 500}}, {"pack": {"seq_len": 128}}]}, client)
    # the smallest eval that still has every part: two arms, two held-out sets, two seeds, downstream
    cfg = EvalConfig(arms={"raw": str(out / "00-ingest"), "fasttext": str(out / "05-fasttext_quality")},
                     output=str(root / "eval"), pool_heldout_fraction=0.1, pool_tokens=4_000, seq_len=128,
                     heldout={"ref": {"paths": [str(SHARED_DATA / "reference/speeches/*.jsonl")], "tokens": 4_000}},
                     vocab_size=600, flop_budget=2e10, baseline_budgets=[0.5, 1.0], seeds=[0, 1], n_evals=2,
                     batch_size=4, max_eval_rows=8, downstream={"piqa": 4, "data": str(SHARED_DATA / "eval")})
    run_eval(cfg, log=lambda *a: None)
    path = build_report(out, root / "eval")
    return out, root / "eval", path


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([a-z]+)">(.*?)</section>', page, flags=re.S))


def test_markup_in_documents_is_escaped_and_every_section_is_filled(reported):
    out, _, path = reported
    assert path == out / "report.html"
    page = path.read_text()
    assert "<script" not in page                             # the page runs nothing, planted markup included
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page    # the planted document is shown, as text
    assert "&lt;script&gt;alert(2)" in page                   # the broken line's raw bytes, from 00-ingest
    assert not re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', page)   # nothing to fetch
    sections = _sections(page)
    assert list(sections) == list(SECTIONS)
    assert all(stage in sections["funnel"] for stage in ("00-ingest", "03-minhash_dedup", "07-pack"))
    assert "invalid_json" in sections["rejections"] and "exact_duplicate" in sections["rejections"]
    assert "fasttext_score" in sections["scores"] and "cut" in sections["scores"]
    assert "lowest-scored" in sections["scores"] and "highest-scored" in sections["scores"]
    # removed documents beside their survivor, for the exact and the near copy
    assert "id planted-xss-copy" in sections["dedup"] and "id planted-near" in sections["dedup"]
    assert sections["dedup"].count("id planted-xss<") >= 2
    assert "padding fraction" in sections["packing"] and "documents per row" in sections["packing"]
    assert "Compute multipliers" in sections["eval"] and re.search(r"fasttext</td><td>ref</td><td[^>]*>[≥≤ ]*\d+\.\d\d ± ",
                                                                    sections["eval"])
    assert "piqa" in sections["eval"]
    assert "not recorded" in sections["timings"] and "training_flops" in sections["timings"]
    assert "fasttext_quality:" in sections["config"] and "flop_budget" in sections["config"]
    images = re.findall(r'<img class="plot" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == page.count("<img ") >= 7
    from PIL import Image

    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()


def test_cli_writes_the_default_path_and_says_what_is_missing(reported, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from winnow.cli import cli
    from winnow.report import gather

    out, _, _ = reported
    monkeypatch.setattr(gather, "SCAN_ROWS", 5)   # a row budget far below the run: samples, not whole stages
    target = tmp_path / "nested" / "r.html"
    shown = CliRunner().invoke(cli, ["report", str(out), "-o", str(target)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == str(target)
    sections = _sections(target.read_text())
    assert list(sections) == list(SECTIONS)
    assert "No eval folder given" in sections["eval"]
    assert "examples from the first 5 rejected rows" in sections["rejections"]
    assert "a sample" in sections["scores"]
    helped = CliRunner().invoke(cli, ["report", "--help"])
    assert helped.exit_code == 0 and "--eval" in helped.output and "report.html" in helped.output
    missing = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert missing.exit_code != 0


def _chromium(tmp_path: Path):
    """Selenium driving Debian's chromium through its chromedriver; no browser is ever downloaded."""
    from winnow.report.browser import headless_chromium, missing_tools

    missing = missing_tools()
    if missing:
        why = (f"headless Chromium unavailable: {', '.join(missing)} missing "
               "(bash scripts/setup.sh --dev installs Debian's chromium and chromium-driver)")
        if os.environ.get("CI"):   # CI has shown apt-get installs them there: missing is a broken setup
            pytest.fail(why)
        pytest.skip(why)  # setup.sh --dev installs them where apt-get can; its warning says when it could not
    return headless_chromium(tmp_path)


def test_report_opens_cleanly_in_headless_chromium(reported, tmp_path):
    _, _, path = reported
    driver = _chromium(tmp_path)
    try:
        driver.get(path.resolve().as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        for sid in SECTIONS:
            text = driver.execute_script(f"return document.getElementById('{sid}').innerText")
            assert text.strip().startswith(SECTIONS[sid]) and len(text) > len(SECTIONS[sid]) + 10, sid
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert len(images) >= 7 and all(ok for _, ok in images), images
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1200, min(height, 16_000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        from PIL import Image

        with Image.open(shot) as im:
            assert im.size[0] >= 1000 and im.size[1] >= 900
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


def test_every_kind_of_score_gets_its_histogram_and_prunes_plane(tmp_path):
    """Stage folders written by hand in the run layout (prune's ppl/entropy and plane, a DataRater cut
    with -inf below, a perplexity band with two ends): each score column gets a histogram and its cut."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from winnow.pipeline.manifest import ShardRecord, write_manifest
    from winnow.report import build_report

    rng = np.random.default_rng(0)
    n = 40
    ids = [f"d{i}" for i in range(n)]
    texts = [f"<b>document {i}</b>\nline two" for i in range(n)]

    def stage(dirname: str, kind: str, columns: dict, keep: np.ndarray, extra: dict) -> None:
        folder = tmp_path / dirname
        (folder / "rejected").mkdir(parents=True)
        table = pa.table({"id": ids, "text": texts, **columns})
        pq.write_table(table.filter(pa.array(keep)), folder / "train-00000.parquet")
        rejected = table.filter(pa.array(~keep))
        rejected = rejected.append_column("stage", pa.array([kind] * rejected.num_rows)).append_column(
            "reason", pa.array([f"{kind}_low"] * rejected.num_rows))
        pq.write_table(rejected, folder / "rejected" / "part-00000.parquet")
        record = ShardRecord("part-00000", n, int(keep.sum()), int((~keep).sum()), rows_out=int(keep.sum()),
                             reasons={f"{kind}_low": int((~keep).sum())} if (~keep).any() else {})
        write_manifest(folder, kind, "h", {}, [record], 0.1, extra)

    everything = np.ones(n, bool)
    stage("00-ingest", "ingest", {}, everything, {})
    plane = tmp_path / "01-prune" / "eu_plane.png"
    ppl, entropy = np.exp(rng.normal(2, 1, n)), rng.uniform(1, 4, n)
    stage("01-prune", "prune", {"ppl": ppl, "entropy": entropy}, ppl < np.median(ppl),
          {"quadrants": {"Q1": 10, "Q2": 30}, "eu_plane": str(plane), "scoring_flops": 1e9})
    Image.new("RGB", (60, 40), "white").save(plane)
    rater = rng.normal(size=n)
    stage("02-datarater", "datarater", {"datarater_score": rater}, rater >= np.quantile(rater, 0.5),
          {"score_column": "datarater_score", "band": [0.5, 1.0], "acceptance": "cut",
           "cut": {"lo": {"score": float(np.quantile(rater, 0.5)), "id_hash": 1}, "hi": None}})
    stage("03-perplexity_quality", "perplexity_quality", {"perplexity": ppl}, everything,
          {"score_column": "perplexity", "band": [0.0, 1.0], "cut": {"lo": {"score": "-inf", "id_hash": 0},
                                                                     "hi": {"score": float(ppl.max()), "id_hash": 2}}})
    page = build_report(tmp_path).read_text()
    scores = _sections(page)["scores"]
    for title in ("01-prune: <code>ppl</code>", "01-prune: <code>entropy</code>", "02-datarater: <code>datarater_score",
                  "03-perplexity_quality: <code>perplexity"):
        assert title in scores, title
    assert scores.count("Error-uncertainty plane") == 1 and "Q2" in scores
    assert "hi " in scores and "acceptance" in scores
    assert scores.count('<img class="plot"') == 5                 # four histograms and the plane
    assert "&lt;b&gt;document" in scores and "<b>document" not in page
    assert "No pack stage" in _sections(page)["packing"] and "No dedup stage" in _sections(page)["dedup"]
