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

    :param Tensor cost: ``[L, K]`` costs, ``K >= L`` when ``price`` is None (on any device;
        solved on the CPU).
    :param float price: cost of opening a new column, or None for a plain assignment.
    :returns: LongTensor ``[L]`` of column indices, :data:`NEW` for rows that open one.
    """
    cost = cost.detach().cpu()
    num_rows, num_cols = cost.shape
    result = torch.full((num_rows,), NEW, dtype=torch.long)
    if price is None:
        if num_cols < num_rows:
            raise ValueError(f"{num_rows} rows cannot be matched to {num_cols} distinct columns")
        rows, cols = linear_sum_assignment(cost.double().numpy())
        result[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
        return result
    rows, cols = (cost < price).nonzero(as_tuple=True)
    return assign_edges(num_rows, rows, cols, cost[rows, cols], price)


def assign_edges(num_rows: int, rows: Tensor, cols: Tensor, values: Tensor, price: float) -> Tensor:
    """
    :func:`assign_rows` with a price, from the entries of the cost matrix that may matter:
    ``values[k]`` is the cost of row ``rows[k]`` in column ``cols[k]``, and every entry not
    listed costs at least ``price`` (so a new column is at least as good). Entries of
    ``price`` or more are ignored.

    Example::

        >>> assign_edges(3, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0.0, 0.5]), price=2.0)
        tensor([ 0,  1, -1])

    :returns: LongTensor ``[num_rows]`` of column indices, :data:`NEW` for rows that open one.
    """
    result = torch.full((num_rows,), NEW, dtype=torch.long)
    cheaper = values < price
    rows, cols, values = rows[cheaper].cpu(), cols[cheaper].cpu(), values[cheaper].detach().cpu()
    if rows.numel() == 0:
        return result
    col_ids, col_of = torch.unique(cols, return_inverse=True)
    row_count = torch.bincount(rows, minlength=num_rows)
    col_count = torch.bincount(col_of, minlength=col_ids.numel())
    # a row whose only cheaper column is cheaper for no other row is a component of its own
    # in the graph of cheap edges: that edge is its optimum, no dense problem needed
    isolated = (row_count[rows] == 1) & (col_count[col_of] == 1)
    result[rows[isolated]] = cols[isolated]
    rows, col_of, values = rows[~isolated], col_of[~isolated], values[~isolated]
    if rows.numel() == 0:
        return result
    row_ids, row_of = torch.unique(rows, return_inverse=True)
    sub_ids, sub_of = torch.unique(col_of, return_inverse=True)
    # entries not listed cost at least the price: any value above it is never chosen
    sub = torch.full((row_ids.numel(), sub_ids.numel()), 2.0 * abs(float(price)) + 1.0, dtype=torch.float64)
    sub[row_of, sub_of] = values.double()
    padded = np.concatenate([sub.numpy(), np.full((sub.shape[0], sub.shape[0]), float(price))], 1)
    matched_rows, matched_cols = linear_sum_assignment(padded)
    matched = matched_cols < sub.shape[1]
    result[row_ids[torch.as_tensor(matched_rows[matched])]] = col_ids[sub_ids[torch.as_tensor(matched_cols[matched])]]
    return result
