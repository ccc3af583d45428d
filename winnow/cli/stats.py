"""`winnow stats OUT`: the funnel of a finished (or partly finished) run."""

from __future__ import annotations

import json

import click


@click.command(epilog="Examples:\n\n\b\n  winnow stats out/quickstart\n  winnow stats out/web --json")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="print the funnel as JSON")
def stats(out_dir: str, as_json: bool) -> None:
    """Per stage: rows and bytes in, kept and rejected (by reason), bytes removed from kept rows (by
    reason), and seconds. For every stage that
    scored its rows (fastText, embedding, perplexity, DataRater): the score histogram, the lowest- and
    highest-scored documents' first lines, and the score's rank correlation with length, the
    non-alphanumeric fraction, mean word length and line repetition."""
    from rich.console import Console

    from winnow.pipeline.report import funnel, render_funnel, render_scores, scoring_stages

    if as_json:
        click.echo(json.dumps({"funnel": funnel(out_dir), "scores": scoring_stages(out_dir)}, indent=1))
    else:
        console = Console(width=max(Console().width, 140))
        render_funnel(out_dir, console)
        render_scores(out_dir, console)
