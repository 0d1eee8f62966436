"""Rectangular assignment with an option to open a new column at a price."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

#: marks a row that opens a new column in :func:`assign_rows`
NEW = -1


def assign_rows(cost: Tensor, price: Optional[float] = None) -> Tensor:
    """
    Match each row to a distinct column minimising the total cost, where with a ``price``
    each row may instead open a new column at that cost (columns ``[existing | one new slot
    per row]``, solved exactly by :func:`scipy.optimize.linear_sum_assignment`).

    Columns no row prefers to a new slot, rows that prefer a new slot to every column,
    and rows whose only cheaper column is cheaper for no other row (they take it) are
    left out of the dense problem; the result is the same optimum.

    Example::

        >>> assign_rows(torch.tensor([[0.0, 5.0], [1.0, 0.5], [9.0, 9.0]]), price=2.0)
        tensor([ 0,  1, -1])

    :param Tensor cost: ``[L, K]`` costs, ``K >= L`` when ``price`` is None.
    :param float price: cost of opening a new column, or None for a plain assignment.
    :returns: LongTensor ``[L]`` of column indices, :data:`NEW` for rows that open one.
    """
    num_rows, num_cols = cost.shape
    result = torch.full((num_rows,), NEW, dtype=torch.long)
    if price is None:
        if num_cols < num_rows:
            raise ValueError(f"{num_rows} rows cannot be matched to {num_cols} distinct columns")
        rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
        result[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
        return result
    if num_cols == 0:
        return result
    cheaper = cost < price
    row_count, col_count = cheaper.sum(1), cheaper.sum(0)
    # a row whose only cheaper column is cheaper for no other row is a component of its own
    # in the graph of cheap edges: that edge is its optimum, no dense problem needed
    only_col = cheaper.long().argmax(1)
    isolated = (row_count == 1) & (col_count[only_col] == 1)
    result[isolated] = only_col[isolated]
    col_count = col_count.index_put((only_col[isolated],), torch.zeros((), dtype=col_count.dtype))
    row_idx = ((row_count > 0) & ~isolated).nonzero().squeeze(-1)
    col_idx = (col_count > 0).nonzero().squeeze(-1)
    if row_idx.numel() == 0:
        return result
    sub = cost[row_idx][:, col_idx].detach().cpu().double().numpy()
    padded = np.concatenate([sub, np.full((sub.shape[0], sub.shape[0]), float(price))], 1)
    rows, cols = linear_sum_assignment(padded)
    matched = cols < sub.shape[1]
    result[row_idx[torch.as_tensor(rows[matched])]] = col_idx[torch.as_tensor(cols[matched])]
    return result
