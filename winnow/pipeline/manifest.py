"""Per-shard completion records and the per-stage `_manifest.json` they merge into.

A shard's record (`<stage>/_shards/part-NNNNN.json`) is written last, after its Parquet files are
renamed into place: it is the completion marker that resume trusts (datatrove's `completions/`).
When a stage ends, the records merge into `<stage>/_manifest.json`; `winnow stats` reads those.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from winnow.pipeline.shards import write_bytes_atomic

MANIFEST = "_manifest.json"
SHARDS_DIR = "_shards"
# manifest totals that are sums over shards (peak_rss is a max)
SUMMED_TOTALS = ("rows_in", "kept", "rejected", "added", "rows_out", "bytes_in", "bytes_kept", "bytes_rejected",
                 "bytes_removed", "bytes_added", "seconds", "flops")


@dataclass
class ShardRecord:
    shard: str
    rows_in: int
    kept: int
    rejected: int
    added: int = 0               # rows a stage creates (synthetic rephrases); conservation counts them
    rows_out: int = 0            # rows in the kept file (differs from `kept` when rows are packed sequences)
    bytes_in: int = 0            # UTF-8 bytes of `text`
    bytes_kept: int = 0
    bytes_rejected: int = 0
    bytes_removed: int = 0       # UTF-8 bytes of `text` the stage cut out of rows it kept (signed: see engine.py)
    bytes_added: int = 0         # UTF-8 bytes of `text` in the rows the stage created (synthetic rephrases)
    removed: dict[str, int] = field(default_factory=dict)  # bytes_removed by reason
    removed_rows: int = 0        # rows in removed/part-NNNNN.parquet (outputs.removed)
    removed_fingerprint: str = ""  # content hash of that file; "" when the shard wrote none
    peak_rss: int = 0            # peak resident memory (bytes) of the worker process during the shard
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    config_hash: str = ""
    input_fingerprint: str = ""
    output_fingerprint: str = ""  # content hash of the kept shard: the next stage's input fingerprint
    rejected_fingerprint: str = ""  # content hash of the rejected shard (resume and `winnow verify` check it)
    flops: float = 0.0           # model FLOPs this shard cost (scoring stages)
    stats: dict[str, float] = field(default_factory=dict)  # the stage's own per-shard numbers (Stage.shard_stats)

    def conserved(self) -> bool:
        return self.rows_in + self.added == self.kept + self.rejected

    def bytes_conserved(self) -> bool:
        """The byte rule of engine.py: bytes in + added = kept + rejected + removed."""
        return self.bytes_in + self.bytes_added == self.bytes_kept + self.bytes_rejected + self.bytes_removed

    def save(self, stage_dir: str | Path) -> None:
        path = Path(stage_dir) / SHARDS_DIR / f"{self.shard}.json"
        write_bytes_atomic(json.dumps(asdict(self), sort_keys=True).encode(), path)

    @staticmethod
    def remove(stage_dir: str | Path, shard: str) -> None:
        """Drop a shard's marker: done before its outputs are rewritten, so a run killed halfway never
        leaves an old marker vouching for new files."""
        (Path(stage_dir) / SHARDS_DIR / f"{shard}.json").unlink(missing_ok=True)

    @classmethod
    def load(cls, stage_dir: str | Path, shard: str) -> ShardRecord | None:
        path = Path(stage_dir) / SHARDS_DIR / f"{shard}.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None


def write_manifest(stage_dir: str | Path, stage: str, config_hash: str, params: dict,
                   records: list[ShardRecord], fit_seconds: float, extra: dict | None = None) -> dict:
    reasons: Counter = Counter()
    removed: Counter = Counter()
    for r in records:
        reasons.update(r.reasons)
        removed.update(r.removed)
    totals = {k: sum(getattr(r, k) for r in records) for k in SUMMED_TOTALS}
    totals["peak_rss"] = max((r.peak_rss for r in records), default=0)  # shards run side by side: the max
    stats: Counter = Counter()
    for r in records:
        stats.update(r.stats)
    if stats:
        totals["stats"] = dict(sorted(stats.items()))
    manifest = {
        "stage": stage,
        "config_hash": config_hash,
        "params": params,
        "fit_seconds": round(fit_seconds, 3),
        "totals": totals,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "removed_reasons": dict(sorted(removed.items(), key=lambda kv: -kv[1])),
        "shards": [asdict(r) for r in records],
        **(extra or {}),
    }
    write_bytes_atomic(json.dumps(manifest, indent=1, sort_keys=False).encode(), Path(stage_dir) / MANIFEST)
    return manifest


def manifest_describes(stage_dir: str | Path, config_hash: str, records: list[ShardRecord]) -> bool:
    """Whether the stage's manifest on disk was written for exactly these shard records under this config."""
    try:
        manifest = json.loads((Path(stage_dir) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    # through JSON, as the manifest holds them (tuples become lists)
    return (manifest.get("config_hash") == config_hash
            and manifest.get("shards") == json.loads(json.dumps([asdict(r) for r in records])))


def run_stage_dirs(out_dir: str | Path) -> list[str] | None:
    """The stage folders of the run whose config is in OUT/config.resolved.yaml (written when a run
    starts), in order; None when there is none. Folders left by a run of another config are not in it."""
    import yaml

    cfg = Path(out_dir) / "config.resolved.yaml"
    if not cfg.is_file():
        return None
    try:
        data = yaml.safe_load(cfg.read_text()) or {}
        return ["00-ingest", *(f"{i:02d}-{next(iter(spec))}" for i, spec in enumerate(data.get("stages") or [], 1))]
    except (OSError, yaml.YAMLError, AttributeError, TypeError, StopIteration) as e:
        import logging

        logging.getLogger(__name__).warning("%s unreadable (%s): every stage folder is read", cfg, e)
        return None


def read_manifests(out_dir: str | Path) -> list[tuple[str, dict]]:
    """Every stage manifest of the output folder's run, in stage order (every one found when the
    folder has no resolved config)."""
    wanted = run_stage_dirs(out_dir)
    found = []
    for path in sorted(Path(out_dir).glob(f"[0-9][0-9]-*/{MANIFEST}")):
        if wanted is None or path.parent.name in wanted:
            found.append((path.parent.name, json.loads(path.read_text())))
    return found


def stray_stage_dirs(out_dir: str | Path) -> list[Path]:
    """Stage folders under OUT that its current config does not name (left by a run of another config)."""
    wanted = run_stage_dirs(out_dir)
    if wanted is None:
        return []
    return sorted(p for p in Path(out_dir).glob("[0-9][0-9]-*") if p.is_dir() and p.name not in wanted)
