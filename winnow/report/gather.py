"""What the HTML report shows, gathered from a run folder: plain dicts and arrays, no HTML, no plots.

Counts come from the stage manifests; everything read from the Parquet shards goes through
sample.py's bounded reads (a row budget per stage, text only for the rows shown), so the report of
a large run costs seconds. Where a number was not recorded the value is None and the page says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from winnow.pipeline.errors import ConfigError
from winnow.pipeline.manifest import read_manifests
from winnow.report import sample

SCAN_ROWS = 200_000          # scalar values (reasons, scores, cluster sizes) read per stage
SURVIVOR_SCAN = 2_000_000    # ids scanned per dedup stage to find the survivors shown
PACK_SCAN = 20_000           # packed rows read for documents per row and segment lengths
TOKEN_SAMPLE = 400           # at most this many documents tokenized per stage for a tokens-per-byte estimate
TOKEN_SAMPLE_BYTES = 100_000  # ... and at most about this much text (web pages can be megabytes)
SCORE_LIKE = ("perplexity", "ppl", "entropy")
TOP_REMOVALS = 8             # removal reasons listed per stage (most bytes first)
FLAT_SPREAD = 0.01           # a quality stage's scores within this of each other rank on noise (quality.py's)


@dataclass
class StageInfo:
    dirname: str
    kind: str
    manifest: dict
    path: Path
    kept_files: list[Path] = field(default_factory=list)
    rejected_files: list[Path] = field(default_factory=list)
    kept_columns: list[str] = field(default_factory=list)
    rejected_columns: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        return self.manifest["totals"]


def read_stages(out_dir: Path) -> list[StageInfo]:
    out = []
    for dirname, m in read_manifests(out_dir):
        path = out_dir / dirname
        kept, rejected = sample.kept_files(path), sample.rejected_files(path)
        out.append(StageInfo(dirname, m["stage"], m, path, kept, rejected,
                             sample.columns_of(kept[0]) if kept else [],
                             sample.columns_of(rejected[0]) if rejected else []))
    return out


def snippet(text: Any, lines: int = 3, width: int = 160) -> str:
    """The first non-empty lines of a document, each cut at `width` characters (raw text: escape it)."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text)
    all_lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    shown = [ln if len(ln) <= width else ln[:width] + "…" for ln in all_lines[:lines]]
    return "\n".join(shown) + ("\n…" if len(all_lines) > lines else "")


