"""`winnow eval CONFIG`: proxy-model comparison of curated arms against a baseline."""

from __future__ import annotations

import click


@click.command("eval", epilog="Examples:\n\n\b\n  winnow eval configs/eval-web.yaml\n"
                              "  winnow eval configs/eval-web.yaml --set seeds=[0] --set flop_budget=5e11")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key")
def eval_(config: str, overrides: tuple[str, ...]) -> None:
    """Train small LMs on each arm of CONFIG at matched FLOPs, evaluate on the same held-out sets,
    and print each arm's compute multiplier over the baseline (mean ± std over seeds). Writes
    OUTPUT/eval.json (every curve point) and OUTPUT/loss_vs_flops.png."""
    from winnow.pipeline.config import load_model
    from winnow.proxy.evaluate import EvalConfig, run_eval

    cfg = load_model(config, EvalConfig, overrides)
    report = run_eval(cfg, log=click.echo)
    click.echo(f"\nheld-out set: {report['eval_set']}; plot: {report['plot']}")
    for name, arm in report["arms"].items():
        click.echo(f"{name}: compute multiplier {arm['multiplier']:.2f} ± {arm['multiplier_std']:.2f} "
                   f"(net {arm['net_multiplier']:.2f}; {arm['note']})")
