"""`winnow` command line: a dispatcher that only routes; each subcommand lives in its own file."""

from __future__ import annotations

import sys

import click

from winnow import __version__
from winnow.cli.eval import eval_
from winnow.cli.report import report
from winnow.cli.run import run
from winnow.cli.stats import stats
from winnow.cli.validate import validate
from winnow.cli.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog="Examples:\n\n\b\n  winnow run configs/quickstart.yaml\n  winnow validate configs/web.yaml\n"
                    "  winnow stats out/quickstart")
@click.version_option(__version__, prog_name="winnow")
def cli() -> None:
    """Curate a text corpus for language-model training, on Dask, and measure what it saves."""


cli.add_command(run)
cli.add_command(validate)
cli.add_command(stats)
cli.add_command(report)
cli.add_command(verify)
cli.add_command(eval_)


def main() -> None:
    from winnow.pipeline.errors import WinnowError

    try:
        # without standalone mode click returns a subcommand's `ctx.exit(code)` instead of exiting
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except WinnowError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