def as_float(value: Any) -> float | None:
    """A manifest number (scores past the ends are stored as strings such as '-inf')."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# the funnel
def funnel(stages: list[StageInfo], out_dir: Path, eval_data: dict | None) -> dict:
    """Per stage: documents, bytes and tokens, kept and rejected. Tokens are exact where the run recorded
    them (`n_tokens`, packed rows, an eval arm's kept tokens) and otherwise estimated from a sample."""
    tokenizer, tokenizer_source = _tokenizer(stages, eval_data)
    arm_tokens = _eval_arm_tokens(stages, out_dir, eval_data) if tokenizer_source == "eval" else {}
    rows = []
    for s in stages:
        t = s.totals
        tokens = _stage_tokens(s, tokenizer, arm_tokens.get(s.dirname))
        rows.append({"stage": s.dirname, "kind": s.kind, "rows_in": t["rows_in"], "added": t.get("added", 0),
                     "kept": t["kept"], "rejected": t["rejected"], "rows_out": t.get("rows_out", t["kept"]),
                     "bytes_in": t["bytes_in"], "bytes_kept": t["bytes_kept"], "bytes_rejected": t["bytes_rejected"],
                     # bytes cut out of kept rows (absent, None, in manifests written before byte accounting)
                     "bytes_removed": t.get("bytes_removed"), "bytes_added": t.get("bytes_added", 0),
                     "flat_scores": s.manifest.get("flat_scores"),
                     "bytes_unaccounted": _unaccounted(s),
                     "tokens_kept": tokens[0], "tokens_rejected": tokens[1],
                     "tokens_kept_estimated": tokens[2], "tokens_rejected_estimated": tokens[3]})
    return {"rows": rows, "tokenizer": tokenizer_source}


def _unaccounted(s: StageInfo) -> int:
    """In a manifest without `bytes_removed` (written before byte accounting), the input bytes of a text
    stage that neither its kept nor its rejected rows hold: text it cut without saying so. 0 otherwise."""
    t = s.totals
    if "bytes_removed" in t or (s.kept_files and "text" not in s.kept_columns):   # token rows hold no text
        return 0
    return max(0, t["bytes_in"] + t.get("bytes_added", 0) - t["bytes_kept"] - t["bytes_rejected"])


def _tokenizer(stages: list[StageInfo], eval_data: dict | None) -> tuple[Any, str | None]:
    """The run's own tokenizer (a tokenize stage's), else the eval's, else none."""
    from winnow.tokenize.tokenizer import load_tokenizer

    for s in stages:
        if (s.path / "tokenizer.json").exists():
            return load_tokenizer(s.path / "tokenizer.json"), "run"
    if eval_data is not None and (Path(eval_data["dir"]) / "tokenizer.json").exists():
        return load_tokenizer(Path(eval_data["dir"]) / "tokenizer.json"), "eval"
    return None, None


def _eval_arm_tokens(stages: list[StageInfo], out_dir: Path, eval_data: dict) -> dict[str, int]:
    """Kept tokens `winnow eval` counted for each arm that is a stage folder of this run."""
    found = {}
    for arm, path in eval_data["report"].get("config", {}).get("arms", {}).items():
        stage = arm_stage(path, stages, out_dir)
        kept = eval_data["report"].get("curation", {}).get(arm, {}).get("kept_tokens")
        if stage is not None and kept:
            found[stage] = int(kept)
    return found


def arm_stage(path: str, stages: list[StageInfo], out_dir: Path) -> str | None:
    """The stage folder of this run that an eval arm names, if any (by resolved path, else by the last
    two path parts: an eval run from another directory still matches)."""
    p = Path(path)
    for s in stages:
        if p.resolve() == s.path.resolve() or (p.name == s.dirname and p.parent.name == out_dir.resolve().name):
            return s.dirname
    return None


def _stage_tokens(s: StageInfo, tokenizer: Any, arm_kept: int | None) -> tuple[int | None, int | None, bool, bool]:
    """(kept, rejected, kept is an estimate, rejected is an estimate); None where unknown."""
    t = s.totals
    if s.kind == "pack" and "n_pad" in s.kept_columns:
        seq_len = int(s.manifest["params"]["seq_len"])
        kept = t["rows_out"] * seq_len - (sample.column_total(s.kept_files, "n_pad") or 0)
        return kept, 0 if not t["rejected"] else None, False, False
    if "n_tokens" in s.kept_columns:
        kept = sample.column_total(s.kept_files, "n_tokens")
        rejected = sample.column_total(s.rejected_files, "n_tokens") if s.rejected_files else 0
        if kept is not None:
            return kept, rejected if t["rejected"] else 0, False, False
    if tokenizer is None:
        return None, None, False, False
    kept_ratio = _tokens_per_byte(tokenizer, s.kept_files)
    rej_ratio = _tokens_per_byte(tokenizer, s.rejected_files) if t["rejected"] else None
    ratio = kept_ratio if kept_ratio is not None else rej_ratio
    if ratio is None:
        return (arm_kept, None, False, False) if arm_kept is not None else (None, None, False, False)
    kept = arm_kept if arm_kept is not None else round(ratio * t["bytes_kept"])
    rejected = round((rej_ratio if rej_ratio is not None else ratio) * t["bytes_rejected"])
    return kept, rejected, arm_kept is None, True


def _tokens_per_byte(tokenizer: Any, files: list[Path]) -> float | None:
    texts, n_bytes = [], 0
    for t in sample.iter_texts(files, TOKEN_SAMPLE):
        t = t[:TOKEN_SAMPLE_BYTES]
        texts.append(t)
        n_bytes += len(t.encode("utf-8", "surrogatepass"))
        if n_bytes >= TOKEN_SAMPLE_BYTES:
            break
    if not n_bytes:
        return None
    return sum(len(e.ids) for e in tokenizer.encode_batch(texts)) / n_bytes


# rejections and removals
def rejections(stages: list[StageInfo], examples: int) -> list[dict]:
    """Per stage that rejected rows or removed bytes from the rows it kept: each rejection reason's count
    and its first few rows, and the top removal reasons by bytes (with removed text where the run wrote
    `removed/`)."""
    out = []
    for s in stages:
        removed = _removals(s, examples)
        if not (s.totals["rejected"] and s.rejected_files) and not removed:
            continue
        total_in = s.totals["rows_in"] + s.totals.get("added", 0)
        entry = {"stage": s.dirname, "rejected": s.totals["rejected"], "reasons": [], "scanned": 0, "complete": True,
                 "bytes_in": s.totals["bytes_in"], "bytes_rejected": s.totals["bytes_rejected"],
                 "bytes_removed": s.totals.get("bytes_removed"), "removed": removed}
        out.append(entry)
        if not s.totals["rejected"] or not s.rejected_files:
            continue
        found = sample.scan(s.rejected_files, ["reason"], SCAN_ROWS)
        reasons = found.table.column("reason").to_pylist()
        picks: dict[str, list[int]] = {}
        for i, r in enumerate(reasons):
            if len(picks.setdefault(r, [])) < examples:
                picks[r].append(i)
        idx = [i for ids in picks.values() for i in ids]
        cols = ["id", "text", "raw", "detail", "source_file", "source_line", "dup_of"]
        rows = sample.fetch(found.files, found.file_index[idx], found.row_index[idx], cols)
        by_pos = dict(zip(idx, rows, strict=True))
        shown_as = _display(s.manifest)
        items = []
        for reason, count in s.manifest["reasons"].items():
            shown = [_example(by_pos[i], shown_as) for i in picks.get(reason, [])]
            items.append({"reason": reason, "count": count, "share": count / total_in if total_in else 0.0,
                          "examples": shown})
        entry.update(reasons=items, scanned=found.table.num_rows, complete=found.complete)
    return out


def _removals(s: StageInfo, examples: int) -> list[dict]:
    """The stage's removal reasons, most bytes first (at most TOP_REMOVALS), each with the bytes removed,
    their share of the stage's input bytes and, where `removed/` was written, a few removed texts."""
    by_reason = s.manifest.get("removed_reasons") or {}
    top = sorted(((r, int(b)) for r, b in by_reason.items() if b), key=lambda rb: -rb[1])[:TOP_REMOVALS]
    if not top:
        return []
    picks: dict[str, list[int]] = {r: [] for r, _ in top}
    files = sorted((s.path / "removed").glob("*.parquet"))
    found = sample.scan(files, ["reason"], SCAN_ROWS)
    for i, r in enumerate(found.table.column("reason").to_pylist()):
        if r in picks and len(picks[r]) < examples:
            picks[r].append(i)
    idx = [i for ids in picks.values() for i in ids]
    rows = dict(zip(idx, sample.fetch(found.files, found.file_index[idx], found.row_index[idx], ["id", "text"]),
                    strict=True))
    bytes_in = s.totals["bytes_in"] + s.totals.get("bytes_added", 0)
    return [{"reason": r, "bytes": b, "share": b / bytes_in if bytes_in else 0.0, "written": bool(files),
             "examples": [{"id": rows[i]["id"], "snippet": snippet(rows[i]["text"], 2)} for i in picks[r]]}
            for r, b in top]


def _display(manifest: dict) -> Any:
    """text -> what the report may show of a row the manifest's stage rejected (`Stage.display_text`:
    pii masks the personal data its dropped rows still hold)."""
    from winnow.pipeline.registry import STAGES, get_stage_class

    name = manifest.get("stage")
    if name not in STAGES:
        return lambda text: text
    cls, params = get_stage_class(name), manifest.get("params") or {}
    return lambda text: cls.display_text(text, params)


def _example(row: dict, display: Any = None) -> dict:
    where = None
    if row.get("source_file"):
        where = f"{row['source_file']}:{row.get('source_line')}"
        where = None if where == row.get("id") else where   # ingest's ids of unreadable lines are file:line
    text = row.get("text")
    if text is not None and display is not None:
        text = display(text)
    if text is None and row.get("raw") is not None:  # ingest's quarantined raw bytes
        text = row["raw"]
    return {"id": row.get("id"), "snippet": snippet(text), "where": where, "detail": row.get("detail"),
            "dup_of": row.get("dup_of")}


# scores
def score_columns_written(stages: list[StageInfo]) -> list[tuple[StageInfo, str]]:
    """(stage, column) for each score a stage wrote: its manifest's `score_column`, else a score-like
    column its output has and its input had not (scores ride along into later stages)."""
    out, before = [], set()
    for s in stages:
        now = set(s.kept_columns) | set(s.rejected_columns)
        cols = []
        if s.manifest.get("score_column"):
            cols.append(s.manifest["score_column"])
        cols += sorted((c for c in now - before if (c.endswith("_score") or c in SCORE_LIKE) and c not in cols),
                       key=lambda c: (c != "ppl", c))   # prune's plane goes with its first column, ppl
        out += [(s, c) for c in cols if c in now]
        before |= set(s.kept_columns)
    return out


def scores(stages: list[StageInfo], examples: int) -> list[dict]:
    out = []
    for s, column in score_columns_written(stages):
        kept_n, rej_n = s.totals["kept"], s.totals["rejected"]
        total = max(kept_n + rej_n, 1)
        # the row budget split in proportion, so a truncated scan still shows both sides of the cut
        k_scan = sample.scan(s.kept_files, [column], max(1, round(SCAN_ROWS * kept_n / total)))
        r_scan = sample.scan(s.rejected_files, [column], max(1, round(SCAN_ROWS * rej_n / total)))
        values = np.concatenate([_floats(k_scan.table.column(column).to_pylist()),
                                 _floats(r_scan.table.column(column).to_pylist())])
        files = k_scan.files + r_scan.files
        file_index = np.concatenate([k_scan.file_index, r_scan.file_index + len(k_scan.files)])
        row_index = np.concatenate([k_scan.row_index, r_scan.row_index])
        kept_mask = np.arange(len(values)) < k_scan.table.num_rows
        finite = np.flatnonzero(np.isfinite(values))
        order = finite[np.argsort(values[finite], kind="stable")]
        ends = {}
        for label, idx in (("lowest", order[:examples]), ("highest", order[::-1][:examples])):
            rows = sample.fetch(files, file_index[idx], row_index[idx], ["id", "text"])
            ends[label] = [{"score": float(values[i]), "kept": bool(kept_mask[i]), "id": r["id"],
                            "snippet": snippet(r["text"])} for i, r in zip(idx.tolist(), rows, strict=True)]
        m = s.manifest
        cut = m.get("cut") if m.get("score_column") == column else None
        out.append({"stage": s.dirname, "kind": s.kind, "column": column, "values": values[np.isfinite(values)],
                    "missing": int((~np.isfinite(values)).sum()), "documents": kept_n + rej_n,
                    "complete": k_scan.complete and r_scan.complete,
                    "cut_lo": _cut_score(cut, "lo"), "cut_hi": _cut_score(cut, "hi"),
                    "band": m.get("band") if cut else None, "acceptance": m.get("acceptance"), "warnings": m.get("warnings", []),
                    "model": m.get("model") if cut else None,
                    "flat": _flat(s, column, values),
                    "lowest": ends["lowest"], "highest": ends["highest"],
                    "plane": _plane(s) if column == "ppl" else None,
                    "quadrants": m.get("quadrants") if column == "ppl" else None})
    return out


def _flat(s: StageInfo, column: str, values: np.ndarray) -> dict | None:
    """The stage's `flat_scores` record (quality.py: every score within FLAT_SPREAD, so it kept everything
    unless `allow_flat_scores`), or for a run written before that record, the same finding from its
    score range: {spread, kept_all, message, recorded}. None when the scores are not flat."""
    m = s.manifest
    if m.get("score_column") != column:
        return None
    if isinstance(m.get("flat_scores"), dict):
        return {**m["flat_scores"], "recorded": True}
    span = m.get("score_range")
    if span is None or len(span) != 2 or span[1] - span[0] >= FLAT_SPREAD:
        return None
    return {"spread": float(span[1] - span[0]), "kept_all": not s.totals["rejected"], "recorded": False,
            "message": next(iter(m.get("warnings") or []), "")}


def _cut_score(cut: dict | None, side: str) -> float | None:
    """The score at one end of a quality stage's kept band (None: no cut on that side)."""
    end = (cut or {}).get(side)
    return as_float(end.get("score")) if isinstance(end, dict) else None


def _floats(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], np.float64)


