"""Held-out sets that represent their sources: a seeded, source-stratified sample chosen by tokens.

A held-out loss is only as good as the tokens it averages. The sample here:
- groups the candidate documents by source (documents.py's `stratify` rule: each path given,
  the sub-folder, a `source` column or the `url` domain);
- gives each source a share of the token budget: `proportional` to the tokens the source holds
  (an unbiased picture of a pool, with less variance than a plain random sample) or `equal`
  (every named source counts the same: a mix of references); a source that holds less than its
  share gives the rest to the others; every source gets at least one document;
- walks each source's documents in an order fixed by a seeded hash of the id (not file order,
  not length), taking whole documents until the share is reached;
- is then evaluated on every target token of every sampled document (no row cap), so every run
  of an eval sees exactly the same tokens and the loss per source comes from the same pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from winnow.pipeline.documents import id_hashes
from winnow.proxy.data import PackedRows, pack_tokenized

HELDOUT_SAMPLE = "heldout_sample"   # the id-hash purpose of the order documents are sampled in


@dataclass
class HeldoutSample:
    ids: list[str]
    sources: dict[str, str]          # id -> source
    tokens_by_source: dict[str, int]
    rows: PackedRows
    texts: list[str] = field(default_factory=list)   # each sampled document's text (n-gram decontamination)

    def summary(self) -> dict:
        """documents; tokens (with EOS) per source; `targets`: the tokens each source's loss averages over
        (a document's first token of each row segment is context, not a target)."""
        weights, where = self.rows.loss_mask[:, 1:], self.rows.source_index[:, 1:]
        targets = {name: int(weights[where == i].sum().item()) for i, name in enumerate(self.rows.sources)}
        return {"documents": len(self.ids), "tokens": int(sum(self.tokens_by_source.values())),
                "sources": dict(sorted(self.tokens_by_source.items())), "targets": targets}


def shares(available: dict[str, int], budget: int, allocation: str) -> dict[str, int]:
    """Tokens to draw per source: `equal` or `proportional` to what each holds, capped by what it holds,
    with what a small source cannot use handed on to the others (water-filling)."""
    left = dict(available)
    out = {s: 0 for s in available}
    remaining = budget
    while left and remaining > 0:
        total = sum(left.values())
        weight = {s: (1 / len(left) if allocation == "equal" else n / total) for s, n in left.items()}
        full = {s for s, n in left.items() if n <= remaining * weight[s]}
        if not full:
            for s in left:
                out[s] += int(round(remaining * weight[s]))
            break
        for s in full:          # these sources are used up: take all they hold, re-share the rest
            out[s] += left.pop(s)
        remaining = budget - sum(out.values())
    return out


def stratified_sample(ids: list[str], sources: list[str], lengths: list[int], budget: int,
                      allocation: str = "proportional", seed: int = 0) -> list[int]:
    """Indices of the documents drawn: per source, documents in seeded-hash order until its share
    (`shares`) is reached; at least one document per source. Sorted by index."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        by_source[s].append(i)
    available = {s: int(sum(lengths[i] for i in idx)) for s, idx in by_source.items()}
    want = shares(available, budget, allocation)
    order = id_hashes(ids, seed, purpose=HELDOUT_SAMPLE).tolist()
    chosen = []
    for s, idx in by_source.items():
        idx.sort(key=order.__getitem__)
        taken = 0
        for i in idx:
            if taken >= want[s] and taken > 0:
                break
            chosen.append(i)
            taken += lengths[i]
    return sorted(chosen)


def build_heldout(tokenized: pa.Table, sources: list[str], seq_len: int, budget: int, allocation: str,
                  seed: int = 0) -> HeldoutSample:
    """Draw the stratified sample from tokenized candidates (`id`, `text`, `input_ids`, `n_tokens`) and pack
    it, each position carrying its document's source."""
    ids = tokenized.column("id").to_pylist()
    lengths = tokenized.column("n_tokens").to_numpy().tolist()
    chosen = stratified_sample(ids, sources, lengths, budget, allocation, seed)
    picked = tokenized.take(pa.array(chosen, pa.int64()))
    by_id = {ids[i]: sources[i] for i in chosen}
    tokens: dict[str, int] = defaultdict(int)
    for i in chosen:
        tokens[sources[i]] += lengths[i]
    texts = picked.column("text").to_pylist() if "text" in picked.column_names else []
    return HeldoutSample([ids[i] for i in chosen], by_id, dict(tokens), pack_tokenized(picked, seq_len, sources=by_id),
                         texts)
