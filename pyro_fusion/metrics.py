"""
Evaluation metrics shared by the tests, benchmarks and the main job (DESIGN §6).

Point-set metrics compare sets of parameter vectors (e.g. fused vs true component means):
:func:`hausdorff` and :func:`ot_distance`. Segmentation metrics compare two labellings of
the same frames (e.g. decoded HMM states vs true behaviours): :func:`best_matching_accuracy`
(with the matching itself from :func:`match_labels`) and :func:`adjusted_rand_index`.

Inputs may be NumPy arrays, torch tensors or nested lists; nothing passed in is modified.
Every metric returns a Python ``float``.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import scipy.optimize
import scipy.sparse
import torch

__all__ = [
    "adjusted_rand_index",
    "best_matching_accuracy",
    "contingency_table",
    "hausdorff",
    "match_labels",
    "ot_distance",
]


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


def _as_labels(x: Any, name: str) -> np.ndarray:
    """Converts a labelling to a 1-D NumPy array."""
    labels = np.asarray(_to_numpy(x))
    if labels.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{name}: the labelling is empty")
    return labels


def contingency_table(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Contingency table of two labellings of the same items.

    Example::

        >>> table, pred_labels, true_labels = contingency_table([0, 0, 1], [5, 7, 7])
        >>> table.tolist(), pred_labels.tolist(), true_labels.tolist()
        ([[1, 1], [0, 1]], [0, 1], [5, 7])

    :param pred: predicted labels, shape ``(T,)``; any values, e.g. state indices.
    :param true: true labels, shape ``(T,)``.
    :returns: a tuple ``(table, pred_labels, true_labels)`` where ``table[i, j]`` counts the items
        labelled ``pred_labels[i]`` and ``true_labels[j]``; the label arrays are sorted and unique.
    :raises ValueError: for empty or non-1-D labellings or different lengths.
    """
    pred, true = _as_labels(pred, "pred"), _as_labels(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true have different lengths: {pred.size} vs {true.size}")
    pred_labels, pred_index = np.unique(pred, return_inverse=True)
    true_labels, true_index = np.unique(true, return_inverse=True)
    table = np.zeros((pred_labels.size, true_labels.size), dtype=np.int64)
    np.add.at(table, (pred_index, true_index), 1)
    return table, pred_labels, true_labels


def match_labels(pred: Any, true: Any) -> Dict[Any, Any]:
    """
    Optimal one-to-one matching of predicted labels to true labels: the matching that
    maximises the number of items whose matched predicted label equals their true label
    (Hungarian algorithm on the contingency table). When there are more predicted labels
    than true labels, the extra predicted labels stay unmatched (absent from the result).

    Example::

        >>> match_labels([2, 2, 0, 0, 1], [0, 0, 1, 1, 1])
        {0: 1, 2: 0}

    :param pred: predicted labels, shape ``(T,)``.
    :param true: true labels, shape ``(T,)``.
    :returns: a dict mapping each matched predicted label to its true label.
    :rtype: dict
    """
    table, pred_labels, true_labels = contingency_table(pred, true)
    rows, cols = scipy.optimize.linear_sum_assignment(table, maximize=True)
    return {pred_labels[i].item(): true_labels[j].item() for i, j in zip(rows, cols) if table[i, j] > 0}


def best_matching_accuracy(pred: Any, true: Any) -> float:
    """
    One minus the normalised Hamming distance between the true labels and the predicted labels
    relabelled by :func:`match_labels` (the segmentation score of Fox et al., 2014). Items whose
    predicted label is unmatched count as errors. Invariant to renaming the labels on either side.

    Example::

        >>> best_matching_accuracy([2, 2, 0, 0, 1], [0, 0, 1, 1, 1])
        0.8

    :param pred: predicted labels, shape ``(T,)``.
    :param true: true labels, shape ``(T,)``.
    :returns: the fraction of items labelled correctly under the best matching, in ``[0, 1]``.
    :rtype: float
    """
    table, _, _ = contingency_table(pred, true)
    rows, cols = scipy.optimize.linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def adjusted_rand_index(pred: Any, true: Any) -> float:
    r"""
    Adjusted Rand index (Hubert and Arabie, 1985) of two labellings, computed from their
    contingency table :math:`n_{ij}` with row sums :math:`a_i` and column sums :math:`b_j`:

    .. math:: \mathrm{ARI} = \frac{\sum_{ij} \binom{n_{ij}}{2} - E}{\tfrac12 \big(\sum_i \binom{a_i}{2}
              + \sum_j \binom{b_j}{2}\big) - E}, \qquad
              E = \sum_i \binom{a_i}{2} \sum_j \binom{b_j}{2} \Big/ \binom{n}{2}.

    It is 1 for identical partitions (up to renaming labels), about 0 for independent ones, and
    may be negative. When the denominator vanishes (both labellings put every item in one
    cluster, or every item in its own cluster) the partitions agree and the result is 1.

    Example::

        >>> adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0])
        1.0
        >>> adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1])
        -0.5

    :param pred: predicted labels, shape ``(T,)``.
    :param true: true labels, shape ``(T,)``.
    :returns: the adjusted Rand index, at most 1.
    :rtype: float
    """
    table, _, _ = contingency_table(pred, true)

    def pairs(counts: np.ndarray) -> int:
        return int((counts * (counts - 1) // 2).sum())

    # Exact integer arithmetic: numerator and denominator of the formula above, times 2 * C(n, 2).
    index, total = pairs(table), math.comb(int(table.sum()), 2)
    pred_pairs, true_pairs = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    numerator = 2 * (index * total - pred_pairs * true_pairs)
    denominator = (pred_pairs + true_pairs) * total - 2 * pred_pairs * true_pairs
    if denominator == 0:
        return 1.0
    return numerator / denominator