def _plane(s: StageInfo) -> Path | None:
    """prune's error-uncertainty scatter (eu_plane.png beside its stage folder's shards)."""
    for p in (s.manifest.get("eu_plane"), s.path / "eu_plane.png"):
        if p and Path(p).is_file():
            return Path(p)
    return None


# dedup
def meta_training(stages: list[StageInfo]) -> list[dict]:
    """The DataRater stages' meta-training: the uniform-weight control and the two outer-loss curves."""
    out = []
    for s in stages:
        control, meta = s.manifest.get("uniform_control"), s.manifest.get("meta")
        if not isinstance(control, dict) or not isinstance(meta, dict):
            continue
        out.append({"stage": s.dirname, "control": control, "steps": _int(meta.get("steps")),
                    "weighted": _floats(meta.get("meta_loss") or []),
                    "uniform": _floats(meta.get("uniform_outer_loss") or [])})
    return out


def dedup(stages: list[StageInfo], examples: int) -> list[dict]:
    out = []
    for s in stages:
        if "dup_of" in s.rejected_columns:
            extra = [c for c in ("semantic_cosine",) if c in s.rejected_columns]
            found = sample.scan(s.rejected_files, ["dup_of", "dup_cluster_size", *extra], SCAN_ROWS)
            dup_of = found.table.column("dup_of").to_pylist()
            size_col = found.table.column("dup_cluster_size").to_pylist()
            clusters: dict[str, int] = {}
            for d, n in zip(dup_of, size_col, strict=True):
                if d is not None:
                    clusters[d] = max(clusters.get(d, 0), int(n or 0))
            idx = [i for i, d in enumerate(dup_of) if d is not None][:examples]
            removed = sample.fetch(found.files, found.file_index[idx], found.row_index[idx], ["id", "text"])
            survivors = sample.find_ids(s.kept_files, {dup_of[i] for i in idx}, ["id", "text"], SURVIVOR_SCAN)
            pairs = []
            for i, r in zip(idx, removed, strict=True):
                surv = survivors.get(dup_of[i])
                pairs.append({"removed_id": r["id"], "removed": snippet(r["text"]), "survivor_id": dup_of[i],
                              "survivor": None if surv is None else snippet(surv["text"]),
                              "cluster_size": size_col[i],
                              "cosine": found.table.column(extra[0])[i].as_py() if extra else None})
            out.append({"stage": s.dirname, "kind": s.kind, "removed": s.totals["rejected"],
                        "cluster_sizes": np.asarray(list(clusters.values()), np.int64),
                        "complete": found.complete, "pairs": pairs, "top_units": None})
        elif s.kind == "line_dedup":
            stats = s.totals.get("stats", {})
            out.append({"stage": s.dirname, "kind": s.kind, "removed": s.totals["rejected"], "cluster_sizes": None,
                        "complete": True, "pairs": [], "stats": stats,
                        "top_units": [{"documents": u["documents"], "snippet": snippet(u.get("text"), 2)}
                                      for u in s.manifest.get("top_units", [])[:10]]})
    return out


