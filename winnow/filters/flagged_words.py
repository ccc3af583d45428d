"""The `flagged_words` stage: reject documents whose share of listed words is too high (the C4 /
Data-Juicer rule), with a word list per language.

`lists: {en: path, de: path}` names plain-text files, one word or phrase a line (`#` starts a
comment, blank lines are skipped); no list ships with winnow (their licences vary). A document's
`language` column picks its list (`default_language` where the column is missing or null); a
language without a list is not checked (`flagged_words_ratio` null). The ratio is the share of a
document's words that belong to a listed word or phrase; above `max_ratio` the document is rejected
`flagged_words`. Words are lower-cased runs of letters and digits (an apostrophe joins `don't`);
a phrase is matched on consecutive words, so `x-rated` in a list matches `X rated` and `x-rated`.

CJK: Chinese and Japanese have no spaces between words, so every Han, Hiragana and Katakana
character is one word, in the text and in the list alike; a listed word of several characters is
then a phrase of characters. Ratios there are per character, not per word, so a Chinese or
Japanese list wants its own `max_ratio` (a separate run, or the language column and one list per
language at one threshold). Thai, Lao, Khmer and Burmese (no spaces, not split here) count a whole
run as one word: this rule does not serve them.

The lists are read on the driver when the stage starts, and their content is part of every shard's
input fingerprint: editing a list file reruns the stage, not only editing the config.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from winnow.pipeline.stage import Context, ShardRef, Stage

RATIO_COLUMN = "flagged_words_ratio"
LANGUAGE_COLUMN = "language"
REASON = "flagged_words"
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# one CJK character, or a run of other letters and digits (apostrophes inside a word join it)
WORD = re.compile(rf"[{CJK}]|[^\W_{CJK}]+(?:['’][^\W_{CJK}]+)*")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class WordList:
    """One language's list: single words, and phrases (tuples of words) grouped by length."""

    single: frozenset[str]
    phrases: dict[int, frozenset[tuple[str, ...]]]
    heads: frozenset[str]  # first words of the phrases: only there can a phrase start

    @classmethod
    def parse(cls, lines: list[str]) -> WordList:
        single, phrases = set(), {}
        for line in lines:
            entry = words(line.split("#", 1)[0])
            if len(entry) == 1:
                single.add(entry[0])
            elif entry:
                phrases.setdefault(len(entry), set()).add(tuple(entry))
        return cls(frozenset(single), {n: frozenset(p) for n, p in sorted(phrases.items())},
                   frozenset(p[0] for group in phrases.values() for p in group))

    def __len__(self) -> int:
        return len(self.single) + sum(len(p) for p in self.phrases.values())

    def ratio(self, text: str) -> float:
        """The share of `text`'s words inside a listed word or phrase (0.0 for a text without words)."""
        tokens = words(text)
        if not tokens:
            return 0.0
        flagged = np.fromiter((t in self.single for t in tokens), bool, len(tokens))
        if self.phrases:
            starts = [i for i, t in enumerate(tokens) if t in self.heads]
            for n, listed in self.phrases.items():
                for i in starts:
                    if tuple(tokens[i:i + n]) in listed:
                        flagged[i:i + n] = True
        return float(flagged.sum()) / len(tokens)


class FlaggedWordsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lists: dict[str, str] = Field(description="language code -> word-list file (one word or phrase a line)")
    max_ratio: float = Field(0.01, ge=0.0, le=1.0, description="a document above this share of listed words "
                             "is rejected")
    default_language: str = Field("en", description="the list for rows without a language column or value")
    language_column: str = Field(LANGUAGE_COLUMN, description="the column that names each row's language")

    @field_validator("lists")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("lists: name at least one word-list file, e.g. {en: lists/en.txt}")
        return value


def read_lists(paths: dict[str, str]) -> dict[str, WordList]:
    """Every list file parsed; a missing or empty one is an error that names it."""
    out = {}
    for lang, path in paths.items():
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"flagged_words: the {lang!r} word list {path} does not exist")
        parsed = WordList.parse(file.read_text(encoding="utf-8").splitlines())
        if not len(parsed):
            raise ValueError(f"flagged_words: the {lang!r} word list {path} holds no words")
        out[lang] = parsed
    return out


def lists_digest(paths: dict[str, str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for lang in sorted(paths):
        h.update(lang.encode() + b"\0" + Path(paths[lang]).read_bytes() + b"\0")
    return h.hexdigest()


class FlaggedWordsStage(Stage):
    name = "flagged_words"
    Params = FlaggedWordsParams

    def inputs(self, upstream: list[ShardRef], ctx: Context) -> list[ShardRef]:
        """The upstream shards, their fingerprints joined with the lists' content (see the module doc)."""
        read_lists(self.params.lists)  # fail before any shard runs
        digest = lists_digest(self.params.lists)
        return [ShardRef(ref.name, ref.path, hashlib.blake2b(f"{ref.fingerprint}:{digest}".encode(),
                                                             digest_size=16).hexdigest(), ref.meta)
                for ref in upstream]

    def fit(self, shards: list[ShardRef], ctx: Context) -> dict[str, WordList]:
        return read_lists(self.params.lists)

    def apply(self, table: pa.Table, state: dict[str, WordList]) -> tuple[pa.Table, pa.Table]:
        p: FlaggedWordsParams = self.params
        texts = table.column("text").to_pylist()
        n = len(texts)
        if p.language_column in table.column_names:
            languages = [lang or p.default_language for lang in table.column(p.language_column).to_pylist()]
        else:
            languages = [p.default_language] * n
        ratios: list[float | None] = []
        for text, lang in zip(texts, languages, strict=True):
            listed = state.get(lang)
            ratios.append(None if listed is None else listed.ratio(text or ""))
        keep = np.array([r is None or r <= p.max_ratio for r in ratios], bool)
        if RATIO_COLUMN in table.column_names:  # an earlier flagged_words stage: the column describes this one
            table = table.drop_columns([RATIO_COLUMN])
        table = table.append_column(RATIO_COLUMN, pa.array(ratios, pa.float32()))
        dropped = np.flatnonzero(~keep)
        rejected = self.reject(table.take(pa.array(dropped, pa.int64())), [REASON] * len(dropped))
        return table.filter(pa.array(keep)), rejected

    def manifest_extra(self, state: dict[str, WordList]) -> dict:
        return {"list_sizes": {lang: len(listed) for lang, listed in state.items()},
                "max_ratio": self.params.max_ratio}
