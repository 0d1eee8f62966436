"""Sites on a simplex indexed by component (mixture weights, transition matrices).

Their coordinates cannot be permuted in unconstrained space, so they are rebuilt after
matching: each client's expected counts (e.g. expected transition counts, or its posterior
mean scaled by its weight) are scattered into the global index space through its assignment
and summed over clients; entries no client saw get the prior's concentration; then the last
axis is normalised (see the user guide, docs/guide/method, "Sites indexed by component on
a simplex").
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

#: how far the last axis of a simplex value may sum from 1 (float32 rounding over many entries)
SIMPLEX_TOLERANCE = 1e-3


def check_simplex(value: Tensor, what: str) -> Tensor:
    """
    ``value`` if it is a nonnegative tensor of at least one dimension whose last axis sums to 1
    (to :data:`SIMPLEX_TOLERANCE`), else :class:`ValueError` naming ``what``.

    Example::

        >>> check_simplex(torch.tensor([[0.2, 0.8], [0.5, 0.5]]), "site 'weights'")
        tensor([[0.2000, 0.8000],
                [0.5000, 0.5000]])
    """
    if not isinstance(value, Tensor) or value.dim() == 0:
        raise ValueError(f"{what}: a simplex value must be a tensor with a last axis")
    if not bool((value >= 0).all()):
        raise ValueError(f"{what}: negative probabilities (or NaN): not on a simplex")
    total = value.sum(-1)
    if not bool(((total - 1).abs() <= SIMPLEX_TOLERANCE).all()):
        worst = float((total - 1).abs().max())
        raise ValueError(f"{what}: the last axis does not sum to 1 (off by up to {worst:.3g}): not on a simplex")
    return value


def rebuild_simplex(
    values: Sequence[Tensor],
    axes: Sequence[int],
    assignments: Sequence[Tensor],
    weights: Tensor,
    num_global: int,
    concentration: Union[float, Tensor],
) -> Tensor:
    """
    Rebuild a simplex-valued site in the global component space.

    Example::

        >>> w = [torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])]
        >>> a = [torch.tensor([0, 1]), torch.tensor([1, 2])]
        >>> rebuild_simplex(w, [0], a, torch.ones(2), 3, concentration=0.0)
        tensor([0.3500, 0.4000, 0.2500])

    :param list values: per client, the site's value or expected counts (last axis on the
        simplex).
    :param list axes: the (nonnegative) axes of the value indexed by component.
    :param list assignments: per client, local -> global component index.
    :param Tensor weights: client weights the values are scaled by.
    :param int num_global: number of global components.
    :param concentration: the prior's concentration, for entries no client saw (a number
        or a tensor broadcastable to the result), nonnegative and finite.
    :raises ValueError: naming ``simplex_concentration`` if it is negative or not finite, or
        the client whose value does not match its assignment.
    """
    if not bool(torch.isfinite(torch.as_tensor(concentration, dtype=torch.float64)).all()) or bool(
        (torch.as_tensor(concentration) < 0).any()
    ):
        got = concentration if isinstance(concentration, (int, float)) else "a tensor with negative or non-finite entries"
        raise ValueError(f"simplex_concentration (the prior's concentration) must be nonnegative and finite, got {got}")
    axes = list(axes)
    moved = [v.movedim(axes, list(range(len(axes)))) for v in values]
    rest = moved[0].shape[len(axes):]
    total = torch.zeros((num_global,) * len(axes) + rest, dtype=torch.float64)
    seen = torch.zeros((num_global,) * len(axes) + rest, dtype=torch.bool)
    for j, (v, a, w) in enumerate(zip(moved, assignments, weights)):
        if v.shape[len(axes):] != rest or any(v.shape[i] != len(a) for i in range(len(axes))):
            raise ValueError(
                f"client {j}: simplex value of shape {tuple(values[j].shape)} does not match its "
                f"{len(a)} assigned components"
            )
        index = torch.meshgrid(*([a] * len(axes)), indexing="ij")
        total.index_put_(index, v.double() * float(w), accumulate=True)
        seen.index_put_(index, torch.ones_like(v, dtype=torch.bool), accumulate=True)
    total = torch.where(seen, total, torch.as_tensor(concentration, dtype=torch.float64))
    total = total.movedim(list(range(len(axes))), axes)
    return (total / total.sum(-1, keepdim=True)).to(values[0].dtype)

