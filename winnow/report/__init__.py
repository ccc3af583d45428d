"""`winnow report`: one self-contained HTML page about a run (and optionally its `winnow eval`).

gather.py reads the manifests and bounded samples of the shards (sample.py), figures.py draws the
plots as PNG data URIs, sections.py turns each part into HTML and render.py lays out the page.
The page needs no network and runs no script; document text is escaped everywhere.
"""

from __future__ import annotations

from pathlib import Path

from winnow.pipeline.errors import ConfigError


def build_report(out_dir: str | Path, eval_dir: str | Path | None = None, output: str | Path | None = None,
                 examples: int = 3) -> Path:
    """Write the report of the run in `out_dir` to `output` (default OUT/report.html); returns its path."""
    from winnow.pipeline.shards import write_bytes_atomic
    from winnow.report import gather, sections
    from winnow.report.render import esc, page

    out = Path(out_dir)
    stages = gather.read_stages(out)
    if not stages:
        raise ConfigError("no stage manifests here: is it a winnow run's output folder?", path=str(out))
    eval_data = gather.load_eval(Path(eval_dir)) if eval_dir is not None else None
    timing = gather.timings(stages, out)
    bodies = {
        "funnel": sections.funnel(gather.funnel(stages, out, eval_data)),
        "rejections": sections.rejections(gather.rejections(stages, examples)),
        "scores": sections.scores(gather.scores(stages, examples))
        + sections.meta_training(gather.meta_training(stages)),
        "dedup": sections.dedup(gather.dedup(stages, examples)),
        "contamination": sections.decontamination(gather.decontamination(stages, examples)),
        "personal": sections.personal_data(gather.personal_data(stages, examples)),
        "packing": sections.packing(gather.packing(stages)),
        "eval": sections.evaluation(eval_data),
        "timings": sections.timings(timing),
        "config": sections.config(gather.resolved_config(out), eval_data),
    }
    first, last = stages[0].totals, stages[-1].totals
    subtitle = esc(f"{len(stages)} stages, {first['rows_in']:,} input records → {last['kept']:,} documents "
                   f"in {stages[-1].dirname}" + (f"; eval: {eval_dir}" if eval_dir is not None else ""))
    html = page(f"winnow report: {out}", subtitle, bodies)
    path = Path(output) if output is not None else out / "report.html"
    write_bytes_atomic(html.encode("utf-8"), path)
    return path
