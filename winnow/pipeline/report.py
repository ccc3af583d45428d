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
                     "seconds": m.get("wall_seconds", t["seconds"]), "cpu_seconds": t["seconds"],
                     "reasons": m["reasons"], "shards": len(m["shards"])})
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
    for col in ("stage", "rows in", "kept", "rejected", "kept %", "bytes in", "bytes kept", "seconds"):
        table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    for r in rows:
        pct = 100 * r["kept"] / r["rows_in"] if r["rows_in"] else 0.0
        table.add_row(r["stage"], f"{r['rows_in']:,}", f"{r['kept']:,}", f"{r['rejected']:,}", f"{pct:.1f}",
                      _size(r["bytes_in"]), _size(r["bytes_kept"]), f"{r['seconds']:.1f}")
    console.print(table)
    for r in rows:
        if r["reasons"]:
            items = list(r["reasons"].items())
            shown = ", ".join(f"{k} {v:,}" for k, v in items[:top_reasons])
            more = f", … {len(items) - top_reasons} more" if len(items) > top_reasons else ""
            console.print(f"  [bold]{r['stage']}[/] rejected by reason: {shown}{more}")
