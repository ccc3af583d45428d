"""Main-content extraction quality on the 400 labelled trafilatura pages, tuned on one half and reported on
the other: the `extract` stage against the same extractor called bare, for trafilatura and resiliparse.

Halves: a page is in the TUNING half when the first byte of sha256(file name) is even, else in the
HELD-OUT half (fixed, 198/202 pages). The candidate settings (trafilatura's precision/recall modes with and
without its own backup extractors, the resiliparse fallback share, the fallback's short-line filter) are
compared on the tuning half only; the stage's default is the fastest candidate within NEAR_BEST of the best
tuning-half shingle F1, and only the held-out rows say how it does on pages never looked at while choosing.
s/page: CPU seconds a page in this process for the extractor rows; wall seconds for the stage rows (the
extractor runs in the stage's child process; load on the machine inflates them).

Each page lists `with` snippets (main text it must contain) and `without` snippets (boilerplate it must
not). Printed per setup and half:
- with found: share of `with` snippets in the output; w/o left: share of `without` absent;
- snippet P/R/F1 as trafilatura's own evaluation scores them (TP: with found, FN: with missing,
  FP: without found);
- shingle P/R/F1: the same counted over 4-word shingles of the snippets (a snippet of fewer words is
  one shingle), the article-body scoring of extraction benchmarks. The pages carry no full gold
  article body, so the labelled snippets stand in for it.
Text and snippets are compared after collapsing white space and removing soft hyphens (U+00AD, invisible;
trafilatura drops them, the labels keep them: 11 misses on one page were only that).
Pages are decoded as the WARC reader decodes them (winnow.pipeline.warc.decode_html: 8 pages are Latin-1).
Run: .venv/bin/python bench/extract_quality.py [--limit N] [--quick: no candidate scan]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from winnow.filters.extract import (
    RESILIPARSE_DEFAULTS,
    TRAFILATURA_DEFAULTS,
    ExtractParams,
    ExtractStage,
    drop_short_lines,
    extract_one,
)
from winnow.pipeline.warc import decode_html

PAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "html" / "trafilatura_eval"
FALLBACK_SHARES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FALLBACK_MIN_WORDS = (0, 3, 4)
# the stage default is the fastest candidate within this much tuning-half F1 of the best one (differences
# this small are a page or two of 198)
NEAR_BEST = 0.002


def words(text: str) -> list[str]:
    return text.replace("\xad", "").split()


def shingles(snippet: str, n: int = 4) -> set[tuple[str, ...]]:
    w = words(snippet)
    return {tuple(w)} if len(w) < n else {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def score(outputs: list[str], labels: list[dict]) -> dict[str, float]:
    tp = fn = fp = tn = 0
    stp = sfn = sfp = 0
    for text, lab in zip(outputs, labels, strict=True):
        norm = " ".join(words(text or ""))
        for s in lab["with"]:
            hit = " ".join(words(s)) in norm
            tp, fn = tp + hit, fn + (not hit)
            for sh in shingles(s):
                found = " ".join(sh) in norm
                stp, sfn = stp + found, sfn + (not found)
        for s in lab["without"]:
            hit = " ".join(words(s)) in norm
            fp, tn = fp + hit, tn + (not hit)
            sfp += sum(" ".join(sh) in norm for sh in shingles(s))

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    sp, sr = stp / max(stp + sfp, 1), stp / max(stp + sfn, 1)
    return {"with_found": tp / max(tp + fn, 1), "without_left_out": tn / max(tn + fp, 1),
            "snippet_p": p, "snippet_r": r, "snippet_f1": f1(p, r), "shingle_p": sp, "shingle_r": sr,
            "shingle_f1": f1(sp, sr)}


def is_held_out(file_name: str) -> bool:
    return hashlib.sha256(file_name.encode()).digest()[0] % 2 == 1


def bare(extractor: str, html: str, url: str) -> str:
    if extractor == "trafilatura":
        import trafilatura

        return trafilatura.extract(html, url=url) or ""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True) or ""


def timed(fn: Callable[[str, str], str], html: list[str], urls: list[str]) -> tuple[list[str], float]:
    t0 = time.process_time()   # CPU time: a loaded machine does not inflate it
    outs = [fn(h, u) for h, u in zip(html, urls, strict=True)]
    return outs, (time.process_time() - t0) / len(html)


def through_stage(params: ExtractParams, html: list[str], urls: list[str]) -> tuple[list[str], float]:
    """The stage itself (child process, time limit), min_chars 0 so every page comes back."""
    table = pa.table({"id": [str(i) for i in range(len(html))], "text": pa.nulls(len(html), pa.string()),
                      "url": urls, "html": html})
    t0 = time.perf_counter()
    kept, _, _ = ExtractStage(params).apply(table, None)
    seconds = (time.perf_counter() - t0) / len(html)
    by_id = dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist(), strict=True))
    return [by_id.get(str(i), "") for i in range(len(html))], seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="skip the candidate scan (bare and stage rows only)")
    args = ap.parse_args()
    items = sorted(json.loads((PAGES / "evaldata.json").read_text()).items(), key=lambda kv: kv[1]["file"])
    items = items[:args.limit] if args.limit else items
    urls = [u for u, _ in items]
    labels = [v for _, v in items]
    html = [decode_html(gzip.decompress((PAGES / v["file"]).read_bytes())) for v in labels]
    held = [is_held_out(v["file"]) for v in labels]
    print(f"{len(items)} labelled pages: {len(held) - sum(held)} in the tuning half, {sum(held)} HELD OUT "
          f"(sha256(file name)[0] odd; never used to choose a setting)")

    def halves(texts: list[str]) -> tuple[dict, dict]:
        tune = [i for i, h in enumerate(held) if not h]
        out = [i for i, h in enumerate(held) if h]
        return (score([texts[i] for i in tune], [labels[i] for i in tune]),
                score([texts[i] for i in out], [labels[i] for i in out]))

    print(f"{'setup':44s} {'half':8s} {'with found':>10s} {'w/o left':>9s} {'snip P':>7s} {'snip R':>7s} "
          f"{'snip F1':>7s} {'shng P':>7s} {'shng R':>7s} {'shng F1':>7s} {'s/page':>7s}")

    def show(name: str, texts: list[str], seconds: float | None) -> float:
        tune_s, held_s = halves(texts)
        for half, s in (("tuning", tune_s), ("HELD-OUT", held_s)):
            secs = f"{seconds:7.4f}" if seconds is not None else f"{'':7s}"
            print(f"{name:44s} {half:8s} {s['with_found']:10.3f} {s['without_left_out']:9.3f} {s['snippet_p']:7.3f} "
                  f"{s['snippet_r']:7.3f} {s['snippet_f1']:7.3f} {s['shingle_p']:7.3f} {s['shingle_r']:7.3f} "
                  f"{s['shingle_f1']:7.3f} {secs}", flush=True)
        return tune_s["shingle_f1"]

    for extractor in ("trafilatura", "resiliparse"):
        show(f"{extractor} bare", *timed(lambda h, u, e=extractor: bare(e, h, u), html, urls))

    if not args.quick:
        print("-- candidates (chosen on the tuning half; stage defaults: trafilatura "
              f"{TRAFILATURA_DEFAULTS}, resiliparse {RESILIPARSE_DEFAULTS}) --")
        resiliparse_texts, resiliparse_secs = timed(
            lambda h, u: extract_one(("resiliparse", {}, None, 0.0, 0), h, u), html, urls)
        show("resiliparse stage defaults", resiliparse_texts, resiliparse_secs)
        rows = []   # (tuning F1, held-out F1, s/page, name)
        for no_fallback in (False, True):
            for mode in ({}, {"favor_precision": True}, {"favor_recall": True}):
                options = {"no_fallback": no_fallback, **mode}
                setup = ("trafilatura", options, None, 0.0, 0)
                texts, secs = timed(lambda h, u, s=setup: extract_one(s, h, u), html, urls)
                name = "trafilatura " + " ".join(f"{k}={v}" for k, v in options.items())
                show(name, texts, secs)
                for min_words in FALLBACK_MIN_WORDS:
                    other = [drop_short_lines(t, min_words) for t in resiliparse_texts]
                    for share in (0.0, *FALLBACK_SHARES):
                        mixed = [f if len(t) < share * len(f) else t for t, f in zip(texts, other, strict=True)]
                        tune_s, held_s = halves(mixed)
                        label = f"{name} -> resiliparse below {share} (lines < {min_words} words dropped)"
                        rows.append((tune_s["shingle_f1"], held_s["shingle_f1"],
                                     secs + (resiliparse_secs if share else 0.0), label))
        rows.sort(key=lambda r: -r[0])
        print(f"{'top 10 by tuning-half shingle F1':96s} {'tuning':>7s} {'HELD-OUT':>8s} {'s/page':>7s}")
        for tune_f1, held_f1, secs, label in rows[:10]:
            print(f"{label:96s} {tune_f1:7.4f} {held_f1:8.4f} {secs:7.4f}")
        best = rows[0]
        near = min((r for r in rows if r[0] >= best[0] - NEAR_BEST), key=lambda r: r[2])
        print(f"best on the tuning half: {best[3]} (tuning {best[0]:.4f}, held out {best[1]:.4f}, {best[2]:.4f} s/page)")
        print(f"fastest within {NEAR_BEST} of it on the tuning half: {near[3]} (tuning {near[0]:.4f}, "
              f"held out {near[1]:.4f}, {near[2]:.4f} s/page)")

    print("-- the extract stage --")
    defaults = ExtractParams()
    show(f"extract stage default (no_fallback, resiliparse below {defaults.fallback_below})",
         *through_stage(ExtractParams(min_chars=0), html, urls))
    show("extract stage, trafilatura's own fallbacks on", *through_stage(
        ExtractParams(min_chars=0, options={"no_fallback": False}), html, urls))
    show("extract stage trafilatura, no fallback", *through_stage(ExtractParams(min_chars=0, fallback=None),
                                                                  html, urls))
    show("extract stage resiliparse", *through_stage(ExtractParams(extractor="resiliparse", min_chars=0),
                                                     html, urls))

if __name__ == "__main__":
    main()
