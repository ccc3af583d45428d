"""`winnow report OUT`: the run (and its proxy evaluation) as one self-contained HTML page."""

from __future__ import annotations

import click


@click.command(epilog="Examples:\n\n\b\n  winnow report out/web\n"
                      "  winnow report out/web-quality --eval out/eval-web-quality -o web-quality.html")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--eval", "eval_dir", type=click.Path(file_okay=False, exists=True),
              help="a `winnow eval` output folder (with eval.json): adds loss curves, multipliers and downstream")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="where to write the page  [default: OUT_DIR/report.html]")
@click.option("--examples", type=click.IntRange(1, 20), default=3, show_default=True,
              help="example documents shown per rejection reason, score end and dedup stage")
def report(out_dir: str, eval_dir: str | None, output: str | None, examples: int) -> None:
    """Write one HTML file about the run in OUT_DIR, readable offline in any browser (plots embedded,
    no script): the funnel per stage (documents, tokens, bytes; kept and rejected), rejection reasons
    with example rows, score histograms with the cut and the lowest- and highest-scored documents,
    dedup cluster sizes with removed documents beside their survivor, packing (padding, documents
    per row, lengths), the proxy evaluation when --eval is given, timings and FLOPs per stage, and
    the resolved config. Reads the manifests and a bounded sample of rows: seconds on a large run.
    Prints the path written."""
    from winnow.report import build_report

    click.echo(str(build_report(out_dir, eval_dir, output, examples)))
