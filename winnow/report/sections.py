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
        stage = esc(r["stage"]) + (f' <span class="flag">{_flat_label(r["flat_scores"])}</span>'
                                   if r.get("flat_scores") else "")
        cells.append([stage, num(r["rows_in"]), *([num(r["added"])] if added else []), num(r["kept"]),
                      num(r["rejected"]), pct(r["kept"] / total if total else None),
                      _tokens(r["tokens_kept"], r["tokens_kept_estimated"]),
                      _tokens(r["tokens_rejected"], r["tokens_rejected_estimated"]),
                      size(r["bytes_in"]), size(r["bytes_kept"]), size(r["bytes_rejected"]),
                      _removed_bytes(r)])
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
    removed_note = (" Bytes removed: text a stage cut out of the documents it kept (lines, repeated units, "
                    "normalisation), by reason under Rejections and removals; bytes in = kept + rejected + removed."
                    + (" “—”: not recorded (a run written before byte accounting); “unaccounted”: input bytes "
                       "that neither its kept nor its rejected rows hold." if any(r["bytes_removed"] is None
                                                                                for r in rows) else ""))
    return (img(figures.funnel_chart(rows), "funnel: documents, tokens and bytes kept, rejected and removed per stage")
            + table(["stage", "documents in", *(["added"] if added else []), "kept", "rejected", "kept %", "tokens kept",
                     "tokens rejected", "bytes in", "bytes kept", "bytes rejected", "bytes removed"], cells,
                    numeric=set(range(1, 13)))
            + f'<p class="muted">{token_note}{pack_note}{removed_note}</p>')


def _removed_bytes(r: dict) -> str:
    """Bytes removed; for a run written before byte accounting, "—" and the bytes no column accounts for."""
    if r["bytes_removed"] is not None:
        return size(r["bytes_removed"])
    gap = r["bytes_unaccounted"]
    return num(None) + (f' <span class="rejected">({size(gap)} unaccounted)</span>' if gap else "")


def _flat_label(flat: dict) -> str:
    """The funnel's and the score section's flag for a quality stage whose scores were flat."""
    return ("scores flat: nothing cut" if flat.get("kept_all") else "scores flat: cut on noise")


def _tokens(value: int | None, estimated: bool) -> str:
    return "≈ " + num(value) if estimated and value else num(value)   # nothing is estimated from no bytes


def rejections(items: list[dict]) -> str:
    """Each stage's rejection and removal reasons folded under its own <details> (the first one open),
    so a run with many reasons stays one screen: the browser folds them, no script."""
    if not items:
        return na("No stage rejected a document or removed text from one.")
    out = ['<p class="muted">One fold per stage (click a stage to open it): documents rejected by reason with '
           "examples, then bytes removed from the documents it kept, by reason.</p>"]
    for n, s in enumerate(items):
        body = []
        if s["reasons"]:
            rows = []
            for r in s["reasons"]:
                examples = "".join(doc(e["snippet"], _example_label(e)) for e in r["examples"]) or \
                    '<span class="na">no example in the rows read</span>'
                rows.append([f"<code>{esc(r['reason'])}</code>", num(r["count"]), pct(r["share"]), examples])
            scanned = "" if s["complete"] else f"Examples from the first {s['scanned']:,} rejected rows."
            body.append((f'<p class="muted">{esc(scanned)}</p>' if scanned else "")
                        + table(["reason", "documents", "% of stage input", "examples (first lines)"], rows, {1, 2}))
        if s["removed"]:
            body.append(_removals(s["removed"]))
        removed = s["bytes_removed"]
        head = [f"{s['rejected']:,} rejected ({size(s['bytes_rejected'])})"] if s["rejected"] else []
        if removed:
            head.append(f"{size(removed)} removed from kept documents")
        top = [r["reason"] for r in sorted(s["reasons"], key=lambda r: -r["count"])[:3]] + \
            [r["reason"] for r in s["removed"][:3]]
        summary = f"<b>{esc(s['stage'])}</b>: {', '.join(head)}" + \
            (f' <span class="muted">({esc(", ".join(dict.fromkeys(top)))}{", …" if len(s["reasons"]) > 3 else ""})'
             "</span>" if top else "")
        out.append(f'<details class="stage"{" open" if n == 0 else ""}><summary>{summary}</summary>'
                   + "\n".join(body) + "</details>")
    return "\n".join(out)


