"""`winnow stats OUT`: the funnel of a finished (or partly finished) run."""

from __future__ import annotations

import json

import click


@click.command(epilog="Examples:\n\n\b\n  winnow stats out/quickstart\n  winnow stats out/web --json")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="print the funnel as JSON")
def stats(out_dir: str, as_json: bool) -> None:
    """Per stage: rows and bytes in, kept and rejected (by reason), and seconds."""
    from rich.console import Console

    from winnow.pipeline.report import funnel, render_funnel

    if as_json:
        click.echo(json.dumps(funnel(out_dir), indent=1))
    else:
        render_funnel(out_dir, Console(width=max(Console().width, 110)))
