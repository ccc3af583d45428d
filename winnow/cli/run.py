"""`winnow run CONFIG`: run every stage of a config on Dask, resuming finished shards."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.command(epilog="Examples:\n\n\b\n  winnow run configs/quickstart.yaml\n"
                      "  winnow run configs/web.yaml --set engine.n_workers=4\n"
                      "  winnow run configs/web.yaml --set output=out/web-strict --set input.strict=true\n"
                      "  winnow run configs/web.yaml --force")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a config key (dotted path, value parsed as YAML); repeatable")
@click.option("--force", is_flag=True, help="redo every fit and shard, even where the manifest says it is done "
              "(the DataRater meta-trains afresh instead of resuming its checkpoint)")
@click.option("--quiet", is_flag=True, help="no progress bars; print only the funnel")
def run(config: str, overrides: tuple[str, ...], force: bool, quiet: bool) -> None:
    """Run the pipeline in CONFIG and print the funnel.

    Each stage writes OUTPUT/NN-stage/ with kept shards, rejected/ and _manifest.json. A rerun
    skips every shard whose config hash and input fingerprint match (a killed run resumes).
    """
    from rich.console import Console

    from winnow.pipeline.config import load_config
    from winnow.pipeline.manifest import stray_stage_dirs
    from winnow.pipeline.report import render_funnel
    from winnow.pipeline.run import run_pipeline

    console = Console(stderr=True)
    resolved = load_config(config, overrides)
    if quiet:
        resolved.pipeline.engine.progress = False
    console.print(f"winnow: {len(resolved.stages) + 1} stages → {resolved.pipeline.output}")
    result = run_pipeline(resolved, force=force, console=console)
    render_funnel(result.out_dir, Console(width=max(Console().width, 140)))
    documents = result.documents_dir or result.final_dir
    where = result.location.rstrip("/")   # an object store's URL, or the local folder

    def shown(path: Path) -> str:
        return f"{where}/{path.relative_to(result.out_dir).as_posix()}"

    click.echo(f"final documents: {shown(documents)}  (datasets folder: {where}/dataset)")
    if documents != result.final_dir:
        click.echo(f"packed rows: {shown(result.final_dir)}  (datasets folder: {where}/packed)")
    click.echo(f"done in {result.seconds:.1f} s")
    stray = stray_stage_dirs(result.out_dir)
    if stray:
        click.echo(f"note: {', '.join(p.name for p in stray)} in {result.out_dir} belong to a run of another "
                   "config: stats and report leave them out, `winnow verify` flags them; delete them when done")
    report = write_report(result.out_dir) if resolved.pipeline.outputs.report else None
    if report is not None:
        if result.remote is not None:
            result.remote.put(report.relative_to(result.out_dir).as_posix())
        click.echo(f"report: {shown(report)}  (open it in a browser)")


def write_report(out_dir: Path) -> Path | None:
    """OUT/report.html (`outputs.report`); a failure warns, since every data output is written by then:
    the run stands, and `winnow report OUT` retries the page alone."""
    from winnow.report import build_report

    try:
        return Path(build_report(str(out_dir)))
    except Exception as e:
        logging.getLogger(__name__).warning("report.html not written (%s: %s); run `winnow report %s` to retry",
                                            type(e).__name__, e, out_dir)
        return None
