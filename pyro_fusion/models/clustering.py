"""
The one k-means of pyro_fusion: starting values of the GMM, HMM and LDA fits and the k-means
baseline of the mocap application.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import Tensor

__all__ = ["kmeans"]


def kmeans(
    data: Tensor, num_clusters: int, seed: int = 0, restarts: int = 1, normalize: bool = False
) -> Tuple[Tensor, Tensor]:
    """
    k-means (k-means++ seeding, Lloyd iterations; :func:`scipy.cluster.vq.kmeans2`), the best of
    ``restarts`` runs by within-cluster sum of squares.

    With ``normalize=True`` the points are first scaled to unit length (spherical k-means:
    clusters by direction, as for word-frequency vectors); the centres are then those of the
    normalised points.

    Example::

        >>> centres, labels = kmeans(torch.randn(100, 2), 3)
        >>> centres.shape, labels.shape
        (torch.Size([3, 2]), torch.Size([100]))

    :param Tensor data: ``[N, D]`` points.
    :param int num_clusters: number of centres ``k``.
    :param int seed: random seed.
    :param int restarts: number of independent runs.
    :param bool normalize: cluster the points scaled to unit length.
    :return: ``(centres [k, D], labels [N])``.
    """
    if not 1 <= num_clusters <= len(data):
        raise ValueError(f"kmeans: need 1 <= num_clusters <= {len(data)} points, got {num_clusters}")
    if restarts < 1:
        raise ValueError(f"kmeans: restarts must be >= 1, got {restarts}")
    points = data.detach().double()
    if normalize:
        points = points / points.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    points = points.numpy()
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        centres, labels = kmeans2(points, num_clusters, minit="++", seed=rng)
        inertia = ((points - centres[labels]) ** 2).sum()
        if best is None or inertia < best[0]:
            best = (inertia, centres, labels)
    _, centres, labels = best
    return torch.as_tensor(centres, dtype=data.dtype), torch.as_tensor(labels, dtype=torch.long)
