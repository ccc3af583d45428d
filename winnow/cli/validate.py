"""`winnow validate CONFIG`: check a config without starting a cluster."""

from __future__ import annotations

import os

import click


@click.command(epilog="Examples:\n\n\b\n  winnow validate configs/quickstart.yaml\n"
                      "  winnow validate configs/web.yaml --set stages.2.heuristics.c4_quality=null")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key")
@click.option("--show", is_flag=True, help="print the resolved config (defaults filled in)")
def validate(config: str, overrides: tuple[str, ...], show: bool) -> None:
    """Check CONFIG: YAML syntax, every key and type (stage blocks too), stage names, and that the
    input paths match at least one file. Errors name the file, line and key path."""
    from winnow.pipeline.config import load_config
    from winnow.pipeline.ingest import plan_input

    resolved = load_config(config, overrides)
    workers = resolved.pipeline.engine.n_workers or os.cpu_count() or 1
    parts = plan_input(resolved.pipeline.input, workers)   # a path that reads nothing fails at its line
    if show:
        click.echo(resolved.to_yaml())
    names = " → ".join(["ingest"] + [s.name for s in resolved.stages])
    click.echo(f"{config}: ok ({names}; {len(parts)} input shards)")