def _removals(items: list[dict]) -> str:
    written = any(r["written"] for r in items)
    rows = [[f"<code>{esc(r['reason'])}</code>", size(r["bytes"]), pct(r["share"]),
             "".join(doc(e["snippet"], f"id {e['id']}") for e in r["examples"])
             or '<span class="na">none in the rows read</span>'] if written else
            [f"<code>{esc(r['reason'])}</code>", size(r["bytes"]), pct(r["share"])] for r in items]
    heads = ["removal reason", "bytes removed", "% of stage input bytes"]
    note = "" if written else ('<p class="muted">The removed text itself is not kept: '
                               "<code>outputs.removed: true</code> writes it under the stage's <code>removed/</code>."
                               "</p>")
    return ("<p><b>Removed from kept documents</b> (top reasons by bytes)</p>"
            + table(heads + (["removed text (first lines)"] if written else []), rows, {1, 2}) + note)


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
        body = [f"<h3>{esc(s['stage'])}: <code>{esc(s['column'])}</code></h3>"]
        flat = s.get("flat")
        if flat:
            body.append(_flat_banner(flat))
        body.append(table([], facts, {1}))
        body += [f'<p class="rejected"><b>warning:</b> {esc(w)}</p>' for w in s.get("warnings", [])
                 if not (flat and w == flat.get("message"))]   # the banner already says it
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


def meta_training(items: list[dict]) -> str:
    """The DataRater's uniform-weight control: does training on its weights beat training on uniform ones?"""
    out = []
    for s in items:
        c = s["control"]
        steps = c.get("steps")
        facts = [["outer loss, rater's weights", num(c.get("weighted_outer_loss"))],
                 ["outer loss, uniform weights", num(c.get("uniform_outer_loss"))],
                 ["delta (weighted − uniform)", num(c.get("delta"))
                  + (f" ± {c['delta_se']:.2g} (s.e.)" if isinstance(c.get("delta_se"), float) else "")]]
        if isinstance(steps, list) and len(steps) == 2:
            facts.append(["meta-steps averaged", esc(f"{steps[0]}–{steps[1]}")])
        out.append(f"<h3>{esc(s['stage'])}: meta-training</h3>" + table([], facts, {1})
                   + '<p class="muted">At each meta-step averaged, each inner model also takes the same updates from the same state with uniform '
                   "weights; a negative delta means the rater's weights lower the outer loss. Near 0, the rater changes "
                   "nothing about training at this scale, however well it separates documents.</p>")
        if len(s["weighted"]) or len(s["uniform"]):
            out.append(img(figures.control_curves(s), f"{s['stage']} uniform-weight control"))
    return "\n".join(out)


def _flat_banner(flat: dict) -> str:
    """A quality stage whose scores all lie within 0.01: either it kept everything (the default) or it cut
    on noise (`allow_flat_scores: true`, or a run from before the rule)."""
    what = ("every document kept: the scores do not tell the documents apart, so a cut would be noise"
            if flat.get("kept_all") else
            "the cut ranks documents on noise: the scores do not tell them apart")
    spread = f"{float(flat['spread']):.3g}" if isinstance(flat.get("spread"), int | float) else "?"
    message = f"<br>{esc(flat['message'])}" if flat.get("message") else ""
    old = "" if flat.get("recorded", True) else "<br>(from the manifest's score range: a run written before " \
        "quality stages recorded <code>flat_scores</code>)"
    cls = "flat kept-all" if flat.get("kept_all") else "flat noise"
    return (f'<div class="{cls}"><b>{_flat_label(flat)}</b> (spread {spread} &lt; 0.01): {what}.'
            f"{message}{old}</div>")


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


def decontamination(items: list[dict]) -> str:
    """Per decontaminate stage: the index, then per benchmark what was indexed and which items leaked."""
    if not items:
        return na("No <code>decontaminate</code> stage in this run: nothing checked the corpus against the "
                  "evaluation benchmarks (add one with <code>benchmarks: [{name, paths, fields}]</code>).")
    out = []
    for s in items:
        ix = s["index"]
        what = ("documents holding an item dropped (reason <code>contaminated</code>)" if s["action"] == "drop"
                else "matching spans cut out of the documents (reason <code>decontaminate:&lt;benchmark&gt;</code>)")
        facts = [["action", f"<code>{esc(s['action'])}</code>: {what}"],
                 ["documents that matched", num(s["documents"])],
                 ["index", esc(f"{ix.get('ngrams', 0):,} hashed {ix.get('ngram')}-grams, "
                               f"{ix.get('bytes', 0) / 1e6:.1f} MB; values of {ix.get('min_item_words')} to "
                               f"{(ix.get('ngram') or 1) - 1} words matched whole") if ix else num(None)]]
        if s["action"] == "remove":
            facts.append(["bytes removed", size(s["bytes_removed"])])
            if s["unaligned"]:
                facts.append(["dropped instead (words not locatable)", num(s["unaligned"])])
        rows = []
        for b in s["benchmarks"]:
            listed = ", ".join(str(i) for i in b["leaked_items"]) + (f", … ({b['more_leaked']:,} more)"
                                                                     if b["more_leaked"] else "")
            rows.append([esc(b["name"]), num(b["items"]), num(b["items_indexed"]), num(b["items_skipped"]),
                         num(b["ngrams"]), f'<span class="{"rejected" if b["items_leaked"] else "kept"}">'
                         f'{num(b["items_leaked"])}</span>', num(b["documents"]), esc(listed) or "—"])
        body = [f"<h3>{esc(s['stage'])}</h3>", table([], facts, {1}),
                table(["benchmark", "items", "indexed", "skipped (too short)", "n-grams", "items leaked",
                       "documents", "leaked items (numbers)"], rows, {1, 2, 3, 4, 5, 6})]
        for b in s["benchmarks"]:
            if not b["examples"]:
                continue
            ex = [[num(e["item"]), doc(e["text"], e.get("where") or ""),
                   f"<code>{esc(e['document'])}</code>" + (f' <span class="muted">(and {e["documents"] - 1:,} more)'
                                                          "</span>" if (e.get("documents") or 0) > 1 else "")]
                  for e in b["examples"]]
            body.append(f"<p><b>{esc(b['name'])}</b>: items found in the corpus</p>"
                        + table(["item", "the item (benchmark file:line)", "matching document"], ex, {0}))
        body.append('<p class="muted">An item is one record of a benchmark (a question with its answers), numbered '
                    "from 0 over its files; skipped: every field value shorter than the shortest matched length.</p>")
        out.append("\n".join(body))
    return "\n".join(out)


