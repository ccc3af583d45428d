"""`winnow eval CONFIG`: proxy-model comparison of curated arms against a baseline."""

from __future__ import annotations

from typing import Any

import click


def _fmt(stats: dict) -> str:
    text = f"{stats['multiplier']:.2f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.2f}"
    if stats["interval"] is not None:
        lo, hi = stats["interval"]
        text += f" (95% CI {lo:.2f}-{hi:.2f})"
    return text


@click.command("eval", epilog="Examples:\n\n\b\n  winnow eval configs/eval-web.yaml\n"
                              "  winnow eval configs/eval-web.yaml --set seeds=[0] --set flop_budget=5e11")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key")
def eval_(config: str, overrides: tuple[str, ...]) -> None:
    """Train small LMs on each arm of CONFIG at matched FLOPs, evaluate them on the same held-out
    sets (every token of a source-stratified sample), and print each arm's compute multiplier over
    the baseline per held-out set: mean ± sample std over seeds with a 95% t-interval, and net of
    the curation's FLOPs per trained token. Writes OUTPUT/eval.json (schema in the README),
    OUTPUT/loss_vs_flops.png and a checkpoint per run."""
    from winnow.pipeline.config import load_model
    from winnow.proxy.evaluate import EvalConfig, run_eval

    cfg = localized(load_model(config, EvalConfig, overrides))
    report = run_eval(cfg, log=click.echo)
    click.echo(f"\nheadline held-out set: {report['eval_set']}; plot: {report['plot']}")
    for name, by_set in report["arms"].items():
        for eval_set, stats in by_set.items():
            click.echo(f"{name} on {eval_set}: compute multiplier {_fmt(stats)}; net {stats['net_multiplier']:.2f}, "
                       f"with the model's fit {stats['net_multiplier_with_fit']:.2f} ({stats['note']})")
    for arm, tasks in report["downstream"].items():
        for task, res in tasks.items():
            stderr = f" ± {res['stderr']:.3f}" if res["stderr"] is not None else ""
            click.echo(f"{arm} {task}: accuracy {res['accuracy']:.3f}{stderr} ({res['items']} items, "
                       f"chance {res['chance']}, the {res['per_seed'][0].get('budget', 1.0):g}x runs)")


def localized(cfg: Any) -> Any:
    """The eval config with every URL among its inputs (arms, held-out paths, tokenizer, downstream data)
    replaced by a local copy under the winnow cache, fetched once per content (credentials and
    `AWS_ENDPOINT_URL` from the standard chain). The eval's `output` stays a local folder."""
    from winnow.models.loading import cache_root
    from winnow.pipeline.storage import localize

    cache = cache_root() / "inputs"
    cfg.arms = {name: localize(path, cache) for name, path in cfg.arms.items()}
    for held in cfg.heldout.values():
        held.paths = [localize(p, cache) for p in held.paths]
    if cfg.tokenizer:
        cfg.tokenizer = localize(cfg.tokenizer, cache)
    if getattr(cfg, "downstream", None) is not None and getattr(cfg.downstream, "data", None):
        cfg.downstream.data = localize(cfg.downstream.data, cache)
    return cfg
