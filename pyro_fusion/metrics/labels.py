"""
Segmentation metrics: compare two labellings of the same items (e.g. decoded HMM states vs
true behaviours), :func:`best_matching_accuracy` (with the matching itself from
:func:`match_labels`) and :func:`adjusted_rand_index` (definitions: the user guide,
docs/guide/metrics).

Inputs may be NumPy arrays, torch tensors or nested lists; nothing passed in is modified.
Every metric returns a Python ``float``.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import scipy.optimize

from .points import _to_numpy

__all__ = ["adjusted_rand_index", "best_matching_accuracy", "contingency_table", "match_labels"]


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