def personal_data(items: list[dict]) -> str:
    """Per pii stage: counts per kind and a few contexts with the personal data masked (never the data)."""
    if not items:
        return na("No <code>pii</code> stage in this run: personal data (e-mails, public IPs, phone numbers, "
                  "card numbers, IBANs) was neither counted nor removed.")
    out = []
    for s in items:
        rows = [[esc(k["kind"]), num(k["found"]), num(k["documents"]),
                 size(k["bytes_removed"]) if k["bytes_removed"] is not None else num(None), num(k["rejected"])]
                for k in s["kinds"]]
        body = [f"<h3>{esc(s['stage'])}: <code>{esc(s['action'])}</code></h3>",
                table(["kind", "found", "documents", "bytes removed", "documents rejected"], rows, {1, 2, 3, 4})]
        if s["contexts"]:
            body.append("<p>Where it was found (the personal data itself masked):</p>"
                        + table(["document", "context"], [[f"<code>{esc(c['id'])}</code>", doc(c["context"])]
                                                         for c in s["contexts"]]))
        else:
            body.append(na("No personal data found in the rows read."))
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
    driver = any(r["driver_peak_memory"] for r in data["rows"])
    for r in data["rows"]:
        named = "<br>".join(f"{esc(k)} {flops(v)}" for k, v in r["named_flops"].items()) or num(None)
        rows.append([esc(r["stage"]), secs(r["wall_seconds"]), secs(r["fit_seconds"]), secs(r["cpu_seconds"]),
                     f"{r['shards']:,}" + (f" ({r['skipped_shards']:,} skipped)" if r["skipped_shards"] else ""),
                     flops(r["shard_flops"]), named, _memory(r["peak_memory"]),
                     *([size(r["driver_peak_memory"])] if driver else [])])
    total = data["wall_seconds"]
    head = f"<p>Whole run: {secs(total)} s wall.</p>" if total is not None else ""
    if data.get("driver_peak_memory"):
        head += f"<p>Driver peak memory (whole run): {size(data['driver_peak_memory'])}.</p>"
    unrecorded = any(r["peak_memory"] is None for r in data["rows"])
    return (head + img(figures.timing_chart(data["rows"]), "wall seconds per stage")
            + table(["stage", "wall s", "global fit s", "shard CPU s", "shards", "FLOPs (shards)", "other FLOPs",
                     "peak memory (worker)", *(["driver peak so far"] if driver else [])], rows,
                    {1, 2, 3, 4, 5, 7, 8})
            + '<p class="muted">Peak memory (worker): the largest peak resident memory of a worker process over '
              "the stage's shards (each shard samples its own). Driver: the <code>winnow run</code> process itself, its "
              "peak up to the end of the stage."
              + (" “not recorded”: the manifest predates peak-memory records." if unrecorded else "") + "</p>")


def _memory(n: int | None) -> str:
    return size(n) if n else '<span class="na">not recorded</span>'


def config(text: str | None, eval_data: dict | None) -> str:
    body = ("<h3>Run (<code>config.resolved.yaml</code>)</h3>" + (f'<pre class="config">{esc(text)}</pre>' if text
                                                                  else na("config.resolved.yaml not found.")))
    if eval_data is not None and eval_data["report"].get("config"):
        dumped = yaml.safe_dump(eval_data["report"]["config"], sort_keys=False)
        body += f'<h3>Eval (from <code>eval.json</code>)</h3><pre class="config">{esc(dumped)}</pre>'
    return body
