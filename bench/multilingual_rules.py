"""Share of pages the heuristics stage keeps, per language, with English rules and with per-language ones.

The pages are the 400 labelled pages of ../shared/data/html/trafilatura_eval (German, English,
French, Spanish, Polish, Japanese, Chinese, … news, blogs, shops, forums). Each page's main text comes
from the extract stage's default (trafilatura with the resiliparse fallback) and its language from
lid.176 (`language_id.identify`). The heuristics stage then runs twice with its defaults (datatrove's
Gopher, Gopher repetition, C4 and FineWeb rules): "english" without a `language` column (every page
meets the English rules, as before per-language settings), "per-language" with it.

    .venv/bin/python bench/multilingual_rules.py [--min-pages 5]

prints, per language with at least --min-pages pages: pages, kept share with each setting, and the
most common reason a page was dropped with each.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from winnow.filters.extract import ExtractParams, extract_one
from winnow.filters.heuristics import HeuristicsStage
from winnow.filters.language_id import default_model_path, identify

PAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "html" / "trafilatura_eval"


def load_pages(pages: Path = PAGES) -> pa.Table:
    """id, url, text (main text), language of every labelled page that yields any text."""
    items = sorted(json.loads((pages / "evaldata.json").read_text()).items(), key=lambda kv: kv[1]["file"])
    setup = ExtractParams().setup()
    ids, urls, texts = [], [], []
    for url, item in items:
        html = gzip.decompress((pages / item["file"]).read_bytes()).decode("utf-8", "replace")
        text = extract_one(setup, html, url)
        if text.strip():
            ids.append(item["file"])
            urls.append(url)
            texts.append(text)
    languages, _ = identify(texts, default_model_path())
    return pa.table({"id": ids, "url": urls, "text": texts, "language": languages})


def kept_by_language(table: pa.Table, per_language: bool) -> tuple[dict[str, int], dict[str, Counter]]:
    """Per language: pages kept, and the reasons pages were dropped."""
    languages = table.column("language").to_pylist()
    run_on = table if per_language else table.drop_columns(["language"])
    kept, rejected, _ = HeuristicsStage().apply(run_on, None)
    language_of = dict(zip(table.column("id").to_pylist(), languages, strict=True))
    counts: Counter[str] = Counter(language_of[i] for i in kept.column("id").to_pylist())
    reasons: dict[str, Counter] = {}
    for doc_id, reason in zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist(), strict=True):
        reasons.setdefault(language_of[doc_id], Counter())[reason] += 1
    return dict(counts), reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-pages", type=int, default=5, help="languages with fewer pages are summed as 'other'")
    args = parser.parse_args()
    table = load_pages()
    pages = Counter(table.column("language").to_pylist())
    before, why_before = kept_by_language(table, per_language=False)
    after, why_after = kept_by_language(table, per_language=True)
    print(f"{table.num_rows} labelled pages with main text; heuristics stage defaults")
    print(f"{'lang':<6}{'pages':>6}{'english':>9}{'per-lang':>10}  top drop reason english -> per-language")
    shown = [lang for lang, n in pages.most_common() if n >= args.min_pages]
    for lang in shown:
        top_before = why_before.get(lang, Counter()).most_common(1)
        top_after = why_after.get(lang, Counter()).most_common(1)
        print(f"{lang:<6}{pages[lang]:>6}{before.get(lang, 0) / pages[lang]:>9.2f}{after.get(lang, 0) / pages[lang]:>10.2f}"
              f"  {top_before[0][0] if top_before else '-'} -> {top_after[0][0] if top_after else '-'}")
    rest = [lang for lang in pages if lang not in shown]
    n_rest = sum(pages[lang] for lang in rest)
    if n_rest:
        print(f"{'other':<6}{n_rest:>6}{sum(before.get(lang, 0) for lang in rest) / n_rest:>9.2f}"
              f"{sum(after.get(lang, 0) for lang in rest) / n_rest:>10.2f}  ({', '.join(sorted(map(str, rest)))})")


if __name__ == "__main__":
    main()