# what must not be trained on
LEAKED_SHOWN = 5             # leaked items shown with their text per benchmark
LEAKED_LISTED = 60           # leaked item numbers listed per benchmark
PII_CONTEXT = 40             # characters shown on each side of a masked span
PII_TAG = re.compile(r"<(EMAIL|IP|PHONE|CREDIT_CARD|IBAN)>")


def decontamination(stages: list[StageInfo], examples: int) -> list[dict]:
    """Per `decontaminate` stage, per benchmark: items indexed and skipped, items that appear in the corpus
    (their numbers and a few with their text and a matching document's id), from the manifest alone."""
    out = []
    for s in stages:
        if s.kind != "decontaminate":
            continue
        m, stats = s.manifest, s.totals.get("stats", {})
        rows = []
        for name, b in (m.get("benchmarks") or {}).items():
            leaked = list(b.get("leaked_items") or [])
            rows.append({"name": name, "items": b.get("items"), "items_indexed": b.get("items_indexed"),
                         "items_skipped": b.get("items_skipped"), "texts_skipped": b.get("texts_skipped"),
                         "ngrams": b.get("ngrams"), "items_leaked": b.get("items_leaked", len(leaked)),
                         "leaked_items": leaked[:LEAKED_LISTED], "more_leaked": max(0, len(leaked) - LEAKED_LISTED),
                         "documents": _int(stats.get(f"documents:{name}")),
                         "bytes_removed": (m.get("removed_reasons") or {}).get(f"decontaminate:{name}"),
                         "examples": [{"item": e.get("item"), "where": e.get("where"),
                                       "text": snippet(e.get("text"), 4, 240), "document": e.get("document"),
                                       "documents": e.get("documents")}
                                      for e in (b.get("examples") or [])[:max(examples, LEAKED_SHOWN)]]})
        params = m.get("params") or {}
        out.append({"stage": s.dirname, "action": params.get("action", "drop"), "index": m.get("index") or {},
                    "documents": _int(stats.get("documents")), "unaligned": _int(stats.get("unaligned")),
                    "rejected": s.totals["rejected"], "bytes_removed": s.totals.get("bytes_removed"),
                    "benchmarks": rows})
    return out


