"""The ablation's arms as one small bundle, to carry them to a machine that cannot build them.

The GPU image has neither dask nor datatrove, so bench/gpu/ablation.sh cannot run the curation
there; it evaluates arms built here. Fifteen arms, most of them near the raw pool's size, are
~0.5 GB of Parquet, while a device call carries 64 MiB. The arms share most of their texts, so the
bundle stores each distinct text once (`texts.parquet`: xxh3 of the text, the text), each arm's
rows as references (`docs.parquet`: arm, id, text hash, source, url) and every stage manifest of the
runs the arms come from (the eval charges curation FLOPs from them). `materialize` writes the arms
back as stage folders with the same run/stage layout, so `winnow eval` sees the same documents,
sources and curation costs.

    python bench/ablation.py --build-only --bundle bench-out/ablation-arms    # here, after the CPU run
    python bench/ablation.py --from-bundle bench-out/ablation-arms ...        # there: eval only
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEEP_COLUMNS = ("id", "source", "url")   # what the eval reads besides the text (sources stratify `pool`)


def text_hashes(texts: pa.Array) -> pa.Array:
    import xxhash

    return pa.array([xxhash.xxh3_64_intdigest(t.encode("utf-8")) for t in texts.to_pylist()], pa.uint64())


def write_bundle(arms: dict[str, str], target: Path) -> dict:
    """Write the bundle of these arms (name -> stage folder) into `target`; returns its summary."""
    target.mkdir(parents=True, exist_ok=True)
    texts: dict[int, str] = {}
    docs = []
    layout = {}
    runs = set()
    for name, folder in arms.items():
        stage = Path(folder)
        layout[name] = f"{stage.parent.name}/{stage.name}"
        runs.add(stage.parent)
        table = pa.concat_tables(pq.read_table(f) for f in sorted(stage.glob("train-*.parquet")))
        hashes = text_hashes(table["text"])
        for h, t in zip(hashes.to_pylist(), table["text"].to_pylist(), strict=True):
            texts.setdefault(h, t)
        columns = {"arm": pa.array([name] * table.num_rows, pa.string()), "text_hash": hashes}
        for col in KEEP_COLUMNS:
            columns[col] = table[col] if col in table.column_names else pa.nulls(table.num_rows, pa.string())
        docs.append(pa.table(columns))
    pq.write_table(pa.table({"text_hash": pa.array(list(texts), pa.uint64()), "text": list(texts.values())}),
                   target / "texts.parquet", compression="zstd", compression_level=9)
    pq.write_table(pa.concat_tables(docs), target / "docs.parquet", compression="zstd", compression_level=9)
    for run in runs:
        for manifest in sorted(run.glob("[0-9][0-9]-*/_manifest.json")):
            dest = target / "runs" / run.name / manifest.parent.name / "_manifest.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(manifest, dest)
    (target / "arms.json").write_text(json.dumps(layout, indent=1))
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return {"arms": len(layout), "texts": len(texts), "rows": sum(d.num_rows for d in docs), "bytes": size}


def materialize(bundle: Path, out: Path) -> dict[str, str]:
    """Write the bundle's arms as stage folders under `out` (manifests included); returns name -> folder."""
    layout = json.loads((bundle / "arms.json").read_text())
    texts = pq.read_table(bundle / "texts.parquet")
    docs = pq.read_table(bundle / "docs.parquet")
    by_hash = {h: i for i, h in enumerate(texts["text_hash"].to_pylist())}
    for manifest in sorted((bundle / "runs").glob("*/*/_manifest.json")):
        dest = out / manifest.relative_to(bundle / "runs")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(manifest, dest)
    arms = {}
    for name, rel in layout.items():
        rows = docs.filter(pc.equal(docs["arm"], name))
        take = pa.array([by_hash[h] for h in rows["text_hash"].to_pylist()], pa.int64())
        table = pa.table({"id": rows["id"], "text": texts["text"].take(take),
                          **{c: rows[c] for c in KEEP_COLUMNS[1:] if rows[c].null_count < rows.num_rows}})
        folder = out / rel
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "train-00000.parquet")
        arms[name] = str(folder)
    return arms
