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
EMAIL, PHONE = "dana.whitfield@northbrook-mail.com", "+1 415 555 2671"
GSM8K = {"name": "gsm8k", "paths": [str(SHARED_DATA / "eval/gsm8k/test.jsonl")], "fields": ["question", "answer"]}
REFERENCE = str(SHARED_DATA / "reference" / "wikipedia" / "*.jsonl")


def _planted(folder: Path) -> str:
    """A JSONL file whose documents carry markup: an exact copy, a near copy (one word changed) and a
    broken line, so the markup reaches the rejection, dedup and ingest examples."""
    wiki = json.loads((SHARED_DATA / "reference/wikipedia/llamafactory_wiki_demo-000.jsonl").open().readline())
    body = " ".join(wiki["text"].split()[:400])
    text = f"{XSS} planted markup in a document\n{body}"
    near = text.replace(" the state", " the nation", 1)   # dedup lower-cases: change a word, not its case
    assert near != text
    wiki_lines = (SHARED_DATA / "reference/wikipedia/llamafactory_wiki_demo-000.jsonl").open().readlines()
    # whole sentences: C4's rules drop a line without terminal punctuation
    bodies = [json.loads(line)["text"][:3000].rsplit(". ", 1)[0] + "." for line in wiki_lines[2:4]]
    # a GSM8K test question pasted into an article (decontaminate drops it), and personal data in another
    # (pii redacts it; the report shows its context masked, never the data)
    question = json.loads((SHARED_DATA / "eval/gsm8k/test.jsonl").open().readline())["question"]
    leak = f"{bodies[0]}\nHomework: {question}"
    personal = f"{bodies[1]}\nWrite to {EMAIL} or call {PHONE} for details."
    lines = [json.dumps({"id": "planted-xss", "text": text}), json.dumps({"id": "planted-xss-copy", "text": text}),
             json.dumps({"id": "planted-near", "text": near}), '{"id": "planted-broken", "text": "<script>alert(2)',
             json.dumps({"id": "planted-<leak>", "text": leak}), json.dumps({"id": "planted-pii", "text": personal})]
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
                    {"decontaminate": {"benchmarks": [GSM8K]}}, {"pii": {}},
                    {"fasttext_quality": {"positives": {"paths": [REFERENCE], "max_docs": 300}, "keep_top": 0.5,
                                          "train_args": {"bucket": 50_000}}},
                    {"tokenize": {"vocab_size": 600, "train_docs": 500}}, {"pack": {"seq_len": 128}}]}, client)
    # the smallest eval that still has every part: two arms, two held-out sets, two seeds, downstream
    cfg = EvalConfig(arms={"raw": str(out / "00-ingest"), "fasttext": str(out / "07-fasttext_quality")},
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
    assert all(stage in sections["funnel"] for stage in ("00-ingest", "03-minhash_dedup", "09-pack"))
    assert "invalid_json" in sections["rejections"] and "exact_duplicate" in sections["rejections"]
    assert "fasttext_score" in sections["scores"] and "cut" in sections["scores"]
    assert "lowest-scored" in sections["scores"] and "highest-scored" in sections["scores"]
    # removed documents beside their survivor, for the exact and the near copy
    assert "id planted-xss-copy" in sections["dedup"] and "id planted-near" in sections["dedup"]
    assert sections["dedup"].count("id planted-xss<") >= 2
    assert "padding fraction" in sections["packing"] and "documents per row" in sections["packing"]
    # a multiplier with its spread over seeds, or (a seed bounded it: eval.json has no std) the bound and why
    assert "Compute multipliers" in sections["eval"] and re.search(
        r"fasttext</td><td>ref</td><td[^>]*>(?:\d+\.\d\d ± |[≥≤] \d+\.\d\d</td>.*?seeds? [\d, ]+.*?no interval)",
        sections["eval"])
    assert "piqa" in sections["eval"]
    # every stage's manifest records its workers' peak memory (engine.py): shown in human units, none missing
    assert "not recorded" not in sections["timings"] and "training_flops" in sections["timings"]
    assert len(re.findall(r'<td class="n">\d[\d,.]* (?:MB|GB)</td>', sections["timings"])) >= 8
    assert "bytes removed" in sections["funnel"]
    assert "fasttext_quality:" in sections["config"] and "flop_budget" in sections["config"]
    # which benchmark item leaked, and where (the document id escaped); personal data counted and masked
    contamination = sections["contamination"]
    assert "<h3>05-decontaminate</h3>" in contamination and "gsm8k" in contamination
    assert re.search(r'<span class="rejected">1</span>', contamination)        # one item leaked
    assert "<code>planted-&lt;leak&gt;</code>" in contamination and "Janet’s ducks lay 16 eggs" in contamination
    personal = sections["personal"]
    found = dict(re.findall(r'<tr><td>([a-z_]+)</td><td class="n">(\d+)</td>', personal))
    assert set(found) == {"email", "ip", "phone", "credit_card", "iban"}
    assert int(found["email"]) >= 1 and found["phone"] == "1"                   # the planted number, no other
    assert "Write to &lt;EMAIL&gt; or call &lt;PHONE&gt;" in personal and "planted-pii" in personal
    assert EMAIL not in page and PHONE not in page and "555 2671" not in page    # never what pii removed
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
    assert "Examples from the first 5 rejected rows" in sections["rejections"]
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
        shown = driver.execute_script("return document.getElementById('contamination').innerText")
        assert "gsm8k" in shown and "planted-<leak>" in shown, shown
        shown = driver.execute_script("return document.getElementById('personal').innerText")
        assert "Write to <EMAIL> or call <PHONE>" in shown and "email" in shown, shown
        # each stage's reasons fold: only the first stage's table shows until a reader opens another
        folds = driver.execute_script(
            "return Array.from(document.querySelectorAll('#rejections details')).map(d => [d.open, "
            "Array.from(d.querySelectorAll('table')).some(t => t.checkVisibility())])")
        assert len(folds) >= 4 and folds[0] == [True, True], folds
        assert all(f == [False, False] for f in folds[1:]), folds
        height = driver.execute_script("return document.getElementById('rejections').offsetHeight")
        assert height < 2 * 900, height   # was four screens with every stage's examples open
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


def _figure_of(draw, item: dict, monkeypatch):
    """The matplotlib Figure a figures.py function builds (caught where it becomes a data URI)."""
    from winnow.report import figures

    caught = []
    monkeypatch.setattr(figures, "data_uri", lambda fig: caught.append(fig) or "data:image/png;base64,")
    draw(item)
    return caught[0]


def _x_tick_labels(fig) -> list[tuple[float, float, str]]:
    """(left, right, text) in pixels of every drawn x tick label inside the axes' range, left to right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    out = []
    for ax in fig.axes:
        lo, hi = sorted(ax.get_xlim())
        for tick in ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks():
            label = tick.label1
            if label.get_visible() and label.get_text() and lo <= tick.get_loc() <= hi:
                box = label.get_window_extent(renderer)
                out.append((box.x0, box.x1, label.get_text()))
    return sorted(out)


@pytest.mark.parametrize("case", ["adjacent sizes", "log sizes", "log scores"])
def test_histogram_tick_labels_are_plain_numbers_that_never_overlap(case, monkeypatch):
    """Cluster sizes 30..40 each got a label (they ran together: "3031323334"), and log axes printed
    10^1-style labels; every label must now be a plain number clear of its neighbours."""
    import numpy as np

    from winnow.report import figures

    rng = np.random.default_rng(0)
    if case == "adjacent sizes":
        fig = _figure_of(figures.cluster_histogram, {"stage": "02-exact_dedup", "cluster_sizes":
                                                     np.asarray([2] * 60 + [3] * 9 + list(range(16, 18)) +
                                                                list(range(30, 41)))}, monkeypatch)
    elif case == "log sizes":
        fig = _figure_of(figures.cluster_histogram, {"stage": "03-minhash_dedup", "cluster_sizes":
                                                     np.asarray([2] * 13 + [3] * 3 + [16, 17, 60, 61, 122])},
                         monkeypatch)
    else:
        fig = _figure_of(figures.score_histogram, {"stage": "04-perplexity_quality", "column": "perplexity",
                                                   "values": np.exp(rng.uniform(np.log(12), np.log(1500), 300)),
                                                   "cut_lo": None, "cut_hi": 400.0}, monkeypatch)
    labels = _x_tick_labels(fig)
    texts = [t for _, _, t in labels]
    assert len(labels) >= 4, texts
    assert all(re.fullmatch(r"\d+(?:\.\d+)?k?", t) for t in texts), texts   # no mathtext such as 10^{1}
    overlapping = [(a[2], b[2]) for a, b in zip(labels, labels[1:], strict=False) if b[0] < a[1] + 1]
    assert not overlapping, texts


def _manifest_keys(stage_dir: Path, set_top: dict, set_totals: dict, drop_totals: tuple[str, ...] = (),
                   drop_top: tuple[str, ...] = (), shard_peak: int | None = None) -> None:
    """Give a hand-written manifest exactly the keys a run of a given age writes: those the engine records
    now (peak_rss, bytes_removed, removed_reasons, driver_peak_rss, flat_scores) or none of them."""
    path = stage_dir / "_manifest.json"
    m = json.loads(path.read_text())
    m.update(set_top)
    m["totals"].update(set_totals)
    for k in drop_totals:
        m["totals"].pop(k, None)
    for k in drop_top:
        m.pop(k, None)
    for shard in m["shards"]:
        shard.pop("peak_rss", None)
        if shard_peak is not None:
            shard["peak_rss"] = shard_peak
    path.write_text(json.dumps(m))


def _hand_written_stage(folder: Path, kind: str, ids: list[str], texts: list[str], columns: dict, keep,
                        extra: dict, **record_bytes: int) -> Path:
    """A stage folder in the run layout, written by hand: kept rows, rejected rows (`<kind>_low`), one
    shard record and the manifest (with `extra`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.pipeline.manifest import ShardRecord, write_manifest

    keep = np.asarray(keep, bool)
    (folder / "rejected").mkdir(parents=True)
    table = pa.table({"id": ids, "text": texts, **columns})
    pq.write_table(table.filter(pa.array(keep)), folder / "train-00000.parquet")
    rejected = table.filter(pa.array(~keep))
    rejected = rejected.append_column("stage", pa.array([kind] * rejected.num_rows)).append_column(
        "reason", pa.array([f"{kind}_low"] * rejected.num_rows))
    pq.write_table(rejected, folder / "rejected" / "part-00000.parquet")
    record = ShardRecord("part-00000", len(ids), int(keep.sum()), int((~keep).sum()), rows_out=int(keep.sum()),
                         reasons={f"{kind}_low": int((~keep).sum())} if (~keep).any() else {}, **record_bytes)
    write_manifest(folder, kind, "h", {}, [record], 0.1, extra)
    return folder


def test_memory_removed_bytes_and_flat_scores_from_the_manifests(tmp_path):
    """Peak memory in human units where a manifest records it ("not recorded" only where not), bytes
    removed beside rejected ones with the removal reasons and removed text, each stage's reasons folded
    (the first open), and flat quality scores flagged: "nothing cut" or "cut on noise"."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.report import build_report

    n = 20
    ids = [f"d{i}" for i in range(n)]
    texts = [f"<b>document {i}</b>\nline two" for i in range(n)]

    def stage(dirname: str, kind: str, columns: dict, keep: np.ndarray, extra: dict) -> Path:
        return _hand_written_stage(tmp_path / dirname, kind, ids, texts, columns, keep, extra,
                                   bytes_in=10_000, bytes_kept=4_000, bytes_rejected=1_000)

    everything, half = np.ones(n, bool), np.arange(n) < n // 2
    ingest = stage("00-ingest", "ingest", {}, half, {})
    _manifest_keys(ingest, {"driver_peak_rss": 456_000_000, "removed_reasons": {}},
                   {"peak_rss": 123_456_789, "bytes_removed": 0, "bytes_kept": 9_000}, shard_peak=123_456_789)
    normalize = stage("01-normalize", "normalize", {}, half, {})
    _manifest_keys(normalize, {"removed_reasons": {"whitespace": 1_000, "c4_no_terminal_punct": 4_000}},
                   {"peak_rss": 2_500_000_000, "bytes_removed": 5_000}, shard_peak=2_500_000_000)
    (normalize / "removed").mkdir()
    pq.write_table(pa.table({"id": ["d1", "d2"], "reason": ["c4_no_terminal_punct", "whitespace"],
                             "text": ["<i>a removed line</i> without a stop", "   "]}),
                   normalize / "removed" / "part-00000.parquet")
    flat = {"spread": 0.0004, "kept_all": True, "message": "every fasttext_score lies in [0.5, 0.5004]: kept all"}
    ft = stage("02-fasttext_quality", "fasttext_quality", {"fasttext_score": np.full(n, 0.5)}, everything,
               {"score_column": "fasttext_score", "band": [0.5, 1.0], "cut": {"lo": None, "hi": None},
                "score_range": [0.5, 0.5004], "flat_scores": flat, "warnings": [flat["message"]]})
    _manifest_keys(ft, {"removed_reasons": {}}, {"peak_rss": 50_000_000, "bytes_removed": 0,
                                                 "bytes_kept": 9_000}, shard_peak=50_000_000)
    noisy = {"spread": 0.002, "kept_all": False, "message": "allow_flat_scores: true, so the stage cut on noise"}
    emb_scores = 0.3 + np.linspace(0, 0.002, n)
    emb = stage("03-embedding_quality", "embedding_quality", {"embedding_score": emb_scores}, ~half,
                {"score_column": "embedding_score", "band": [0.5, 1.0], "score_range": [0.3, 0.302],
                 "cut": {"lo": {"score": float(np.median(emb_scores)), "id_hash": 0}, "hi": None},
                 "flat_scores": noisy})
    _manifest_keys(emb, {"removed_reasons": {}}, {"peak_rss": 50_000_000, "bytes_removed": 0})
    old = stage("04-heuristics", "heuristics", {}, half, {})   # a manifest from before memory and byte records
    _manifest_keys(old, {}, {}, drop_totals=("peak_rss", "bytes_removed", "bytes_added"),
                   drop_top=("removed_reasons", "driver_peak_rss"))
    page = build_report(tmp_path).read_text()
    assert "<script" not in page and not re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', page)
    sections = _sections(page)

    timing_rows = dict(re.findall(r"<tr><td>(\d\d-[a-z_]+)</td>(.*?)</tr>", sections["timings"]))
    assert "123.5 MB" in timing_rows["00-ingest"] and "2.5 GB" in timing_rows["01-normalize"]
    assert "not recorded" in timing_rows["04-heuristics"]
    assert all("not recorded" not in timing_rows[s] for s in ("00-ingest", "01-normalize", "02-fasttext_quality"))
    assert "456.0 MB" in sections["timings"]   # the driver's peak

    funnel_rows = dict(re.findall(r"<tr><td>(\d\d-[a-z_]+)[^<]*(?:<span[^>]*>[^<]*</span>)?</td>(.*?)</tr>",
                                  sections["funnel"]))
    assert re.search(r"<th>bytes rejected</th><th>bytes removed</th>", sections["funnel"])
    assert funnel_rows["01-normalize"].endswith('<td class="n">1.0 KB</td><td class="n">5.0 KB</td>')
    assert funnel_rows["00-ingest"].endswith('<td class="n">0 B</td>')
    # the old manifest: not recorded, and the 5 KB that neither kept nor rejected rows hold is named
    assert "—" in funnel_rows["04-heuristics"] and "5.0 KB unaccounted" in funnel_rows["04-heuristics"]
    assert "scores flat: nothing cut" in sections["funnel"]

    rej = sections["rejections"]
    folds = re.findall(r"<details[^>]*>", rej)
    assert len(folds) == 4 and "open" in folds[0] and not any("open" in f for f in folds[1:]), folds
    normalize_fold = rej[rej.index("<b>01-normalize</b>"):].split("</details>")[0]
    assert "5.0 KB removed from kept documents" in normalize_fold
    assert normalize_fold.index("c4_no_terminal_punct") < normalize_fold.index("whitespace")   # most bytes first
    assert "4.0 KB" in normalize_fold and "40.0%" in normalize_fold   # of the stage's 10 KB input
    assert "&lt;i&gt;a removed line&lt;/i&gt;" in normalize_fold and "<i>a removed" not in page

    scores = sections["scores"]
    ft_part = scores[scores.index("02-fasttext_quality: <code>"):scores.index("03-embedding_quality: <code>")]
    assert 'class="flat kept-all"' in ft_part and "scores flat: nothing cut" in ft_part and "0.0004" in ft_part
    assert ft_part.count("kept all") == 1   # the manifest's message once, not again as a warning
    emb_part = scores[scores.index("03-embedding_quality: <code>"):]
    assert 'class="flat noise"' in emb_part and "scores flat: cut on noise" in emb_part


def test_every_kind_of_score_gets_its_histogram_and_prunes_plane(tmp_path):
    """Stage folders written by hand in the run layout (prune's ppl/entropy and plane, a DataRater cut
    with -inf below, a perplexity band with two ends): each score column gets a histogram and its cut."""
    import numpy as np
    from PIL import Image

    from winnow.report import build_report

    rng = np.random.default_rng(0)
    n = 40
    ids = [f"d{i}" for i in range(n)]
    texts = [f"<b>document {i}</b>\nline two" for i in range(n)]

    def stage(dirname: str, kind: str, columns: dict, keep: np.ndarray, extra: dict) -> None:
        _hand_written_stage(tmp_path / dirname, kind, ids, texts, columns, keep, extra)

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
           "cut": {"lo": {"score": float(np.quantile(rater, 0.5)), "id_hash": 1}, "hi": None},
           "meta": {"steps": 30, "meta_loss": [6.0, 5.8, 5.7], "uniform_outer_loss": [6.0, 5.85, 5.76]},
           "uniform_control": {"weighted_outer_loss": 5.75, "uniform_outer_loss": 5.805, "delta": -0.055,
                               "delta_se": 0.004, "steps": [16, 30]}})
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
    # four histograms, the plane and the DataRater's uniform-weight control curves
    assert scores.count('<img class="plot"') == 6
    control = scores[scores.index("02-datarater: meta-training"):]
    assert "5.805" in control and "-0.055" in control and "16–30" in control and "uniform-weight control" in control
    assert "&lt;b&gt;document" in scores and "<b>document" not in page
    assert "No pack stage" in _sections(page)["packing"] and "No dedup stage" in _sections(page)["dedup"]


def test_personal_data_is_counted_and_shown_masked_where_tag_mode_left_it_in_the_text(tmp_path):
    """`pii` with `action: tag` keeps the personal data in the rows it counts: the report's contexts are
    masked through the stage's own `display_text`, so the data itself appears nowhere on the page."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.pipeline.manifest import ShardRecord, write_manifest
    from winnow.pipeline.registry import get_stage_class
    from winnow.report import build_report

    pii = get_stage_class("pii")
    stage = pii(pii.Params(action="tag"))
    texts = [f"For the reunion, contact {EMAIL} before Friday.", "Nothing personal in this one.",
             f"Tickets: call {PHONE} after noon."]
    table = pa.table({"id": ["a", "b", "c"], "text": texts})
    kept, rejected, _ = stage.apply(table, None)
    folder = tmp_path / "00-pii"
    (folder / "rejected").mkdir(parents=True)
    pq.write_table(kept, folder / "train-00000.parquet")
    pq.write_table(rejected, folder / "rejected" / "part-00000.parquet")
    assert EMAIL in pq.read_table(folder / "train-00000.parquet").column("text")[0].as_py()   # tag keeps it
    record = ShardRecord("part-00000", 3, 3, 0, rows_out=3, stats=stage.shard_stats(table, kept, rejected))
    write_manifest(folder, "pii", "h", {"action": "tag"}, [record], 0.1, {})
    page = build_report(tmp_path).read_text()
    personal = _sections(page)["personal"]
    assert "<h3>00-pii: <code>tag</code></h3>" in personal
    assert "contact &lt;EMAIL&gt; before Friday" in personal and "call &lt;PHONE&gt; after noon" in personal
    assert EMAIL not in page and PHONE not in page and "555 2671" not in page
    assert "No <code>decontaminate</code> stage" in _sections(page)["contamination"]
