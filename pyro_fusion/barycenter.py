"""KL barycenters: weighted averages in the averaging space of a direction."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .components import Components
from .cost import KLGeometry


def barycenter(
    components: Components, weights: Optional[Tensor] = None, direction: str = "reverse"
) -> Components:
    """
    The single component minimising ``sum_l w_l KL(p || q_l)`` (``direction="reverse"``:
    weighted average of natural parameters) or ``sum_l w_l KL(q_l || p)``
    (``"forward"``: moment matching, a weighted average of mean parameters).

    Used for shared fields that every client has once (e.g. output biases).

    Example::

        >>> from torch.distributions import Normal
        >>> q = Components.from_distributions({"b": Normal(torch.tensor([[0.0], [2.0]]), 1.0)})
        >>> barycenter(q, direction="forward").distributions()["b"].mean
        tensor([[1.]])

    :param Components components: the ``L`` components to average.
    :param Tensor weights: nonnegative weights ``[L]``, uniform by default.
    :param str direction: ``"reverse"`` or ``"forward"``.
    """
    geometry = KLGeometry(components.families, direction)
    natural = components.concat()
    if weights is None:
        weights = torch.ones(len(components), dtype=natural.dtype)
    weights = torch.as_tensor(weights, dtype=natural.dtype)
    if weights.shape != (len(components),) or not (weights >= 0).all() or not weights.sum() > 0:
        raise ValueError(f"weights must be {len(components)} nonnegative numbers, not all zero")
    x = geometry.coordinates(natural)
    mean = (weights / weights.sum()) @ x
    return components.with_natural(geometry.natural(mean.unsqueeze(0)))
