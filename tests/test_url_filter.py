"""`url_filter` on lists the tests write (no list ships with winnow): files, UT1's folder layout, banned
words, soft words, the allow list, and host normalisation."""

from __future__ import annotations

import pyarrow as pa

from winnow.filters.url_filter import UrlFilterParams, UrlFilterStage, normalize_host

URLS = [
    "https://www.casino-royal.example/play",       # 0 blocked domain (www. stripped)
    "http://deep.sub.casino-royal.example/x",      # 1 subdomain of a blocked domain
    "https://news.example.org/politics/today",     # 2 clean
    "https://EXAMPLE.net:8080/shop/cart",          # 3 block_urls prefix (case, port)
    "https://example.net/shopping",                # 4 not under /shop/: kept
    "https://bücher.example/katalog",              # 5 IDNA domain blocked as punycode
    "https://blog.example.com/free-viagra-deals",   # 6 hard banned word
    "https://blog.example.com/cheap-pills-online",  # 7 two soft words
    "https://blog.example.com/cheap-flights",       # 8 one soft word: kept
    "https://adult-site.example/videos",            # 9 UT1 category adult
    "https://ok.casino-royal.example/",             # 10 allowed subdomain wins
    None,                                           # 11 no URL: nothing to judge
]


def write_lists(tmp_path):
    (tmp_path / "gambling.txt").write_text("# gambling sites\ncasino-royal.example\n\nXN--BCHER-KVA.example  # IDNA\n")
    (tmp_path / "bad_urls.txt").write_text("example.net/shop/\n")
    ut1 = tmp_path / "ut1"
    (ut1 / "adult").mkdir(parents=True, exist_ok=True)
    (ut1 / "adult" / "domains").write_text("adult-site.example\n")
    (ut1 / "adult" / "urls").write_text("news.example.org/adult-section\n")
    (ut1 / "phishing").mkdir(exist_ok=True)
    (ut1 / "phishing" / "domains").write_text("login-paypal.example\n")
    return tmp_path


def run(tmp_path, **params):
    lists = write_lists(tmp_path)
    defaults = {"block_domains": [str(lists / "gambling.txt"), str(lists / "ut1")],
                "block_urls": [str(lists / "bad_urls.txt")], "banned_words": ["viagra"],
                "soft_banned_words": ["cheap", "pills", "online"], "soft_threshold": 2,
                "allow_domains": ["ok.casino-royal.example"]}
    stage = UrlFilterStage(UrlFilterParams(**{**defaults, **params}))
    table = pa.table({"id": [f"u{i}" for i in range(len(URLS))], "text": ["t"] * len(URLS),
                      "url": pa.array(URLS, pa.string())})
    kept, rejected = stage.apply(table, None)
    return kept, dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist(), strict=True))


def test_each_rule_and_its_reason(tmp_path):
    kept, reasons = run(tmp_path)
    assert reasons == {"u0": "url_blocked:gambling.txt", "u1": "url_blocked:gambling.txt",
                       "u3": "url_blocked:bad_urls.txt", "u5": "url_blocked:gambling.txt",
                       "u6": "url_banned_word", "u7": "url_soft_banned_words", "u9": "url_blocked:adult/domains"}
    assert kept.column("id").to_pylist() == ["u2", "u4", "u8", "u10", "u11"]


def test_allow_domains_win_and_soft_threshold_moves(tmp_path):
    _, reasons = run(tmp_path, allow_domains=["casino-royal.example", "blog.example.com"], soft_threshold=3)
    assert "u0" not in reasons and "u1" not in reasons and "u6" not in reasons
    assert "u7" not in reasons   # two soft words < 3
    _, reasons = run(tmp_path, allow_domains=[], soft_threshold=1)
    assert reasons["u10"] == "url_blocked:gambling.txt" and reasons["u8"] == "url_soft_banned_words"


def test_ut1_urls_file_blocks_paths_and_category_folder_works(tmp_path):
    lists = write_lists(tmp_path)
    stage = UrlFilterStage(UrlFilterParams(block_domains=[str(lists / "ut1" / "phishing")]))
    table = pa.table({"id": ["a", "b"], "text": ["t", "t"],
                      "url": ["https://secure.login-paypal.example/", "https://news.example.org/adult-section/1"]})
    kept, rejected = stage.apply(table, None)
    assert rejected.column("reason").to_pylist() == ["url_blocked:phishing/domains"]
    stage = UrlFilterStage(UrlFilterParams(block_domains=[str(lists / "ut1")]))
    _, rejected = stage.apply(table, None)
    assert rejected.column("reason").to_pylist() == ["url_blocked:phishing/domains", "url_blocked:adult/urls"]


def test_normalize_host():
    assert normalize_host("WWW.Bücher.Example:443") == "xn--bcher-kva.example"
    assert normalize_host("www.example.com.") == "example.com"
    assert normalize_host("wwwexample.com") == "wwwexample.com"
