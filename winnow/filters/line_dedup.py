"""Line (or paragraph) deduplication across the corpus, out of core on Dask.

What CCNet's line dedup (Wenzek et al. 2019, arXiv 1911.00359) and DCLM's BFF
paragraph dedup remove: text repeated across many pages (cookie banners, navigation, footers,
share buttons), while the rest of each page stays.

1. units: each document is cut into lines (`unit: line`, at "\\n") or paragraphs (`unit: paragraph`,
   at blank lines); every unit of a shard is normalised in one pyarrow call (textnorm.py: lower
   case, numbers to 0, punctuation to spaces, accents removed) and hashed with xxh3-64. 64 bits are
   enough: any collision at all among 1e9 distinct units has p ~ 3% (n^2 / 2^65), and its effect
   is that two units are counted as one, so a rare unit may go with a frequent one.
2. count (map, per shard): one (hash, shard, row) per distinct unit of a document, written to
   files partitioned by `hash % P` under the work folder; (reduce, per partition): documents per
   hash (a reduce holds 1/P of the pairs, 20 bytes each). A unit in more than `min_count`
   documents is frequent. Only frequent units come back to
   the driver, with, per shard, the row that keeps its copy (the first document in input order:
   shard order, then row).
3. apply (per shard, pure): each frequent unit is removed from every document but the first
   (`keep_first: true`) or from all of them; kept units are joined by their original separators
   ("\\n", or the blank-line run before them). A document that lost a unit and keeps fewer than
   `min_doc_chars` characters (whitespace stripped) is rejected as `too_short_after_line_dedup`,
   with the text it came in with; one that lost nothing is never rejected here. Every row carries
   `line_dedup_removed_units` and `line_dedup_removed_chars` (characters of the removed units,
   separators not counted); kept rows carry `line_dedup_bytes_removed`, the UTF-8 bytes cut: each
   removed unit is a cut `line_dedup:duplicate_line` (or `duplicate_paragraph`) with its text, and
   the separators that went with them one cut `line_dedup:line_breaks`.

Units that normalise to nothing (blank lines, lines of punctuation) are never counted or removed.
A document holding a frequent unit several times keeps or loses all its copies together:
repetition inside one document is the repetition filters' business (heuristics).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from winnow.filters.textnorm import TextNorm, normalize_texts
from winnow.pipeline.stage import Context, Cuts, ShardRef, Stage

REASON = "too_short_after_line_dedup"
REMOVED_UNITS = "line_dedup_removed_units"
REMOVED_CHARS = "line_dedup_removed_chars"
# a blank line is a line of spaces/tabs only (explicit class: the same in Python's re and in RE2)
PARAGRAPH_SEP = re.compile(r"(\n(?:[ \t\r\f\v]*\n)+)")
TOP_UNITS = 20
SAMPLE_CHARS = 200  # top units are shown cut to this length in the manifest
NOT_CONTENT = r"[\s\p{Z}\p{Nd}]+"  # what `min_unit_chars` does not count: spaces and digits
PAIR_SCHEMA = pa.schema([("hash", pa.uint64()), ("shard", pa.int32()), ("row", pa.int64())])


class LineDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit: Literal["line", "paragraph"] = Field("line", description="line: split at newlines; "
                                               "paragraph: split at blank lines")
    min_count: int = Field(1, ge=1, description="a unit in more than this many documents is a duplicate")
    keep_first: bool = Field(True, description="the first document (input order) keeps its copy; "
                             "false: removed from all")
    min_doc_chars: int = Field(50, ge=0, description="a document that lost units and is left with fewer "
                               "characters (whitespace stripped) is rejected")
    # 2, not 0: numbers all normalise to "0", so lines of only figures ("2019", "12.50", a date
    # range, a phone number, a score) would match across thousands of unrelated pages and tables
    # would lose their cells. Counting letters only, navigation words ("home", "menu") still pass.
    min_unit_chars: int = Field(2, ge=0, description="units with fewer characters than this after normalisation, "
                                "spaces and digits not counted, are never counted or removed")
    normalize: TextNorm = Field(default_factory=TextNorm, description="normalisation before units are compared")
    partitions: int | None = Field(None, gt=0, description="shuffle partitions (default: from shard count)")


@dataclass
class ShardUnits:
    """What one shard's `apply` needs: the frequent units present in it (sorted) and, for each, the
    row of this shard that keeps its copy (-1 where the first copy is in another document)."""

    hashes: np.ndarray    # uint64, sorted
    keep_row: np.ndarray  # int64, aligned with hashes


@dataclass
class LineDedupState:
    hashes: np.ndarray    # uint64, sorted: every frequent unit of the corpus
    counts: np.ndarray    # int64, documents holding each
    shards: dict[str, ShardUnits]
    stats: dict[str, int] = field(default_factory=dict)
    top: list[dict] = field(default_factory=list)


def split_units(text: str, unit: str) -> tuple[list[str], list[str] | None]:
    """(units, separators) with text == u0 + s0 + u1 + s1 + ...; separators None means all "\\n"."""
    if unit == "line":
        return text.split("\n"), None
    parts = PARAGRAPH_SEP.split(text)
    return parts[0::2], parts[1::2]


def unit_hashes(texts: list[str | None], unit: str, norm: TextNorm, min_chars: int
                ) -> tuple[list[tuple[list[str], list[str] | None]], np.ndarray, np.ndarray, np.ndarray]:
    """Every document's units, and over all units (flattened, document order): the owning row,
    the xxh3-64 of the normalised unit, and whether it is counted (non-empty, with at least
    `min_chars` characters that are neither spaces nor digits)."""
    split = [split_units(t or "", unit) for t in texts]
    flat = [u for units, _ in split for u in units]
    row = np.repeat(np.arange(len(texts), dtype=np.int64), [len(units) for units, _ in split])
    hashes = np.zeros(len(flat), np.uint64)
    if not flat:
        return split, row, hashes, np.zeros(0, bool)
    normed = normalize_texts(pa.array(flat, pa.string()), norm)
    content = pc.utf8_length(pc.replace_substring_regex(normed, NOT_CONTENT, ""))
    counted = np.asarray(pc.and_(pc.greater(pc.utf8_length(normed), 0),
                                 pc.greater_equal(content, min_chars))).astype(bool)
    idx = np.flatnonzero(counted)
    values = normed.take(pa.array(idx)).to_pylist()
    hashes[idx] = np.fromiter((xxhash.xxh3_64_intdigest(v.encode("utf-8", "surrogatepass")) for v in values),
                              np.uint64, len(values))
    return split, row, hashes, counted


def _reduce(args: tuple[str, int]) -> tuple[pa.Table, pa.Table]:
    """One partition: documents per hash; for the frequent ones, (hash, shard, keep_row) per shard
    holding it and (hash, count, first shard, first row)."""
    folder, min_count = args
    files = sorted(Path(folder).glob("*.parquet"))
    pairs = pa.table({"hash": pa.array([], pa.uint64()), "shard": pa.array([], pa.int32()),
                      "keep_row": pa.array([], pa.int64())})
    units = pa.table({"hash": pa.array([], pa.uint64()), "count": pa.array([], pa.int64()),
                      "first_shard": pa.array([], pa.int32()), "first_row": pa.array([], pa.int64())})
    if not files:
        return pairs, units
    t = pa.concat_tables(pq.read_table(f) for f in files)
    h, s, r = (np.asarray(t.column(c)) for c in ("hash", "shard", "row"))
    order = np.lexsort((r, s, h))
    h, s, r = h[order], s[order], r[order]
    start = np.ones(len(h), bool)
    start[1:] = h[1:] != h[:-1]
    group = np.cumsum(start) - 1
    sizes = np.bincount(group)  # distinct documents: (row, hash) was made unique per shard in the map
    keep = (sizes > min_count)[group]
    h, s, r, group, start = h[keep], s[keep], r[keep], group[keep], start[keep]
    shard_start = start.copy()
    shard_start[1:] |= s[1:] != s[:-1]
    pairs = pa.table({"hash": h[shard_start], "shard": s[shard_start],
                      "keep_row": np.where(start[shard_start], r[shard_start], -1).astype(np.int64)})
    units = pa.table({"hash": h[start], "count": sizes[group[start]].astype(np.int64),
                      "first_shard": s[start], "first_row": r[start]})
    return pairs, units


class LineDedupStage(Stage):
    name = "line_dedup"
    Params = LineDedupParams
    version = 1
    edits_text = True

    def _units(self, texts: list[str | None]
               ) -> tuple[list[tuple[list[str], list[str] | None]], np.ndarray, np.ndarray, np.ndarray]:
        p: LineDedupParams = self.params
        return unit_hashes(texts, p.unit, p.normalize, p.min_unit_chars)

    def _map(self, args: tuple[ShardRef, int, str, int]) -> dict[str, int]:
        """One shard's distinct (hash, row) pairs, written to `n_parts` partition folders."""
        ref, shard_idx, workdir, n_parts = args
        texts = pq.read_table(ref.path, columns=["text"]).column("text").to_pylist()
        split, row, hashes, counted = self._units(texts)
        h, r = hashes[counted], row[counted]
        order = np.lexsort((r, h))
        h, r = h[order], r[order]
        first = np.ones(len(h), bool)
        first[1:] = (h[1:] != h[:-1]) | (r[1:] != r[:-1])
        h, r = h[first], r[first]
        part = (h % np.uint64(n_parts)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        h, r, part = h[order], r[order], part[order]
        bounds = np.searchsorted(part, np.arange(n_parts + 1))
        for p in range(n_parts):
            a, b = bounds[p], bounds[p + 1]
            if b > a:
                path = Path(workdir) / f"p{p:04d}" / f"s{shard_idx:06d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"hash": h[a:b], "shard": np.full(b - a, shard_idx, np.int32),
                                         "row": r[a:b]}, schema=PAIR_SCHEMA), path)
        return {"documents": len(texts), "units": len(row), "units_counted": int(counted.sum()),
                "unit_documents": len(h)}

    def _samples(self, args: tuple[ShardRef, list[tuple[int, int]]]) -> list[tuple[str, str]]:
        """(original text, normalised text) of the unit with each (row, hash) of one shard."""
        ref, wanted = args
        texts = pq.read_table(ref.path, columns=["text"]).column("text").to_pylist()
        out = []
        for row, h in wanted:
            split, _, hashes, counted = self._units([texts[row]])
            i = int(np.flatnonzero(counted & (hashes == np.uint64(h)))[0])
            raw = split[0][0][i].strip()
            norm = normalize_texts([raw], self.params.normalize)[0].as_py()
            out.append((raw[:SAMPLE_CHARS], norm[:SAMPLE_CHARS]))
        return out

    def fit(self, shards: list[ShardRef], ctx: Context) -> LineDedupState:
        workdir = Path(ctx.workdir) / "line_units"
        shutil.rmtree(workdir, ignore_errors=True)
        n_parts = self.params.partitions or max(1, min(128, len(shards)))
        stats = ctx.map(self._map, [(ref, i, str(workdir), n_parts) for i, ref in enumerate(shards)])
        found = ctx.map(_reduce, [(str(workdir / f"p{p:04d}"), self.params.min_count) for p in range(n_parts)])
        shutil.rmtree(workdir, ignore_errors=True)
        totals = {k: sum(s[k] for s in stats) for k in ("documents", "units", "units_counted", "unit_documents")}
        if not found:
            return LineDedupState(np.zeros(0, np.uint64), np.zeros(0, np.int64), {}, totals)
        pairs = pa.concat_tables(f[0] for f in found).sort_by([("shard", "ascending"), ("hash", "ascending")])
        units = pa.concat_tables(f[1] for f in found).sort_by("hash")
        shard_col = np.asarray(pairs.column("shard"))
        hash_col, keep_col = np.asarray(pairs.column("hash")), np.asarray(pairs.column("keep_row"))
        bounds = np.searchsorted(shard_col, np.arange(len(shards) + 1))
        per_shard = {ref.name: ShardUnits(hash_col[bounds[i]:bounds[i + 1]].copy(), keep_col[bounds[i]:bounds[i + 1]].copy())
                     for i, ref in enumerate(shards) if bounds[i + 1] > bounds[i]}
        state = LineDedupState(np.asarray(units.column("hash")), np.asarray(units.column("count")), per_shard,
                               {**totals, "frequent_units": units.num_rows})
        state.top = self._top(units, shards, ctx)
        return state

    def _top(self, units: pa.Table, shards: list[ShardRef], ctx: Context) -> list[dict]:
        """The most repeated units with their text, read from their first documents only."""
        if not units.num_rows:
            return []
        top = units.sort_by([("count", "descending"), ("first_shard", "ascending"),
                             ("first_row", "ascending")]).slice(0, TOP_UNITS).to_pylist()
        by_shard: dict[int, list[dict]] = {}
        for u in top:
            by_shard.setdefault(u["first_shard"], []).append(u)
        texts = ctx.map(self._samples, [(shards[s], [(u["first_row"], u["hash"]) for u in us])
                                        for s, us in by_shard.items()])
        for us, samples in zip(by_shard.values(), texts, strict=True):
            for u, (raw, norm) in zip(us, samples, strict=True):
                u["text"], u["normalized"] = raw, norm
        return [{"documents": u["count"], "text": u["text"], "normalized": u["normalized"],
                 "first": f"{shards[u['first_shard']].name}:{u['first_row']}"} for u in top]

    def shard_state(self, state: LineDedupState, ref: ShardRef) -> ShardUnits | None:
        return state.shards.get(ref.name)

    def manifest_extra(self, state: LineDedupState) -> dict:
        p: LineDedupParams = self.params
        return {"unit": p.unit, "normalize": p.normalize.model_dump(), "units_seen": state.stats.get("units", 0),
                "units_counted": state.stats.get("units_counted", 0),
                "frequent_units": state.stats.get("frequent_units", 0), "top_units": state.top}

    def shard_stats(self, data: pa.Table, kept: pa.Table, rejected: pa.Table) -> dict[str, float]:
        out = {"units_removed": 0.0, "chars_removed": 0.0, "documents_changed": 0.0}
        for t in (kept, rejected):
            if t.num_rows:
                units = np.asarray(t.column(REMOVED_UNITS))
                out["units_removed"] += float(units.sum())
                out["chars_removed"] += float(np.asarray(t.column(REMOVED_CHARS)).sum())
                out["documents_changed"] += float((units > 0).sum())
        return out

    def apply(self, table: pa.Table, state: ShardUnits | None) -> tuple[pa.Table, pa.Table, pa.Table]:
        p: LineDedupParams = self.params
        n = table.num_rows
        removed_units = np.zeros(n, np.int64)
        removed_chars = np.zeros(n, np.int64)
        too_short = np.zeros(n, bool)
        cuts = Cuts()
        text = table.column("text")
        if state is not None and len(state.hashes) and n:
            texts = table.column("text").to_pylist()
            split, row, hashes, counted = self._units(texts)
            pos = np.minimum(np.searchsorted(state.hashes, hashes), len(state.hashes) - 1)
            remove = counted & (state.hashes[pos] == hashes)
            if p.keep_first:
                remove &= state.keep_row[pos] != row
            # index of each unit inside its document
            offsets = np.concatenate([[0], np.cumsum([len(units) for units, _ in split])])
            index = np.arange(len(row)) - offsets[row]
            changed = np.unique(row[remove])
            reason = f"{self.name}:duplicate_{p.unit}"
            for d in changed.tolist():
                gone = set(index[offsets[d]:offsets[d + 1]][remove[offsets[d]:offsets[d + 1]]].tolist())
                units, seps = split[d]
                out: list[str] = []
                cut = 0
                for i, u in enumerate(units):
                    if i in gone:
                        removed_chars[d] += len(u)
                        piece = len(u.encode("utf-8", "surrogatepass"))
                        cuts.add(d, reason, piece, u)
                        cut += piece
                        continue
                    if out:  # the separator just before this unit in the original
                        out.append("\n" if seps is None else seps[i - 1])
                    out.append(u)
                removed_units[d] = len(gone)
                new = "".join(out)
                left = len(new.strip())
                too_short[d] = left == 0 or left < p.min_doc_chars
                if not too_short[d]:  # separators dropped with the units
                    lost = len(texts[d].encode("utf-8", "surrogatepass")) - len(new.encode("utf-8", "surrogatepass"))
                    cuts.add(d, f"{self.name}:line_breaks", lost - cut)
                    texts[d] = new
            if len(changed):
                text = pa.array(texts, table.schema.field("text").type)
        for name, values in ((REMOVED_UNITS, removed_units), (REMOVED_CHARS, removed_chars)):
            if name in table.column_names:  # an earlier line_dedup stage: these columns describe this one
                table = table.drop_columns([name])
            table = table.append_column(name, pa.array(values, pa.int64()))
        return self.split_edited(table, text, ~too_short, [REASON] * n, cuts)
