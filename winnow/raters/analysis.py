"""What a rater learned: its score distribution, its extremes, and how it tracks simple text features.

The DataRater paper explains its rater by regressing scores on hand-made heuristics; here the same
question is asked with rank correlations (Spearman) against four features that name the usual
suspects: length, the non-alphanumeric fraction (markup, tables, encoding junk), the mean word
length, and line repetition (boilerplate). Used by `winnow stats` for every stage that wrote a
score column (`*_score`, `perplexity`), on kept and rejected rows together.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

FEATURES = ("chars", "non_alnum_fraction", "mean_word_length", "repeated_line_fraction")
_WORD = re.compile(r"\w+")


def text_features(texts: list[str]) -> dict[str, np.ndarray]:
    out = {k: np.zeros(len(texts)) for k in FEATURES}
    for i, t in enumerate(texts):
        n = max(len(t), 1)
        words = _WORD.findall(t)
        lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
        out["chars"][i] = len(t)
        out["non_alnum_fraction"][i] = sum(1 for c in t if not (c.isalnum() or c.isspace())) / n
        out["mean_word_length"][i] = sum(map(len, words)) / len(words) if words else 0.0
        out["repeated_line_fraction"][i] = 1 - len(set(lines)) / len(lines) if lines else 0.0
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def first_line(text: str, width: int = 100) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:width] + ("…" if len(line) > width else "")


def describe_scores(texts: list[str], scores: np.ndarray, n_examples: int = 5, bins: int = 20) -> dict:
    """Histogram, lowest- and highest-scored first lines, and Spearman correlation with each feature."""
    scores = np.asarray(scores, np.float64)
    finite = np.isfinite(scores)
    counts, edges = np.histogram(scores[finite], bins=bins) if finite.any() else (np.zeros(0), np.zeros(0))
    order = np.argsort(np.where(finite, scores, np.inf), kind="stable")
    low = [i for i in order[:n_examples] if finite[i]]
    high = [i for i in order[::-1] if finite[i]][:n_examples]
    feats = text_features(texts)
    return {"documents": len(texts), "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
            "lowest": [{"score": float(scores[i]), "first_line": first_line(texts[i])} for i in low],
            "highest": [{"score": float(scores[i]), "first_line": first_line(texts[i])} for i in high],
            "spearman": {k: spearman(scores[finite], v[finite]) for k, v in feats.items()}}


def score_columns(names: list[str]) -> list[str]:
    return [n for n in names if n.endswith("_score") or n == "perplexity"]


def stage_scores(stage_dir: str | Path, max_rows: int = 20_000) -> dict[str, dict]:
    """`describe_scores` for each score column of a stage folder (kept and rejected rows)."""
    import pyarrow.parquet as pq

    files = sorted(Path(stage_dir).glob("train-*.parquet")) + sorted((Path(stage_dir) / "rejected").glob("*.parquet"))
    texts, cols = [], {}
    for f in files:
        names = pq.read_schema(f).names
        wanted = score_columns(names)
        if not wanted or "text" not in names:
            continue
        t = pq.read_table(f, columns=["text", *wanted])
        texts.extend(t.column("text").to_pylist())
        for c in wanted:
            cols.setdefault(c, []).extend(t.column(c).to_pylist())
        if len(texts) >= max_rows:
            break
    return {c: describe_scores(texts[:len(v)][:max_rows], np.asarray(v[:max_rows], np.float64))
            for c, v in cols.items() if len(v) == len(texts)}
