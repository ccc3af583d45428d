"""One function per report section: gathered data in, the section's HTML body out."""

from __future__ import annotations

from typing import Any

import yaml

from winnow.report import figures
from winnow.report.render import doc, esc, flops, img, na, num, pct, secs, size, table

QUALITY_KINDS = "fasttext_quality, embedding_quality, perplexity_quality, datarater or prune"


def funnel(data: dict) -> str:
    rows = data["rows"]
    added = any(r["added"] for r in rows)   # a stage created rows (rephrase): show how many
    cells = []
    for r in rows:
        total = r["rows_in"] + r["added"]
        cells.append([esc(r["stage"]), num(r["rows_in"]), *([num(r["added"])] if added else []), num(r["kept"]),
                      num(r["rejected"]), pct(r["kept"] / total if total else None),
                      _tokens(r["tokens_kept"], r["tokens_kept_estimated"]),
                      _tokens(r["tokens_rejected"], r["tokens_rejected_estimated"]),
                      size(r["bytes_in"]), size(r["bytes_kept"]), size(r["bytes_rejected"])])
    notes = {"run": "the run's own tokenizer (its tokenize stage)", "eval": "the eval's tokenizer"}
    tok = data["tokenizer"]
    if tok is None:
        token_note = ("Tokens: not recorded (no tokenize stage in this run and no <code>--eval</code> folder with "
                      "a tokenizer).")
    else:
        token_note = (f"Tokens under {notes[tok]}: exact where the run counted them (<code>n_tokens</code>, packed "
                      "rows) or where <code>winnow eval</code> counted an arm's kept tokens; "
                      "“≈” marks an estimate from the tokens per byte of a sample of each stage's documents "
                      "(hatched in the chart).")
    pack_note = (" A pack stage keeps its documents as packed rows of tokens: no text bytes."
                 if any(r["kind"] == "pack" for r in rows) else "")
    return (img(figures.funnel_chart(rows), "funnel: documents, tokens and bytes kept and rejected per stage")
            + table(["stage", "documents in", *(["added"] if added else []), "kept", "rejected", "kept %", "tokens kept",
                     "tokens rejected", "bytes in", "bytes kept", "bytes rejected"], cells,
                    numeric=set(range(1, 12)))
            + f'<p class="muted">{token_note}{pack_note}</p>')


def _tokens(value: int | None, estimated: bool) -> str:
    return "≈ " + num(value) if estimated and value else num(value)   # nothing is estimated from no bytes


def rejections(items: list[dict]) -> str:
    if not items:
        return na("No stage rejected any document.")
    out = []
    for s in items:
        rows = []
        for r in s["reasons"]:
            examples = "".join(doc(e["snippet"], _example_label(e)) for e in r["examples"]) or \
                '<span class="na">no example in the rows read</span>'
            rows.append([f"<code>{esc(r['reason'])}</code>", num(r["count"]), pct(r["share"]), examples])
        scanned = "" if s["complete"] else f" (examples from the first {s['scanned']:,} rejected rows)"
        out.append(f"<h3>{esc(s['stage'])}: {s['rejected']:,} rejected{esc(scanned)}</h3>"
                   + table(["reason", "documents", "% of stage input", "examples (first lines)"], rows, {1, 2}))
    return "\n".join(out)


def _example_label(e: dict) -> str:
    parts = [f"id {e['id']}" if e.get("id") else "", e.get("where") or "",
             f"({e['detail']})" if e.get("detail") else "", f"duplicate of {e['dup_of']}" if e.get("dup_of") else ""]
    return " ".join(p for p in parts if p)


def scores(items: list[dict]) -> str:
    if not items:
        return na(f"No stage scored its documents ({QUALITY_KINDS} write a score).")
    out = []
    for s in items:
        facts = [["documents", num(s["documents"])],
                 ["scores read", f"{len(s['values']):,}" + ("" if s["complete"] else " (a sample: row budget)")]]
        if s["missing"]:
            facts.append(["no score (NaN)", num(s["missing"])])
        if s["band"] is not None:
            facts.append(["kept band (quantiles)", esc(f"[{s['band'][0]:g}, {s['band'][1]:g}]")])
        none = "per pool, on the error-uncertainty plane" if s["kind"] == "prune" else "none recorded for this column"
        facts.append(["cut", esc(", ".join(f"{k} {v:.5g}" for k, v in (("lo", s["cut_lo"]), ("hi", s["cut_hi"]))
                                           if v is not None) or none)])
        if s.get("acceptance"):
            facts.append(["acceptance", esc(s["acceptance"])])
        if s["model"]:
            facts.append(["model", f"<code>{esc(s['model'])}</code>"])
        body = [f"<h3>{esc(s['stage'])}: <code>{esc(s['column'])}</code></h3>", table([], facts, {1})]
        body += [f'<p class="rejected"><b>warning:</b> {esc(w)}</p>' for w in s.get("warnings", [])]
        if len(s["values"]):
            body.append(img(figures.score_histogram(s), f"{s['stage']} {s['column']} histogram"))
        if s.get("plane") is not None:
            body.append("<p>Error-uncertainty plane (<code>eu_plane.png</code>):</p>"
                        + img(figures.file_uri(s["plane"]), f"{s['stage']} error-uncertainty plane"))
        if s.get("quadrants"):
            body.append(table(["quadrant", "documents"], [[esc(k), num(v)] for k, v in s["quadrants"].items()], {1}))
        for label in ("lowest", "highest"):
            rows = [[num(e["score"]), '<span class="kept">kept</span>' if e["kept"] else
                     '<span class="rejected">rejected</span>', doc(e["snippet"], f"id {e['id']}")] for e in s[label]]
            if rows:
                body.append(f"<p><b>{label}-scored</b></p>" + table(["score", "", "document (first lines)"], rows, {0}))
        out.append("\n".join(body))
    return "\n".join(out)


