"""The support of a site, as saved with a posterior.

A site read from an autoguide is fused in the unconstrained space of its support
(``biject_to(support)``), so writing it back into a model whose site has another support
would silently reinterpret the fused values (a loc fused for a positive site read as a real
one). :func:`support_name` is the short name a posterior keeps per site (``"Real"``,
``"GreaterThan(0)"``, ``"Simplex"``, ``"Interval(0, 1)"``, ...); write-back compares it with
the model's site.
"""
from __future__ import annotations

import numbers

import torch
from torch.distributions import constraints
from torch.distributions.constraints import Constraint


#: supports that ``biject_to`` maps to the unconstrained space alike, under one name
_SAME_TRANSFORM = {"GreaterThanEq": "GreaterThan", "HalfOpenInterval": "Interval"}


def support_name(support: Constraint) -> str:
    """
    The name of a support, without the ``independent`` wrappers that only set its event
    dimensions, with its bounds where they are numbers (tensor bounds are named
    ``"tensor"``: their shape changes with the number of components); supports that
    ``biject_to`` treats alike share a name (``nonnegative`` and ``positive`` are
    ``"GreaterThan(0)"``).

    Example::

        >>> support_name(constraints.independent(constraints.nonnegative, 1))
        'GreaterThan(0)'
        >>> support_name(constraints.unit_interval) == support_name(constraints.interval(0, 1))
        True

    :param Constraint support: a distribution's ``support``.
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    bounds = []
    for attr in ("lower_bound", "upper_bound"):
        if hasattr(support, attr):
            bound = getattr(support, attr)
            scalar = isinstance(bound, numbers.Real) or (torch.is_tensor(bound) and bound.numel() == 1)
            bounds.append(f"{float(bound):g}" if scalar else "tensor")
    name = type(support).__name__.lstrip("_")
    return _SAME_TRANSFORM.get(name, name) + (f"({', '.join(bounds)})" if bounds else "")
