"""Copies of held-out documents under other ids: found by shared 13-grams and kept out of every arm.

Held-out sets are chosen by id, but raw web repeats pages under new URLs and Usenet quotes whole
posts, so a held-out document can train under another id. Each held-out set is indexed with
pipeline/ngrams.py (13 normalised words; a held-out document shorter than that is not indexed: a
short page's words are boilerplate more often than a copy) and every training document the id rule
kept is checked against it; one that shares an n-gram is removed from that arm. Packed arms are
checked on their documents' decoded tokens. The same text is checked once, whichever arms hold it.

A held-out n-gram that more than `max_ngram_docs` distinct training texts contain is common phrasing
or page furniture (a licence line, a forum footer), not a copy, and is ignored (GPT-3's rule, Brown et
al. 2020, App. C: 13-grams matching more than 10 training documents). Without it, on the raw web
sample 20.6% of the training documents shared a 13-gram with the 5% pool slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xxhash

from winnow.pipeline.ngrams import NGRAM, NgramIndex, ngram_hashes, word_hashes, words
from winnow.proxy.arms import Arm
from winnow.tokenize.pack import unpack


@dataclass
class Overlap:
    by_arm: dict[str, set[str]] = field(default_factory=dict)                # arm -> ids removed (any set)
    by_set: dict[str, dict[str, set[str]]] = field(default_factory=dict)     # set -> arm -> ids removed
    common: dict[str, int] = field(default_factory=dict)      # set -> n-grams ignored as common phrasing

    def removed_from_training(self, heldout_set: str) -> int:
        """Distinct training documents (over all arms) removed for sharing an n-gram with this set."""
        return len(set().union(*self.by_set.get(heldout_set, {}).values()))

    def removed_by_arm(self, heldout_set: str) -> dict[str, int]:
        return {arm: len(ids) for arm, ids in self.by_set.get(heldout_set, {}).items()}


def arm_documents(arm: Arm, tokenizer) -> tuple[list[str], list[str]]:
    """(ids, texts) an arm trains on: its documents, or a packed arm's documents decoded from their tokens."""
    if not arm.packed:
        return arm.ids, arm.texts
    docs = unpack(arm.table)
    ids = list(docs)
    texts = tokenizer.tokenizer.decode_batch([docs[d].tolist() for d in ids], skip_special_tokens=True)
    return ids, texts


MAX_NGRAM_DOCS = 10


def heldout_overlap(arms: dict[str, Arm], heldout_texts: dict[str, list[str]], tokenizer, held,
                    n: int = NGRAM, max_ngram_docs: int = MAX_NGRAM_DOCS) -> Overlap:
    """Per held-out set and arm, the documents `held` (the id rule) keeps that share an n-gram with the
    set, n-grams found in more than `max_ngram_docs` distinct training texts left out."""
    indexes = {name: NgramIndex.build(texts, n=n, min_words=None) for name, texts in heldout_texts.items()}
    empty = np.zeros(0, np.uint64)
    shared: dict[int, dict[str, np.ndarray]] = {}   # text hash -> set -> the set's n-grams it holds
    documents: list[tuple[str, str, int]] = []        # (arm, id, text hash) of every document the id rule lets train
    for arm_name, arm in arms.items():
        for doc_id, text in zip(*arm_documents(arm, tokenizer), strict=True):
            if held(doc_id):
                continue
            key = xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
            documents.append((arm_name, doc_id, key))
            if key not in shared:
                grams = np.unique(ngram_hashes(word_hashes(words(text)), n))
                # a binary search in the set's sorted n-grams: np.isin sorted them again for every training
                # document (21 ms a document against 0.05 ms, most of an ablation eval's start-up)
                shared[key] = {name: grams[index.positions(grams, n) >= 0] for name, index in indexes.items()}
    result = Overlap(by_arm={arm: set() for arm in arms},
                     by_set={name: {arm: set() for arm in arms} for name in indexes})
    for name in indexes:
        found = [hits[name] for hits in shared.values() if len(hits[name])]
        values, counts = np.unique(np.concatenate(found), return_counts=True) if found else (empty, empty)
        common = values[counts > max_ngram_docs]
        result.common[name] = len(common)
        copies = {key for key, hits in shared.items() if len(np.setdiff1d(hits[name], common, assume_unique=True))}
        for arm_name, doc_id, key in documents:
            if key in copies:
                result.by_set[name][arm_name].add(doc_id)
                result.by_arm[arm_name].add(doc_id)
    return result


def downstream_overlap(arms: dict[str, Arm], tasks: dict[str, list[list[str]]], tokenizer, held,
                       n: int = NGRAM) -> dict[str, dict[str, dict]]:
    """Per downstream task and arm, the training documents that hold one of the task's scored items
    (a value of 13+ words by a shared n-gram, one of 8-12 words whole: the `decontaminate` stage's
    rule, from the same module) and which items: {task: {arm: {documents, items, leaked_items}}}.
    Reported, not removed: the arm is what curation made, and this says how far to trust its accuracy."""
    indexes = {}
    for task, items in tasks.items():
        owner = [i for i, values in enumerate(items) for _ in values]
        indexes[task] = (NgramIndex.build([v for values in items for v in values], n=n), owner)
    seen: dict[int, dict[str, set[int]]] = {}
    out = {task: {} for task in tasks}
    for arm_name, arm in arms.items():
        found = {task: ([], set()) for task in tasks}
        for doc_id, text in zip(*arm_documents(arm, tokenizer), strict=True):
            if held(doc_id):
                continue
            key = xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
            if key not in seen:
                hashed = word_hashes(words(text))
                seen[key] = {task: {owner[v] for v in index.matches_words(hashed)}
                             for task, (index, owner) in indexes.items()}
            for task, items in seen[key].items():
                if items:
                    found[task][0].append(doc_id)
                    found[task][1].update(items)
        for task, (docs, items) in found.items():
            out[task][arm_name] = {"documents": len(docs), "items": len(items), "leaked_items": sorted(items)[:50]}
    return out
