"""
The k-means of pyro_fusion: starting values of the GMM, HMM and LDA fits and the k-means
baseline of the mocap application. :func:`kmeans` clusters dense points; :func:`spherical_kmeans`
clusters sparse rows (documents) by direction, on their nonzero entries.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import Tensor

from ..sparse_counts import SparseCounts

__all__ = ["kmeans", "spherical_kmeans"]


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


def spherical_kmeans(points: SparseCounts, num_clusters: int, seed: int = 0, num_iters: int = 10) -> Tensor:
    """
    Spherical k-means of sparse nonnegative rows (e.g. documents' square-root word frequencies) on their
    nonzero entries: the rows are scaled to unit length, the centres are seeded k-means++ style (each next
    centre a row drawn with probability proportional to its squared distance to the nearest centre so far),
    and Lloyd iterations assign every row to the centre of largest cosine similarity (an empty cluster keeps
    its centre). Work per iteration is ``O(nnz k)``, where the dense :func:`kmeans` takes ``O(N V k)`` (on AP,
    1797 documents by 10,402 words: 2.0 s for 10 clusters, here about 0.1 s).

    Example::

        >>> rows = SparseCounts.from_dense(torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.1, 0.0], [0.0, 0.0, 3.0]]))
        >>> labels = spherical_kmeans(rows, 2)
        >>> bool(labels[0] == labels[1] != labels[2])
        True

    :param SparseCounts points: ``N`` rows over ``V`` columns.
    :param int num_clusters: ``k``, at most ``N``.
    :param int seed: random seed of the starting centres.
    :param int num_iters: Lloyd iterations.
    :return: the cluster of every row, ``LongTensor [N]``.
    """
    if not 1 <= num_clusters <= len(points):
        raise ValueError(f"spherical_kmeans: need 1 <= num_clusters <= {len(points)} rows, got {num_clusters}")
    norm = points.with_count(points.count.square()).lengths().sqrt().clamp_min(1e-30)
    unit = points.with_count(points.count / norm[points.doc])
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(points), (), generator=generator))]
    similarity = unit.matmul(unit.rows(torch.tensor(chosen)).to_dense().T.contiguous()).squeeze(-1)
    for _ in range(1, num_clusters):
        distance = (2.0 - 2.0 * similarity).clamp_min(0.0).double()  # squared, between unit vectors
        if float(distance.sum()) > 0:
            chosen.append(int(torch.multinomial(distance, 1, generator=generator)))
        else:  # every row is a chosen centre's direction: any other row
            chosen.append(int(torch.randint(len(points), (), generator=generator)))
        new = unit.matmul(unit.rows(torch.tensor(chosen[-1:])).to_dense().T.contiguous()).squeeze(-1)
        similarity = torch.maximum(similarity, new)
    centres = unit.rows(torch.tensor(chosen)).to_dense()
    unit_t = unit.transpose()
    for _ in range(num_iters):
        labels = unit.matmul(centres.T.contiguous()).argmax(-1)
        summed = unit_t.matmul(torch.nn.functional.one_hot(labels, num_clusters).to(centres.dtype)).T
        length = summed.norm(dim=-1, keepdim=True)
        centres = torch.where(length > 0, summed / length.clamp_min(1e-30), centres)
    return labels
