"""Greedy (k-center) coreset subsampling of the memory bank, on a random projection.

PatchCore keeps a fraction of the good patches that covers all of them best: each new one is
the patch farthest from those already kept (Sener & Savarese's k-center greedy). Distances are
measured after a Gaussian random projection to ``projection_dim`` channels, which keeps them
within a few percent (Johnson-Lindenstrauss) at a fraction of the cost; the rows kept are the
original, unprojected features. This follows anomalib's ``KCenterGreedy``, which projects with
scikit-learn's ``SparseRandomProjection`` for the same reason.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

DEFAULT_PROJECTION_DIM = 128


def coreset_indices(
    features: torch.Tensor,
    size: int,
    *,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Indices of ``size`` rows of ``features`` chosen by k-center greedy, first one at random.

    Raises:
        ValueError: ``size`` outside 1..rows.
    """
    rows = features.shape[0]
    if not 1 <= size <= rows:
        raise ValueError(f"coreset size {size} must be between 1 and the {rows} patches available")
    generator = torch.Generator().manual_seed(seed)
    features = features.float()
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        features = features @ projection
    # Squared distances as |f|^2 - 2 f.c + |c|^2: one matrix-vector product per step reads the
    # features once, where (features - center) would also write a copy of them every step. The
    # product runs on a channels-first copy (features.T contiguous, seen through .t()): BLAS's
    # transposed gemv walks it with unit stride, 3-4x faster on a CPU than the row-major one,
    # and about 12x faster than the subtraction (125k x 128 patches, one core: 3.8 vs 47 ms a step).
    squared_norms = (features * features).sum(dim=1)
    features_t = features.t().contiguous().t()
    selected = torch.empty(size, dtype=torch.long)
    selected[0] = torch.randint(rows, (1,), generator=generator)
    min_distances = torch.full((rows,), float("inf"))
    distances = torch.empty(rows)
    for step in tqdm(range(1, size), desc="coreset", unit="patch", disable=not progress, mininterval=1.0):
        index = selected[step - 1]
        torch.mv(features_t, features[index], out=distances)
        distances.mul_(-2.0).add_(squared_norms).add_(squared_norms[index])
        torch.minimum(min_distances, distances, out=min_distances)
        min_distances[index] = -1.0  # rounding can leave a chosen row slightly above 0; never pick it again
        selected[step] = torch.argmax(min_distances)
    return selected


def coreset(features: torch.Tensor, ratio: float, *, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """The rows of ``features`` kept for a ``ratio`` (0, 1] coreset; ratio 1 keeps them all.

    Raises:
        ValueError: a ratio outside (0, 1].
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"--coreset_ratio {ratio} must be in (0, 1]; PatchCore uses 0.1 (keep 10% of the patches)")
    if ratio == 1.0:
        return features.clone()
    size = max(1, round(features.shape[0] * ratio))
    return features[coreset_indices(features, size, seed=seed, progress=progress)].clone()
