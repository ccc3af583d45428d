"""The report's HTML: one page, inline CSS, plots as data URIs, no script.

Every string that comes from the data (document text, ids, reasons, paths, config) passes through
`esc` (html.escape), so a document holding markup shows as text and never runs. Each section has
a stable `id` (SECTIONS); a section that does not apply to this run says so instead of vanishing.
"""

from __future__ import annotations

import html
import math
from string import Template
from typing import Any

SECTIONS = {"funnel": "Funnel", "rejections": "Rejections and removals", "scores": "Scores", "dedup": "Dedup",
            "contamination": "Decontamination", "personal": "Personal data",
            "packing": "Packing", "eval": "Proxy evaluation", "timings": "Timings", "config": "Config"}

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2327;
       background: #f6f7f9; }
header { background: #263238; color: #fff; padding: 14px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
header p { margin: 0; color: #cfd8dc; }
nav { position: sticky; top: 0; background: #37474f; padding: 6px 28px; z-index: 1; }
nav a { color: #eceff1; margin-right: 16px; text-decoration: none; font-size: 13px; }
nav a:hover { text-decoration: underline; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid #dde1e5; border-radius: 6px; padding: 8px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #e3e6e9; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #dde1e5; padding: 3px 8px; vertical-align: top; }
th { background: #eef1f4; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
pre.doc { white-space: pre-wrap; word-break: break-word; margin: 2px 0; font-size: 12px; background: #f4f5f7;
          padding: 4px 6px; border-left: 3px solid #b0bec5; max-width: 760px; }
pre.config { white-space: pre-wrap; font-size: 12px; background: #f4f5f7; padding: 8px; columns: 2 360px;
             overflow: auto; }
.muted { color: #66727d; }
.na { color: #66727d; font-style: italic; }
.kept { color: #2e7d32; font-weight: 600; }
.rejected { color: #c62828; font-weight: 600; }
img.plot { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.pairs td { width: 50%; }
code { background: #eef1f4; padding: 0 3px; border-radius: 3px; }
details.stage { border: 1px solid #dde1e5; border-radius: 4px; margin: 6px 0; padding: 2px 10px; }
details.stage > summary { cursor: pointer; padding: 4px 0; font-size: 14px; }
details.stage[open] > summary { border-bottom: 1px solid #e3e6e9; margin-bottom: 4px; }
.flag { background: #fff3e0; color: #e65100; border: 1px solid #ffb74d; border-radius: 3px; padding: 0 4px;
        font-size: 12px; white-space: nowrap; }
div.flat { border-left: 5px solid; padding: 6px 10px; margin: 6px 0; max-width: 900px; }
div.flat.kept-all { background: #fff8e1; border-color: #f9a825; }
div.flat.noise { background: #ffebee; border-color: #c62828; }
</style>
</head>
<body>
<header><h1>$title</h1><p>$subtitle</p></header>
<nav>$nav</nav>
<main>
$sections
</main>
</body>
</html>
""")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(x: Any) -> str:
    if x is None:
        return '<span class="na">—</span>'
    if isinstance(x, float) and not math.isfinite(x):
        return esc(x)
    return f"{x:,}" if isinstance(x, int) else f"{x:,.4g}"


def secs(x: Any) -> str:
    return '<span class="na">—</span>' if x is None else f"{float(x):,.1f}"


def flops(x: Any) -> str:
    return '<span class="na">—</span>' if not x else f"{float(x):.3g}"


def size(n: Any) -> str:
    if n is None:
        return '<span class="na">—</span>'
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def pct(x: Any) -> str:
    return '<span class="na">—</span>' if x is None else f"{100 * x:.1f}%"


def table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None, cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller); columns in `numeric` align right; no headers: a
    two-column list of facts."""
    numeric = numeric or set()
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def doc(text: str | None, label: str = "") -> str:
    if text is None:
        return '<span class="na">not found in the rows read</span>'
    head = f'<span class="muted">{esc(label)}</span>' if label else ""
    return f'{head}<pre class="doc">{esc(text) or "<span class=na>(empty)</span>"}</pre>'


def img(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{esc(alt)}">'


def na(text: str) -> str:
    return f'<p class="na">{text}</p>'


def section(sid: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(SECTIONS[sid])}</h2>\n{body}\n</section>'


def page(title: str, subtitle: str, bodies: dict[str, str]) -> str:
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in SECTIONS.items())
    return PAGE.substitute(title=esc(title), subtitle=subtitle, nav=nav,
                           sections="\n".join(section(sid, bodies[sid]) for sid in SECTIONS))
