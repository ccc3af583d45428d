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
import os
import subprocess
import sys

import numpy as np

from winnow.flops import fasttext_flops
from winnow.flops import fasttext_training_flops as fasttext_training_flops_of
from winnow.pipeline.shards import temp_path
from winnow.raters.scorer import Scorer, cached, file_key

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
    """Train and save the classifier at `path`; returns `path`. A seed gives the same model in any process.

    Training examples are passages of at most `passage_words` words. fastText makes one SGD update
    per line: DCLM's ~200k short positives give plenty, but a few thousand long documents (books,
    articles) as whole lines underfit at 5 epochs (bench/LOG.md: held-out AUC 0.951 whole, 0.999 in
    passages of 50-200 words; the same tokens are read either way). 0 trains on whole documents.
    Lines are shuffled with `seed` because fastText reads them in file order."""
    lines = [f"{HQ} {t}" for t in passages(positives, passage_words)] + \
        [f"{CC} {t}" for t in passages(negatives, passage_words)]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(lines))
    train_file = temp_path(f"{path}.train.txt")   # a killed run leaves a name the engine sweeps away
    train_file.write_text("\n".join(lines[i] for i in order) + "\n", encoding="utf-8")
    try:
        _train_file(str(train_file), path, seed, {**DCLM_PARAMS, **params})
    finally:
        train_file.unlink(missing_ok=True)
    return path


def fasttext_training_flops(texts: list[str], **params) -> float:
    """Training FLOPs of `train_fasttext` on `texts` (positives and negatives) with DCLM's settings
    overridden by `params` (winnow.flops.fasttext_training_flops)."""
    args = {**DCLM_PARAMS, **params}
    return fasttext_training_flops_of(args["dim"], sum(len(t.split()) for t in texts), args["epoch"])


# fastText 0.9.2 with thread=1 writes its random init into only the first tenth of the input matrix
# (DenseMatrix::uniform splits the matrix into 10 blocks, one per thread); the rest is whatever
# malloc returns. Fresh pages are zero, but memory reused inside a long-lived worker holds old
# bytes: the model then depends on the process's history (results differ between runs, and CI saw
# "Encountered NaN" from garbage floats). Training therefore runs in its own interpreter with glibc
# told to zero every allocation (MALLOC_PERTURB_=255 fills with 255 ^ 0xff); bench/LOG.md has the
# reproduction. Elsewhere than glibc the fresh interpreter alone gives the zero pages.
_ZEROED_MALLOC = {"MALLOC_PERTURB_": "255"}
_TRAIN_CODE = ("import json, sys, fasttext\n"
               "a = json.loads(sys.argv[1])\n"
               "fasttext.train_supervised(input=a['input'], seed=a['seed'], thread=1, verbose=0,"
               " **a['settings']).save_model(a['out'])\n")


def _train_file(train_file: str, path: str, seed: int, settings: dict) -> None:
    """fastText on one prepared file in a new interpreter, saved atomically at `path`."""
    tmp = str(temp_path(path))
    env = {**os.environ, **_ZEROED_MALLOC}
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.perturb")]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, "glibc.malloc.perturb=255"])  # outranks the variable
    args = json.dumps({"input": train_file, "seed": seed, "settings": settings, "out": tmp})
    done = subprocess.run([sys.executable, "-c", _TRAIN_CODE, args], capture_output=True, text=True, env=env)
    if done.returncode:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise RuntimeError(f"fastText training for {path} failed: {last}")
    os.replace(tmp, path)


class FastTextScorer(Scorer):
    """P(hq) of each text under a trained fastText model file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def model(self):
        import fasttext

        from winnow.models.loading import resolve_model
        from winnow.pipeline import storage

        # a model on an object store is fetched once into the local cache, on the worker that loads it
        path = resolve_model(self.path) if storage.is_url(self.path) else self.path
        return cached(("fasttext", *file_key(path)), lambda: fasttext.load_model(path))

    def score(self, texts: list[str]) -> np.ndarray:
        model = self.model()
        lines = [flatten(t) for t in texts]
        labels, probs = model.predict(lines, k=1)
        top = np.array([p[0] if len(p) else 0.0 for p in probs], np.float64)
        is_hq = np.array([bool(lab) and lab[0] == HQ for lab in labels])
        words = sum(len(line.split(" ")) for line in lines)
        self.flops += fasttext_flops(model.get_dimension(), words, len(lines))
        return np.clip(np.where(is_hq, top, 1.0 - top), 0.0, 1.0)  # fastText can say 1.00001
