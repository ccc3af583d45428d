"""Stage names in YAML resolve to classes through this registry, imported only when used.

So `winnow --help` never imports datatrove, torch or faiss, and a misspelt name gets a suggestion.
Third-party stages register with `register("name", "package.module:Class")`.
"""

from __future__ import annotations

import difflib
import importlib

STAGES: dict[str, str] = {
    "extract": "winnow.filters.extract:ExtractStage",
    "language_id": "winnow.filters.language_id:LanguageIdStage",
    "url_filter": "winnow.filters.url_filter:UrlFilterStage",
    "normalize": "winnow.filters.normalize:NormalizeStage",
    "exact_dedup": "winnow.filters.exact_dedup:ExactDedupStage",
    "heuristics": "winnow.filters.heuristics:HeuristicsStage",
    "pii": "winnow.filters.pii:PIIStage",
    "decontaminate": "winnow.filters.decontaminate:DecontaminateStage",
    "flagged_words": "winnow.filters.flagged_words:FlaggedWordsStage",
    "minhash_dedup": "winnow.filters.minhash_dedup:MinhashDedupStage",
    "line_dedup": "winnow.filters.line_dedup:LineDedupStage",
    "semantic_dedup": "winnow.filters.semantic_dedup:SemanticDedupStage",
    "fasttext_quality": "winnow.filters.fasttext_quality:FastTextQualityStage",
    "embedding_quality": "winnow.filters.embedding_quality:EmbeddingQualityStage",
    "perplexity_quality": "winnow.filters.perplexity_quality:PerplexityQualityStage",
    "datarater": "winnow.filters.datarater:DataRaterStage",
    "rephrase": "winnow.synth.rephrase:RephraseStage",
    "prune": "winnow.filters.prune:PruneStage",
    "tokenize": "winnow.tokenize.tokenize_stage:TokenizeStage",
    "pack": "winnow.tokenize.pack:PackStage",
}


def register(name: str, target: str) -> None:
    """Make `name` usable in a config's `stages:` list; `target` is 'module:Class'."""
    STAGES[name] = target


def get_stage_class(name: str) -> type:
    """Import and return the stage class registered as `name`."""
    if name not in STAGES:
        close = difflib.get_close_matches(name, STAGES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown stage {name!r}.{hint} Available: {', '.join(sorted(STAGES))}")
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