def personal_data(stages: list[StageInfo], examples: int) -> list[dict]:
    """Per `pii` stage: spans and documents per kind (manifest `found:<kind>` / `documents:<kind>`), bytes
    removed per kind, and a few contexts around what it found, the personal data itself masked: every
    text shown goes through the stage's `display_text` (pii masks what it finds), and only the characters
    around a mask are kept."""
    out = []
    for s in stages:
        if s.kind != "pii":
            continue
        m, stats = s.manifest, s.totals.get("stats", {})
        params = m.get("params") or {}
        kinds = [k.split(":", 1)[1] for k in stats if k.startswith("found:")]
        removed = m.get("removed_reasons") or {}
        rows = [{"kind": k, "found": _int(stats.get(f"found:{k}")), "documents": _int(stats.get(f"documents:{k}")),
                 "bytes_removed": removed.get(f"pii:{k}"), "rejected": s.manifest.get("reasons", {}).get(f"pii:{k}")}
                for k in kinds]
        out.append({"stage": s.dirname, "action": params.get("action", "redact"), "kinds": rows,
                    "documents_in": s.totals["rows_in"], "rejected": s.totals["rejected"],
                    "contexts": _pii_contexts(s, params, max(examples, 3) * 2)})
    return out


def _pii_contexts(s: StageInfo, params: dict, limit: int) -> list[dict]:
    """Up to `limit` (id, context) pairs from rows the stage found personal data in (kept, then rejected)."""
    display = _display(s.manifest)
    tag = str(params.get("replacement") or "<{kind}>")
    tags = [PII_TAG]
    if tag != "<{kind}>":   # a custom replacement: redact mode's kept rows hold masks like it
        with contextlib.suppress(KeyError, IndexError, ValueError):
            tags.append(re.compile("|".join(re.escape(tag.format(kind=k))
                                            for k in ("EMAIL", "IP", "PHONE", "CREDIT_CARD", "IBAN"))))
    out: list[dict] = []
    for files in (s.kept_files, s.rejected_files):
        if len(out) >= limit or not files:
            continue
        found = sample.scan(files, ["pii_found"], SCAN_ROWS)
        values = found.table.column("pii_found").to_pylist()
        idx = [i for i, v in enumerate(values) if isinstance(v, dict) and any(c for c in v.values() if c)]
        idx = idx[:limit - len(out)]
        if not idx:
            continue
        rows = sample.fetch(found.files, found.file_index[idx], found.row_index[idx], ["id", "text"])
        for r in rows:
            masked = display(r["text"] or "")   # masks whatever pii finds: tag and drop modes keep the data
            for pattern in tags:
                hit = pattern.search(masked)
                if hit:
                    a, b = max(0, hit.start() - PII_CONTEXT), min(len(masked), hit.end() + PII_CONTEXT)
                    context = ("…" if a else "") + " ".join(masked[a:b].split()) + ("…" if b < len(masked) else "")
                    out.append({"id": r["id"], "context": context})
                    break
    return out[:limit]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


