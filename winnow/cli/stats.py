"""`winnow stats OUT`: the funnel of a finished (or partly finished) run."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(epilog="Examples:\n\n\b\n  winnow stats out/quickstart\n  winnow stats out/web --json")
@click.argument("out_dir")
@click.option("--json", "as_json", is_flag=True, help="print the funnel as JSON")
def stats(out_dir: str, as_json: bool) -> None:
    """Per stage: rows and bytes in, kept and rejected (by reason), bytes removed from kept rows (by
    reason), and seconds. For every stage that
    scored its rows (fastText, embedding, perplexity, DataRater): the score histogram, the lowest- and
    highest-scored documents' first lines, and the score's rank correlation with length, the
    non-alphanumeric fraction, mean word length and line repetition."""
    from rich.console import Console

    from winnow.pipeline.remote_output import local_copy
    from winnow.pipeline.report import funnel, render_funnel
    from winnow.pipeline.storage import is_url, local_path

    if not is_url(out_dir) and not Path(local_path(out_dir)).is_dir():
        raise click.BadParameter(f"{out_dir!r} is not a folder", param_hint="OUT_DIR")
    # on an object store: the manifests, the config and the kept shards (for the score columns)
    with local_copy(out_dir, skip=_not_for_stats) as local:
        if as_json:
            click.echo(json.dumps({"funnel": funnel(local), "scores": scoring_stages(local)}, indent=1))
        else:
            console = Console(width=max(Console().width, 140))
            render_funnel(local, console)
            render_scores(local, console)


def _not_for_stats(rel: str) -> bool:
    parts = rel.split("/")
    return bool({"_fit", "rejected", "removed"} & set(parts)) or parts[0] in ("dataset", "packed", "tokens", "megatron")


def scoring_stages(out_dir: str | Path) -> dict[str, dict]:
    """Per stage that wrote a score column: raters/analysis.py's description of each score (here, in the
    CLI, because the engine layer reads no rater's output)."""
    import pyarrow.parquet as pq

    from winnow.pipeline.manifest import read_manifests
    from winnow.raters.analysis import score_columns, stage_scores

    out = {}
    for dirname, _ in read_manifests(out_dir):
        stage_dir = Path(out_dir) / dirname
        first = next(iter(sorted(stage_dir.glob("train-*.parquet"))), None)
        if first is not None and score_columns(pq.read_schema(first).names):
            out[dirname] = stage_scores(stage_dir)
    return out


_BARS = " ▁▂▃▄▅▆▇█"


def render_scores(out_dir: str | Path, console, examples: int = 3) -> None:
    for stage, columns in scoring_stages(out_dir).items():
        for column, d in columns.items():
            counts = d["histogram"]["counts"]
            top = max(counts) if counts else 1
            bars = "".join(_BARS[round(8 * c / top)] if top else " " for c in counts)
            edges = d["histogram"]["edges"]
            span = f"{edges[0]:.3g} … {edges[-1]:.3g}" if edges else ""
            console.print(f"\n[bold]{stage}[/] {column} over {d['documents']:,} documents: {span} [{bars}]")
            corr = ", ".join(f"{k} {v:+.2f}" for k, v in d["spearman"].items())
            console.print(f"  Spearman with: {corr}")
            for label in ("lowest", "highest"):
                for ex in d[label][:examples]:
                    console.print(f"  {label} {ex['score']:.4g}: {ex['first_line']}", markup=False, highlight=False)