def dedup(items: list[dict]) -> str:
    if not items:
        return na("No dedup stage in this run (exact_dedup, minhash_dedup, line_dedup, semantic_dedup).")
    out = []
    for s in items:
        body = [f"<h3>{esc(s['stage'])}: {s['removed']:,} documents removed</h3>"]
        if s["cluster_sizes"] is not None:
            sizes = s["cluster_sizes"]
            note = "" if s["complete"] else " (from the rejected rows read: a sample)"
            body.append(f"<p>{len(sizes):,} duplicate clusters, largest {int(sizes.max()) if len(sizes) else 0:,} "
                        f"documents{esc(note)}.</p>")
            if len(sizes):
                body.append(img(figures.cluster_histogram(s), f"{s['stage']} cluster sizes"))
            rows = []
            for p in s["pairs"]:
                extra = f" cosine {p['cosine']:.3f}" if p.get("cosine") is not None else ""
                rows.append([doc(p["removed"], f"id {p['removed_id']} (cluster of {p['cluster_size']}){extra}"),
                             doc(p["survivor"], f"id {p['survivor_id']}")])
            if rows:
                body.append(table(["removed", "its survivor (kept)"], rows, cls="pairs"))
        if s.get("top_units") is not None:
            stats = s.get("stats", {})
            body.append(table([], [[esc(k.replace("_", " ")), num(int(v))] for k, v in stats.items()], {1}))
            rows = [[num(u["documents"]), doc(u["snippet"])] for u in s["top_units"]]
            body.append("<p>Most repeated units (kept only in their first document):</p>"
                        + (table(["documents", "unit"], rows, {0}) if rows else na("none")))
        out.append("\n".join(body))
    return "\n".join(out)


def packing(items: list[dict]) -> str:
    if not items:
        return na("No pack stage in this run (add <code>tokenize</code> and <code>pack</code> stages).")
    out = []
    for s in items:
        dpr = s["docs_per_row"]
        facts = [["strategy", esc(s["strategy"])], ["sequence length", num(s["seq_len"])],
                 ["packed rows", num(s["rows"])], ["documents", num(s["documents"])], ["tokens", num(s["tokens"])],
                 ["padding fraction", pct(s["padding_fraction"])],
                 ["documents per row (mean)", num(float(dpr.mean())) if len(dpr) else num(None)],
                 ["documents split across rows", f"{s['split_documents']:,} of {s['sampled_documents']:,}"
                  + (f" (in the first {s['sampled_rows']:,} rows)" if s["sampled_rows"] < s["rows"] else "")]]
        out.append(f"<h3>{esc(s['stage'])}</h3>" + table([], facts, {1})
                   + img(figures.packing_chart(s), f"{s['stage']} packing histograms"))
    return "\n".join(out)


