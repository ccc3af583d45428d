"""`winnow verify OUT`: re-check a finished run from its files alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command(epilog="Examples:\n\n\b\n  winnow verify out/quickstart\n  winnow verify out/web --json\n"
                      "  winnow verify out/web --partial   # a run stopped on purpose")
@click.argument("out_dir")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (problems with stage, path, "
              "what, kind)")
@click.option("--partial", is_flag=True, help="the run was stopped on purpose: the stage it stopped in and the "
              "missing run-level files are notes, not problems (that stage's markers are still checked)")
def verify(out_dir: str, as_json: bool, partial: bool) -> None:
    """Re-check the run in OUT_DIR from its files alone.

    Every stage has a manifest; every shard marker's checksums match its kept and rejected files,
    which hold the rows it says (rows in + added = kept + rejected); manifest totals are the sums
    of its shards, its shards are the markers, and no file lacks a marker; each stage read exactly
    the previous stage's kept rows; ids are unique in each stage's kept data; _run.json, dataset/,
    tokens/ and megatron/ match the last stage.

    Exit status 0 when all holds, 1 with the list of problems otherwise."""
    from winnow.pipeline.remote_output import local_copy
    from winnow.pipeline.storage import is_url, local_path
    from winnow.pipeline.verify import verify as verify_out

    if not is_url(out_dir) and not Path(local_path(out_dir)).is_dir():
        raise click.BadParameter(f"{out_dir!r} is not a folder", param_hint="OUT_DIR")
    # an output on an object store is checked from a local copy of its objects; paths name the objects
    with local_copy(out_dir, skip=lambda rel: rel.startswith("_fit/") or "/_fit/" in rel) as local:
        result = verify_out(str(local), partial=partial)

        def named(text: str) -> str:
            return text.replace(str(local), out_dir.rstrip("/")) if is_url(out_dir) else text

        if as_json:
            click.echo(named(json.dumps(result.to_dict(), indent=1)))
        else:
            for note in result.notes:
                click.echo(named(f"note: {note}"))
            for problem in result.problems:   # on an object store, each named by its object's URL
                click.secho(named(f"{out_dir.rstrip('/')}/{problem}" if is_url(out_dir) else str(problem)), fg="red")
            click.echo(named(result.summary()))
    if not result.ok:
        sys.exit(1)  # not ctx.exit: cli.main(standalone_mode=False) returns that code and `main` drops it
