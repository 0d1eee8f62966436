import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from pyro_fusion.assignment import NEW, assign_edges, assign_rows


def total_cost(cost, match, price):
    return sum(price if m == NEW else float(cost[i, m]) for i, m in enumerate(match.tolist()))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 7),
    cols=st.integers(0, 7),
    price=st.floats(0.05, 3.0),
    sparse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_assign_rows_is_optimal(rows, cols, price, sparse, seed):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2
    if sparse:  # mostly expensive edges: exercises the isolated-edge shortcut
        cost = cost + 5.0 * (torch.rand(rows, cols, generator=gen) < 0.7)
    match = assign_rows(cost, price)
    assigned = match[match != NEW]
    assert len(assigned.unique()) == len(assigned)
    # reference: the dense problem with one new slot per row
    padded = np.concatenate([cost.numpy(), np.full((rows, rows), price)], 1)
    r, c = linear_sum_assignment(padded)
    assert total_cost(cost, match, price) == pytest.approx(padded[r, c].sum(), abs=1e-12)


def test_plain_assignment_needs_enough_columns():
    with pytest.raises(ValueError, match="3 rows cannot be matched to 2 distinct columns"):
        assign_rows(torch.zeros(3, 2))


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(1, 7), price=st.floats(0.05, 3.0), seed=st.integers(0, 2**16))
def test_assign_edges_needs_only_the_cheap_entries(rows, cols, price, seed):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2
    listed = (cost < price) | (torch.rand(rows, cols, generator=gen) < 0.3)  # some costly ones too
    r, c = listed.nonzero(as_tuple=True)
    match = assign_edges(rows, r, c, cost[r, c], price)
    assigned = match[match != NEW]
    assert len(assigned.unique()) == len(assigned)
    assert total_cost(cost, match, price) == pytest.approx(total_cost(cost, assign_rows(cost, price), price), abs=1e-12)


def test_assignment_docstring_examples():
    import doctest

    import pyro_fusion.assignment

    result = doctest.testmod(pyro_fusion.assignment)
    assert result.attempted >= 2 and result.failed == 0
