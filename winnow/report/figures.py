"""The report's plots: matplotlib figures returned as `data:image/png;base64,…` URIs.

Figures are built with `matplotlib.figure.Figure` (no pyplot state, no display needed) and saved as
PNG into memory, so the HTML file carries them and opens without any network or extra file.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

KEPT, REJECTED, REMOVED, ESTIMATE = "#2e7d32", "#c62828", "#ef6c00", "#9e9e9e"
DPI = 90
LABEL_GAP_PX = 4     # the least room between two tick labels


def data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def plain_number(x: float, _pos: int | None = None) -> str:
    """A tick label without mathtext: 2, 50, 0.3, 2k, 1.5M."""
    if float(x).is_integer() and abs(x) < 1e4:
        return f"{int(x)}"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return EngFormatter(sep="")(x)


def readable_log_axis(axis: Axis, lo: float, hi: float) -> None:
    """A log axis labelled with plain numbers at 1, 2 and 5 times powers of ten inside [lo, hi] (the ends
    too, when few fall inside), minor ticks unlabelled: matplotlib's own labels read 10^1 or, on a short
    range, label every minor tick until they run into each other."""
    lo, hi = max(lo, 1e-300), max(hi, lo)
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    span = np.log10(hi / lo)
    steps = (1, 2, 5) if span < 2.2 else (1, 3) if span < 4 else (1,)   # wider ranges: fewer labels per decade
    ticks = [m * 10.0**d for d in decades for m in steps if lo <= m * 10.0**d <= hi]
    if len(ticks) < 3:
        ticks = sorted({*ticks, float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(NullFormatter())


def drop_overlapping_labels(fig: Figure, axis: Axis) -> None:
    """Keep only the major ticks whose labels do not touch the previous kept one (measured on the drawn
    figure, from the left/bottom): a dense set of ticks (one per cluster size) stays legible."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    lo, hi = sorted(axis.get_view_interval())
    vertical = axis.axis_name == "y"
    kept, end = [], -np.inf
    for tick in sorted(axis.get_major_ticks(), key=lambda t: t.get_loc()):
        label = tick.label1
        if not (lo <= tick.get_loc() <= hi and label.get_visible() and label.get_text()):
            continue
        box = label.get_window_extent(renderer)
        start, stop = (box.y0, box.y1) if vertical else (box.x0, box.x1)
        if start >= end + LABEL_GAP_PX:
            kept.append(tick.get_loc())
            end = stop
    axis.set_major_locator(FixedLocator(kept))


def funnel_chart(rows: list[dict]) -> str:
    """Kept and rejected documents, tokens and bytes per stage (and bytes removed from kept documents),
    as stacked horizontal bars."""
    labels = [r["stage"] for r in rows]
    fig = Figure(figsize=(12, 0.45 * len(rows) + 1.6))
    axes = fig.subplots(1, 3, sharey=True)
    y = np.arange(len(rows))[::-1]
    panels = [("documents", "kept", "rejected"), ("tokens", "tokens_kept", "tokens_rejected"),
              ("bytes (UTF-8 text)", "bytes_kept", "bytes_rejected")]
    for ax, (title, kept_key, rej_key) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        if all(r[kept_key] is None for r in rows):
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="#66727d")
            ax.set_xticks([])
            continue
        kept = np.asarray([r[kept_key] or 0 for r in rows], np.float64)
        rej = np.asarray([r[rej_key] or 0 for r in rows], np.float64)
        bars_k = ax.barh(y, kept, color=KEPT, label="kept")
        bars_r = ax.barh(y, rej, left=kept, color=REJECTED, label="rejected")
        if kept_key == "bytes_kept" and any(r.get("bytes_removed") for r in rows):
            removed = np.asarray([r.get("bytes_removed") or 0 for r in rows], np.float64)
            ax.barh(y, removed, left=kept + rej, color=REMOVED, label="removed (from kept)")
            ax.legend(loc="lower right", fontsize=8)
        for r, bk, br in zip(rows, bars_k, bars_r, strict=True):
            if kept_key == "tokens_kept":  # an estimate is drawn hatched
                bk.set_hatch("//" if r["tokens_kept_estimated"] else "")
                br.set_hatch("//" if r["tokens_rejected_estimated"] else "")
        ax.xaxis.set_major_formatter(EngFormatter(unit="B" if kept_key == "bytes_kept" else "", sep=""))
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return data_uri(fig)


def score_histogram(item: dict) -> str:
    """A score's histogram with the kept band's cut(s) marked."""
    values = item["values"]
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    log = len(values) and values.min() > 0 and values.max() / values.min() > 100
    bins = np.geomspace(values.min(), values.max(), 41) if log else 40
    if len(values):
        ax.hist(values, bins=bins, color="#546e7a")
    if log:
        ax.set_xscale("log")
        readable_log_axis(ax.xaxis, values.min(), values.max())
    for name, cut in (("cut (lo)", item["cut_lo"]), ("cut (hi)", item["cut_hi"])):
        if cut is not None and np.isfinite(cut):
            ax.axvline(cut, color=REJECTED, lw=2, ls="--", label=f"{name} {cut:.4g}")
    if item["cut_lo"] is not None or item["cut_hi"] is not None:
        ax.legend(fontsize=8)
    ax.set_xlabel(item["column"])
    ax.set_ylabel("documents")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{item['stage']}: {item['column']}", fontsize=10)
    fig.tight_layout()
    drop_overlapping_labels(fig, ax.xaxis)
    return data_uri(fig)


