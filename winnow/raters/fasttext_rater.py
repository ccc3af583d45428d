"""DCLM-style fastText quality classifier: train on positives vs. pool negatives, score P(hq).

Recipe (Li et al. 2024, DCLM-Baseline; ALGORITHMS.md section 5): one example per line with its
newlines replaced by spaces, labels `__label__hq` / `__label__cc`, `train_supervised` with word
bigrams (`wordNgrams=2`) and fastText's other defaults (lr 0.1, dim 100, ws 5, epoch 5, minCount 1).
One change for small local positive sets: training lines are passages of <= 100 words, not whole
documents (see `train_fasttext`); scoring is per whole document, as in DCLM.
The score is P(hq): the top label's probability, or one minus it when the top label is `cc`.
fastText predicts on one line only, so texts are flattened before predicting too.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np

from winnow.flops import fasttext_flops
from winnow.raters.scorer import Scorer, cached, file_key

log = logging.getLogger(__name__)
HQ, CC = "__label__hq", "__label__cc"
DCLM_PARAMS = {"wordNgrams": 2, "lr": 0.1, "dim": 100, "ws": 5, "epoch": 5, "minCount": 1}


def flatten(text: str) -> str:
    return " ".join(text.split())


def passages(texts: list[str], words: int) -> list[str]:
    """Each text flattened and cut into pieces of at most `words` words (0: whole texts)."""
    if words <= 0:
        return [flatten(t) for t in texts]
    out = []
    for t in texts:
        w = t.split()
        out.extend(" ".join(w[i:i + words]) for i in range(0, len(w), words))
    return out


def train_fasttext(positives: list[str], negatives: list[str], path: str, seed: int = 0, passage_words: int = 100,
                   **params) -> str:
    """Train and save the classifier at `path`; returns `path`. One thread, so a seed gives the same model.

    Training examples are passages of at most `passage_words` words. fastText makes one SGD update
    per line: DCLM's ~200k short positives give plenty, but a few thousand long documents (books,
    articles) as whole lines underfit at 5 epochs (bench/LOG.md: held-out AUC 0.951 whole, 0.999 in
    passages of 50-200 words; the same tokens are read either way). 0 trains on whole documents.

    fastText sometimes aborts with "Encountered NaN" (CI saw it twice, three times in a row with
    the lr halved each time, on data that trains cleanly here, inside a test process that had loaded
    torch and transformers before). So a NaN is retried in a fresh interpreter, with another line
    order and seed and half the learning rate, up to `NAN_RETRIES` times; the model saved is the first
    that trains, and the settings it used are logged."""
    lines = [f"{HQ} {t}" for t in passages(positives, passage_words)] + \
        [f"{CC} {t}" for t in passages(negatives, passage_words)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    settings = {**DCLM_PARAMS, **params}
    for attempt in range(NAN_RETRIES + 1):
        order = np.random.default_rng(seed + attempt).permutation(len(lines))  # fastText reads in order
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=os.path.dirname(os.path.abspath(path)),
                                         delete=False, encoding="utf-8") as f:
            f.write("\n".join(lines[i] for i in order) + "\n")
            train_file = f.name
        try:
            _train_file(train_file, path, seed + attempt, settings, fresh_process=attempt > 0)
            if attempt:
                log.warning("fastText trained after %d NaN abort(s): seed %d, lr %g", attempt, seed + attempt,
                            settings["lr"])
            return path
        except RuntimeError as e:
            if "NaN" not in str(e) or attempt == NAN_RETRIES:
                raise
            settings["lr"] = settings.get("lr", 0.1) / 2
        finally:
            os.unlink(train_file)
    return path


NAN_RETRIES = 3


def _train_file(train_file: str, path: str, seed: int, settings: dict, fresh_process: bool) -> None:
    """fastText on one prepared file, saved atomically at `path`; in a new interpreter when asked."""
    tmp = f"{path}.tmp"
    if not fresh_process:
        import fasttext

        model = fasttext.train_supervised(input=train_file, seed=seed, thread=1, verbose=0, **settings)
        model.save_model(tmp)
    else:
        code = ("import json, sys, fasttext\n"
                "a = json.loads(sys.argv[1])\n"
                "fasttext.train_supervised(input=a['input'], seed=a['seed'], thread=1, verbose=0,"
                " **a['settings']).save_model(a['out'])\n")
        args = json.dumps({"input": train_file, "seed": seed, "settings": settings, "out": tmp})
        done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                               f"fastText training exited with {done.returncode}")
    os.replace(tmp, path)


class FastTextScorer(Scorer):
    """P(hq) of each text under a trained fastText model file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def model(self):
        import fasttext

        return cached(("fasttext", *file_key(self.path)), lambda: fasttext.load_model(self.path))

    def score(self, texts: list[str]) -> np.ndarray:
        model = self.model()
        lines = [flatten(t) for t in texts]
        labels, probs = model.predict(lines, k=1)
        top = np.array([p[0] if len(p) else 0.0 for p in probs], np.float64)
        is_hq = np.array([bool(lab) and lab[0] == HQ for lab in labels])
        words = sum(len(line.split(" ")) for line in lines)
        self.flops += fasttext_flops(model.get_dimension(), words, len(lines))
        return np.clip(np.where(is_hq, top, 1.0 - top), 0.0, 1.0)  # fastText can say 1.00001
