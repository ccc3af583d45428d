"""The funnel: per stage, rows and bytes in / kept / rejected by reason, and seconds."""

from __future__ import annotations

from pathlib import Path

from winnow.pipeline.manifest import read_manifests


def funnel(out_dir: str | Path) -> list[dict]:
    rows = []
    for dirname, m in read_manifests(out_dir):
        t = m["totals"]
        rows.append({"stage": dirname, **{k: t[k] for k in ("rows_in", "kept", "rejected", "added", "bytes_in",
                                                               "bytes_kept", "bytes_rejected", "flops")},
                     # absent from manifests written before byte accounting
                     **{k: t.get(k, 0) for k in ("bytes_removed", "bytes_added", "peak_rss")},
                     "seconds": m.get("wall_seconds", t["seconds"]), "cpu_seconds": t["seconds"],
                     "reasons": m["reasons"], "removed_reasons": m.get("removed_reasons", {}),
                     "shards": len(m["shards"]), "warnings": m.get("warnings", [])})
    return rows


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def render_funnel(out_dir: str | Path, console, top_reasons: int = 8) -> None:
    from rich.table import Table

    rows = funnel(out_dir)
    if not rows:
        console.print(f"[red]no stage manifests under {out_dir}[/]")
        return
    table = Table(title=f"winnow funnel: {out_dir}")
    added = any(r["added"] for r in rows)   # a stage created rows (rephrase): show how many
    columns = ("stage", "rows in", *(("added",) if added else ()), "kept", "rejected", "kept %", "bytes in",
               "bytes kept", "bytes rejected", "bytes removed", "seconds")
    for col in columns:
        table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    for r in rows:
        total = r["rows_in"] + r["added"]   # kept and rejected both count created rows
        pct = 100 * r["kept"] / total if total else 0.0
        table.add_row(r["stage"], f"{r['rows_in']:,}", *((f"{r['added']:,}",) if added else ()), f"{r['kept']:,}",
                      f"{r['rejected']:,}", f"{pct:.1f}", _size(r["bytes_in"]), _size(r["bytes_kept"]),
                      _size(r["bytes_rejected"]), _size(r["bytes_removed"]), f"{r['seconds']:.1f}")
    console.print(table)
    for r in rows:
        if r["reasons"]:
            items = list(r["reasons"].items())
            shown = ", ".join(f"{k} {v:,}" for k, v in items[:top_reasons])
            more = f", … {len(items) - top_reasons} more" if len(items) > top_reasons else ""
            console.print(f"  [bold]{r['stage']}[/] rejected by reason: {shown}{more}")
        if r["removed_reasons"]:  # bytes cut out of rows the stage kept
            items = list(r["removed_reasons"].items())
            shown = ", ".join(f"{k} {_size(v)}" for k, v in items[:top_reasons])
            more = f", … {len(items) - top_reasons} more" if len(items) > top_reasons else ""
            console.print(f"  [bold]{r['stage']}[/] removed from kept rows: {shown}{more}")
    for r in rows:
        for warning in r["warnings"]:
            console.print(f"  [bold yellow]warning[/] {r['stage']}: {warning}")