def cluster_histogram(item: dict) -> str:
    """Duplicate clusters by size (documents in the cluster, survivor included)."""
    sizes = item["cluster_sizes"]
    fig = Figure(figsize=(6.4, 3.0))
    ax = fig.subplots()
    if len(sizes):
        top = int(sizes.max())
        if top <= 40:  # one bar per size
            counts = np.bincount(sizes, minlength=top + 1)
            present = np.flatnonzero(counts)
            ax.bar(present, counts[present], width=0.8, color="#5c6bc0")
            ax.set_xlim(1, top + 1)
            if len(present) <= 20:
                ax.set_xticks(present)
        else:
            counts, _, _ = ax.hist(sizes, bins=np.geomspace(2, top + 1, 30), color="#5c6bc0")
            ax.set_xscale("log")
            readable_log_axis(ax.xaxis, 2, top + 1)
        if counts.max() > 50:  # size-2 clusters dwarf the rest: a log axis keeps the tail visible
            ax.set_yscale("log")
            readable_log_axis(ax.yaxis, 1, counts.max())
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cluster size (documents, survivor included)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{item['stage']}: {len(sizes):,} clusters", fontsize=10)
    fig.tight_layout()
    drop_overlapping_labels(fig, ax.xaxis)   # one tick per present size: adjacent sizes (16, 17) collide
    return data_uri(fig)


def packing_chart(item: dict) -> str:
    """Documents per packed row, segment lengths and (when tokenized) document lengths in tokens."""
    panels = [("documents per row", item["docs_per_row"], "rows"),
              ("segment length (tokens)", item["segment_lengths"], "segments")]
    if item["doc_lengths"] is not None and len(item["doc_lengths"]):
        panels.append(("document length (tokens)", item["doc_lengths"], "documents"))
    fig = Figure(figsize=(4.2 * len(panels), 3.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, values, unit) in zip(axes, panels, strict=True):
        if len(values):
            top = int(values.max())
            bins = np.arange(0.5, top + 1.5) if top <= 40 else 40
            ax.hist(values, bins=bins, color="#00897b")
        if title.startswith("document length") and len(values) and values.max() > item["seq_len"]:
            ax.axvline(item["seq_len"], color=REJECTED, ls="--", lw=1.5, label=f"seq_len {item['seq_len']}")
            ax.legend(fontsize=8)
        ax.set_xlabel(title)
        ax.set_ylabel(unit)
    fig.suptitle(f"{item['stage']}: {item['strategy']}, rows of {item['seq_len']} tokens", fontsize=10)
    fig.tight_layout()
    return data_uri(fig)


def control_curves(item: dict) -> str:
    """The outer loss after the rater-weighted updates and after uniform ones (same states, same batches),
    against the meta-step: the gap is what the rater's weights buy."""
    weighted, uniform = item["weighted"], item["uniform"]
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    for curve, label, color in ((weighted, "rater's weights", KEPT), (uniform, "uniform weights", ESTIMATE)):
        if len(curve):
            steps = np.linspace(1, item["steps"] or len(curve), len(curve))
            ax.plot(steps, curve, color=color, label=label)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("outer loss, nats/token")
    ax.set_title(f"{item['stage']}: uniform-weight control", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return data_uri(fig)


def timing_chart(rows: list[dict]) -> str:
    """Wall seconds per stage, the global fit's part marked."""
    labels = [r["stage"] for r in rows]
    wall = np.asarray([r["wall_seconds"] or 0 for r in rows], np.float64)
    fit = np.minimum(np.asarray([r["fit_seconds"] or 0 for r in rows], np.float64), wall)
    fig = Figure(figsize=(8, 0.4 * len(rows) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.barh(y, fit, color="#8e24aa", label="global fit")
    ax.barh(y, wall - fit, left=fit, color="#26a69a", label="shards")
    ax.set_yticks(y, labels)
    ax.set_xlabel("wall seconds")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return data_uri(fig)


def loss_curves(report: dict) -> str:
    """Held-out loss against training FLOPs, one panel per held-out set: each run's evaluations faint,
    each arm's final losses per budget as points (mean over seeds, band min-max)."""
    sets = report["eval_sets"]
    fig = Figure(figsize=(5.2 * len(sets), 3.8))
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    colors = [f"C{i}" for i in range(10)]
    arms = list(report.get("config", {}).get("arms", {})) or sorted({r["arm"] for r in report["runs"]})
    for ax, eval_set in zip(axes, sets, strict=True):
        for i, arm in enumerate(arms):
            mine = [r for r in report["runs"] if r["arm"] == arm]
            if not mine:
                continue
            color = colors[i % len(colors)]
            for r in mine:
                pts = [p for p in r.get("points", []) if eval_set in p.get("eval", {})]
                ax.plot([p["flops"] for p in pts], [p["eval"][eval_set] for p in pts], color=color, alpha=0.25, lw=1)
            budgets = sorted({r["budget"] for r in mine})
            finals = [[r["final"][eval_set] for r in mine if r["budget"] == b] for b in budgets]
            flops = [float(np.mean([r["flops"] for r in mine if r["budget"] == b])) for b in budgets]
            ax.plot(flops, [np.mean(f) for f in finals], "o-", color=color, label=arm)
            ax.fill_between(flops, [min(f) for f in finals], [max(f) for f in finals], color=color, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("held-out loss, nats/token")
        ax.set_title(eval_set + (" (headline)" if eval_set == report.get("eval_set") else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return data_uri(fig)
