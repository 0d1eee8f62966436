"""
Point-set metrics: compare sets of parameter vectors (e.g. fused vs true component means),
:func:`hausdorff` and :func:`ot_distance` (definitions: the user guide, docs/guide/metrics).

Inputs may be NumPy arrays, torch tensors or nested lists; nothing passed in is modified.
Every metric returns a Python ``float``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse
import torch

__all__ = ["hausdorff", "ot_distance"]


def _to_numpy(x: Any) -> Any:
    """NumPy view of a torch tensor (detached, on the CPU); anything else is returned as is."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _as_points(x: Any, name: str) -> torch.Tensor:
    """Converts a point set to a float64 tensor of shape ``(num_points, dim)``;
    a 1-D input is a set of scalars."""
    try:
        # np.array copies, so the caller's array is never touched.
        points = torch.from_numpy(np.array(_to_numpy(x), dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected an array of real-valued points ({error})") from None
    if points.dim() == 1:
        points = points.unsqueeze(-1)
    if points.dim() != 2:
        raise ValueError(f"{name}: expected a point set of shape (num_points, dim), got shape {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise ValueError(f"{name}: the point set is empty")
    if not torch.isfinite(points).all():
        raise ValueError(f"{name}: the point set contains NaN or infinite values")
    return points


def _pairwise_distances(a: Any, b: Any) -> torch.Tensor:
    """Euclidean distances between the points of ``a`` and ``b``, shape ``(len(a), len(b))``."""
    a, b = _as_points(a, "a"), _as_points(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"point dimensions differ: a has dim {a.shape[-1]}, b has dim {b.shape[-1]}")
    # The direct (non-matmul) kernel is exact: d(x, x) == 0, which the matmul shortcut does not guarantee.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def hausdorff(a: Any, b: Any) -> float:
    r"""
    Hausdorff distance between two finite point sets under the Euclidean norm,

    .. math:: d_H(A, B) = \max\big(\max_{a \in A} \min_{b \in B} \|a - b\|,\;
                                   \max_{b \in B} \min_{a \in A} \|a - b\|\big).

    The sets may have different sizes; the order of points does not matter.

    Example::

        >>> hausdorff([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [4.0, 0.0]])
        3.0

    :param a: point set of shape ``(N, D)`` (a 1-D input is ``N`` scalars).
    :param b: point set of shape ``(M, D)``.
    :returns: the Hausdorff distance.
    :rtype: float
    :raises ValueError: for empty or non-finite sets or mismatched dimensions.
    """
    distances = _pairwise_distances(a, b)
    return max(distances.min(dim=1).values.max().item(), distances.min(dim=0).values.max().item())


def ot_distance(a: Any, b: Any) -> float:
    r"""
    Exact earth mover's (Wasserstein-1) distance between two point sets with uniform weights
    and Euclidean ground cost,

    .. math:: W(A, B) = \min_{P \ge 0,\; P 1 = 1/N,\; P^\top 1 = 1/M} \sum_{ij} P_{ij} \|a_i - b_j\|.

    For ``N == M`` an optimal plan is a permutation, found by
    :func:`scipy.optimize.linear_sum_assignment`; otherwise the transport linear program is
    solved exactly with HiGHS (:func:`scipy.optimize.linprog`), which has ``N * M``
    variables, so keep ``N * M`` moderate (up to about :math:`10^6`).

    Example::

        >>> ot_distance([[0.0], [1.0]], [[0.0], [3.0]])
        1.0
        >>> ot_distance([[0.0], [2.0]], [[1.0]])
        1.0

    :param a: point set of shape ``(N, D)`` (a 1-D input is ``N`` scalars).
    :param b: point set of shape ``(M, D)``.
    :returns: the optimal transport cost.
    :rtype: float
    :raises ValueError: for empty or non-finite sets or mismatched dimensions.
    """
    cost = _pairwise_distances(a, b).numpy()
    n, m = cost.shape
    if n == m:
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        return float(cost[rows, cols].mean())
    # Variables are the plan P flattened row-major; P_ij is variable i * m + j.
    row_sums = scipy.sparse.kron(scipy.sparse.eye(n), np.ones((1, m)))
    col_sums = scipy.sparse.kron(np.ones((1, n)), scipy.sparse.eye(m))
    result = scipy.optimize.linprog(
        cost.ravel(),
        A_eq=scipy.sparse.vstack([row_sums, col_sums]).tocsr(),
        b_eq=np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)]),
        bounds=(0, None),
        method="highs",
    )
    if result.status != 0:
        raise RuntimeError(f"transport linear program failed: {result.message}")
    return float(result.fun)