# packing
def packing(stages: list[StageInfo]) -> list[dict]:
    out = []
    for i, s in enumerate(stages):
        if s.kind != "pack" or "n_pad" not in s.kept_columns:
            continue
        seq_len = int(s.manifest["params"]["seq_len"])
        rows = s.totals["rows_out"]
        pad = sample.column_total(s.kept_files, "n_pad") or 0
        found = sample.scan(s.kept_files, ["cu_seqlens", "doc_ids"], PACK_SCAN)
        cu = found.table.column("cu_seqlens").to_pylist()
        docs = found.table.column("doc_ids").to_pylist()
        seg_lengths = np.concatenate([np.diff(c) for c in cu]) if cu else np.zeros(0, np.int64)
        rows_of_doc: dict[str, int] = {}
        for r in docs:
            for d in set(r):
                rows_of_doc[d] = rows_of_doc.get(d, 0) + 1
        doc_lengths = None
        source = next((t for t in reversed(stages[:i]) if "n_tokens" in t.kept_columns), None)
        if source is not None:
            n_tok = sample.scan(source.kept_files, ["n_tokens"], SCAN_ROWS).table.column("n_tokens").to_pylist()
            doc_lengths = np.asarray([v for v in n_tok if v is not None], np.int64)
        out.append({"stage": s.dirname, "seq_len": seq_len, "strategy": s.manifest["params"].get("strategy"),
                    "rows": rows, "documents": s.totals["kept"], "tokens": rows * seq_len - pad,
                    "padding_fraction": pad / (rows * seq_len) if rows else None,
                    "docs_per_row": np.asarray([len(set(r)) for r in docs], np.int64),
                    "segment_lengths": seg_lengths, "doc_lengths": doc_lengths,
                    "doc_lengths_from": source.dirname if source is not None else None,
                    "split_documents": sum(1 for n in rows_of_doc.values() if n > 1),
                    "sampled_rows": len(docs), "sampled_documents": len(rows_of_doc)})
    return out


