"""`winnow report OUT`: the run (and its proxy evaluation) as one self-contained HTML page."""

from __future__ import annotations

import click


@click.command(epilog="Examples:\n\n\b\n  winnow report out/web\n"
                      "  winnow report out/web-quality --eval out/eval-web-quality -o web-quality.html")
@click.argument("out_dir")
@click.option("--eval", "eval_dir",
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
    from pathlib import Path

    from winnow.pipeline.remote_output import RemoteOutput, local_copy
    from winnow.pipeline.storage import is_url, local_path
    from winnow.report import build_report

    for name, folder in (("OUT_DIR", out_dir), ("--eval", eval_dir)):
        if folder and not is_url(folder) and not Path(local_path(folder)).is_dir():
            raise click.BadParameter(f"{folder!r} is not a folder", param_hint=name)
    # an output on an object store is read from a local copy; the page goes back beside it
    with local_copy(out_dir, skip=lambda rel: "_fit" in rel.split("/")) as local, \
            local_copy(eval_dir or "", skip=lambda rel: False) as local_eval:
        page = build_report(str(local), str(local_eval) if eval_dir else None, output, examples)
        if is_url(out_dir) and output is None:
            RemoteOutput(out_dir, str(local)).put("report.html")
            page = f"{out_dir.rstrip('/')}/report.html"
    click.echo(str(page))