def evaluation(data: dict | None) -> str:
    if data is None:
        return na("No eval folder given: <code>winnow report OUT --eval EVAL_DIR</code> adds the proxy models' "
                  "loss curves, compute multipliers and downstream accuracy.")
    r = data["report"]
    cfg = r.get("config", {})
    facts = [["eval folder", f"<code>{esc(data['dir'])}</code>"], ["baseline", esc(r.get("baseline"))],
             ["headline held-out set", esc(r.get("eval_set"))],
             ["proxy", esc(f"{cfg.get('size')}, rows of {cfg.get('seq_len')} tokens, "
                           f"{cfg.get('flop_budget', 0):.3g} FLOPs per curated run, seeds {cfg.get('seeds')}")]]
    body = [table([], facts)]
    arms = cfg.get("arms", {})
    if arms:
        body.append(table(["arm", "documents", "unique target tokens", "curation FLOPs per kept token"],
                          [[esc(a) + (" (baseline)" if a == r.get("baseline") else ""), f"<code>{esc(p)}</code>",
                            num(r.get("unique_tokens", {}).get(a)),
                            flops(r.get("curation", {}).get(a, {}).get("flops_per_kept_token"))]
                           for a, p in arms.items()], {2, 3}))
    if r.get("runs"):
        body.append(img(figures.loss_curves(r), "held-out loss against training FLOPs per held-out set"))
    body.append("<h3>Compute multipliers</h3>")
    rows = []
    for arm, sets in r.get("arms", {}).items():
        for name, s in sets.items():
            rows.append([esc(arm), esc(name) + (" ★" if name == r.get("eval_set") else ""),
                         _bound(s.get("status")) + _multiplier(s.get("multiplier"), s.get("std"), s.get("interval")),
                         _multiplier(s.get("net_multiplier"), None, s.get("net_interval")),
                         num(s.get("net_multiplier_with_fit")), esc(s.get("note", ""))])
    body.append(table(["arm", "held-out set", "training only (± std [95% interval])", "net of curation [95%]",
                       "net, fit charged", "status"], rows, {2, 3, 4})
                if rows else na("No arm besides the baseline."))
    body.append('<p class="muted">Training only: baseline FLOPs to reach the arm\'s loss / the arm\'s FLOPs. Net: '
                "curation's scoring FLOPs charged per trained token; fit charged: the model's one-off training too. "
                "★ the headline set.</p>")
    body.append("<h3>Held-out sets</h3>" + table(
        ["set", "documents", "tokens", "sources"],
        [[esc(n), num(h.get("documents")), num(h.get("tokens")), esc(", ".join(h.get("sources", {})))]
         for n, h in r.get("heldout", {}).items()], {1, 2}))
    body.append("<h3>Downstream accuracy</h3>")
    down = r.get("downstream") or {}
    rows = [[esc(arm), esc(task), f"{t['accuracy']:.3f}" + (f" ± {t['stderr']:.3f}" if t.get("stderr") else ""),
             num(t.get("items")), num(t.get("chance"))]
            for arm, tasks in down.items() for task, t in tasks.items()]
    body.append(table(["arm", "task", "accuracy ± stderr", "items", "chance"], rows, {2, 3, 4}) if rows else
                na("Not scored: set <code>downstream: {hellaswag: N, piqa: N}</code> in the eval config."))
    return "\n".join(body)


def _bound(statuses: Any) -> str:
    """≥ when every seed's multiplier is a lower bound (the baseline never reached the loss), ≤ when an
    upper bound (below the baseline's smallest run)."""
    statuses = set(statuses or [])
    return "≥ " if statuses == {"not_reached"} else "≤ " if statuses == {"below_range"} else ""


def _multiplier(m: Any, std: Any, interval: Any) -> str:
    if m is None:
        return num(None)
    text = f"{m:.2f}"
    if std is not None:
        text += f" ± {std:.2f}"
    if interval:
        text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
    return text


def timings(data: dict) -> str:
    rows = []
    for r in data["rows"]:
        named = "<br>".join(f"{esc(k)} {flops(v)}" for k, v in r["named_flops"].items()) or num(None)
        rows.append([esc(r["stage"]), secs(r["wall_seconds"]), secs(r["fit_seconds"]), secs(r["cpu_seconds"]),
                     f"{r['shards']:,}" + (f" ({r['skipped_shards']:,} skipped)" if r["skipped_shards"] else ""),
                     flops(r["shard_flops"]), named,
                     size(r["peak_memory"]) if r["peak_memory"] else '<span class="na">not recorded</span>'])
    total = data["wall_seconds"]
    head = f"<p>Whole run: {secs(total)} s wall.</p>" if total is not None else ""
    return (head + img(figures.timing_chart(data["rows"]), "wall seconds per stage")
            + table(["stage", "wall s", "global fit s", "shard CPU s", "shards", "FLOPs (shards)", "other FLOPs",
                     "peak memory"], rows, {1, 2, 3, 4, 5})
            + '<p class="muted">Peak memory is not recorded by the stage manifests today; '
              "<code>bench/</code> scripts measure it from outside (peak RSS of the process tree).</p>")


def config(text: str | None, eval_data: dict | None) -> str:
    body = ("<h3>Run (<code>config.resolved.yaml</code>)</h3>" + (f'<pre class="config">{esc(text)}</pre>' if text
                                                                  else na("config.resolved.yaml not found.")))
    if eval_data is not None and eval_data["report"].get("config"):
        dumped = yaml.safe_dump(eval_data["report"]["config"], sort_keys=False)
        body += f'<h3>Eval (from <code>eval.json</code>)</h3><pre class="config">{esc(dumped)}</pre>'
    return body
