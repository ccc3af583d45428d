"""Spherical k-means for semantic dedup: faiss where it runs on this device, torch on CUDA otherwise.

Backends (`auto` picks the first that applies):
- `faiss` on a GPU when the faiss build sees one (`faiss.get_num_gpus() > 0`);
- `torch` when CUDA is present but faiss has no GPU (faiss-gpu wheels do not fit every CUDA image:
  ../shared/GPU.md): L2-normalised rows, assignment by argmax of X @ C^T in row chunks, sums by
  `index_add_`, centroids renormalised, seeds by k-means++; an empty cluster takes the point
  farthest from its centroid;
- `faiss` on the CPU otherwise (faiss-cpu).
faiss is optional: `auto` without it installed uses torch (CUDA or CPU) and logs one line saying so;
`kmeans: faiss` without it is an error naming the package to install.
All return the centroids (k, d), unit length. The torch path also runs on the CPU (tests check it there).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

CHUNK = 65_536  # rows whose similarities to all centroids are computed at once


def faiss_kmeans(x: np.ndarray, k: int, niter: int, seed: int, gpu: bool = False) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, spherical=True, seed=seed, verbose=False, gpu=gpu,
                      min_points_per_centroid=1, max_points_per_centroid=100_000)
    km.train(np.ascontiguousarray(x, np.float32))
    return km.centroids


def torch_kmeans(x: np.ndarray, k: int, niter: int, seed: int, device: str = "cuda") -> np.ndarray:
    """Spherical k-means (Lloyd) in torch, fp32: k-means is a small part of semantic dedup next to
    embedding, so it does not take TF32's rounding for its speed."""
    import torch

    data = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
    data = torch.nn.functional.normalize(data, dim=1)
    n = data.shape[0]
    centroids = _plus_plus_init(data, k, seed)
    with torch.no_grad():
        for _ in range(niter):
            best = torch.empty(n, dtype=torch.long, device=device)
            best_sim = torch.empty(n, dtype=data.dtype, device=device)
            for a in range(0, n, CHUNK):
                sims = data[a:a + CHUNK] @ centroids.T
                best_sim[a:a + CHUNK], best[a:a + CHUNK] = sims.max(dim=1)
            sums = torch.zeros_like(centroids).index_add_(0, best, data)
            counts = torch.bincount(best, minlength=k)
            empty = torch.nonzero(counts == 0).flatten()
            if len(empty):  # re-seed empty clusters with the worst-fitting points
                far = torch.topk(-best_sim, len(empty)).indices
                sums[empty] = data[far]
            centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids.float().cpu().numpy()


def _plus_plus_init(data, k: int, seed: int):
    """k-means++ seeding on the sphere (distance 1 - cosine), on at most 100k sampled rows: plain
    random seeds leave Lloyd's iterations in merged-cluster optima often enough to matter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = data.shape[0]
    pool = data[torch.randperm(n, generator=g)[:100_000].to(data.device)] if n > 100_000 else data
    chosen = [int(torch.randint(len(pool), (1,), generator=g))]
    gap = (1 - pool @ pool[chosen[0]]).clamp_(min=0)
    for _ in range(1, k):
        weights = gap.double().cpu()
        i = int(torch.multinomial(weights, 1, generator=g)) if weights.sum() > 0 else \
            int(torch.randint(len(pool), (1,), generator=g))
        chosen.append(i)
        gap = torch.minimum(gap, (1 - pool @ pool[i]).clamp_(min=0))
    return pool[chosen].clone()


_told_no_faiss = False  # the fallback is logged once per process, not once per k-means call


def _import_faiss():
    """The faiss module, or None when it is not installed (it is an optional dependency)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def pick_backend(backend: str) -> str:
    """The backend `spherical_kmeans` uses for `backend` (auto | faiss | faiss-gpu | torch)."""
    global _told_no_faiss
    if backend in ("faiss", "faiss-gpu"):
        if _import_faiss() is None:
            raise ImportError(f"kmeans: {backend} needs the faiss package, which is not installed: "
                              "`pip install faiss-cpu` (or set kmeans: torch, or auto)")
        return backend
    if backend != "auto":
        return backend
    faiss = _import_faiss()  # imported lazily: a missing faiss must not break `auto`
    if faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        return "faiss-gpu"
    import torch

    if torch.cuda.is_available():
        return "torch"
    if faiss is None:
        if not _told_no_faiss:
            log.warning("faiss is not installed: k-means runs in torch on the CPU (pip install faiss-cpu for faiss)")
            _told_no_faiss = True
        return "torch"
    return "faiss"


def spherical_kmeans(x: np.ndarray, k: int, niter: int, seed: int, backend: str = "auto") -> tuple[np.ndarray, str]:
    """Unit-length centroids (k, d) of the rows of `x`, and the backend that computed them."""
    k = max(1, min(k, len(x)))
    name = pick_backend(backend)
    if name == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch_kmeans(x, k, niter, seed, device), name
    return faiss_kmeans(x, k, niter, seed, gpu=name == "faiss-gpu"), name