# timings and the config


def timings(stages: list[StageInfo], out_dir: Path) -> dict:
    rows = []
    for s in stages:
        m, t = s.manifest, s.totals
        named = {k: float(v) for k, v in m.items() if k.endswith("_flops") and isinstance(v, int | float) and v}
        meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
        named.update({f"meta.{k}": float(v) for k, v in meta.items() if k.endswith("flops") and
                      isinstance(v, int | float) and v})
        rows.append({"stage": s.dirname, "wall_seconds": m.get("wall_seconds"), "fit_seconds": m.get("fit_seconds"),
                     "cpu_seconds": t.get("seconds"), "shards": len(m.get("shards", [])),
                     "skipped_shards": m.get("skipped_shards"), "shard_flops": t.get("flops") or 0.0,
                     "named_flops": named, "peak_memory": _peak_rss(m),
                     "driver_peak_memory": _positive_int(m.get("driver_peak_rss"))})
    run_json = out_dir / "_run.json"
    run = json.loads(run_json.read_text()) if run_json.exists() else {}
    return {"rows": rows, "wall_seconds": run.get("wall_seconds"), "final_stage": run.get("final_stage"),
            "driver_peak_memory": _positive_int(run.get("driver_peak_rss"))}


def _peak_rss(m: dict) -> int | None:
    """A stage's peak worker RSS in bytes: totals.peak_rss, else the max of its shards' `peak_rss`; None
    for a manifest written before shards recorded it (or whose shards were all skipped: 0)."""
    peak = _positive_int(m.get("totals", {}).get("peak_rss"))
    if peak is None:
        peak = _positive_int(max((r.get("peak_rss") or 0 for r in m.get("shards", [])), default=0))
    return peak


def _positive_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


def resolved_config(out_dir: Path) -> str | None:
    path = out_dir / "config.resolved.yaml"
    return path.read_text() if path.exists() else None


# the eval folder
def load_eval(eval_dir: Path) -> dict:
    """eval.json of a `winnow eval` output folder, with the folder it came from."""
    path = eval_dir / "eval.json"
    if not path.exists():
        raise ConfigError("no eval.json here: is it the `output` folder of a `winnow eval` config?", path=str(eval_dir))
    return {"dir": str(eval_dir), "report": json.loads(path.read_text())}


def finite_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None
