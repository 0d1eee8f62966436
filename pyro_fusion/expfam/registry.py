"""Which family a torch distribution belongs to, and families rebuilt from saved metadata."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
from pyro.distributions import Delta
from torch.distributions import Distribution

from .base import ExponentialFamily, base_distribution
from .dirichlet import Dirichlet
from .discrete import Bernoulli, Categorical
from .gamma import Beta, Gamma
from .gaussian import MultivariateNormal, NormalWishart, NormalWishartDistribution
from .normal import DiagNormal, PointMass

#: family name -> class, used to rebuild families from metadata
FAMILIES: Dict[str, type] = {
    cls.name: cls
    for cls in (
        DiagNormal,
        PointMass,
        Gamma,
        Beta,
        Bernoulli,
        Dirichlet,
        Categorical,
        MultivariateNormal,
        NormalWishart,
    )
}

#: torch distribution type -> family class whose event shape is the distribution's trailing shape
_ELEMENTWISE: Dict[type, type] = {
    torch.distributions.Normal: DiagNormal,
    torch.distributions.Gamma: Gamma,
    torch.distributions.Beta: Beta,
    torch.distributions.Bernoulli: Bernoulli,
}

#: torch distribution type -> family of vectors over the last axis; the event shape is the
#: distribution's trailing shape, which for ``Categorical`` is extended by the category axis
_VECTOR: Dict[type, type] = {
    torch.distributions.Dirichlet: Dirichlet,
    torch.distributions.Categorical: Categorical,
    torch.distributions.OneHotCategorical: Categorical,
    torch.distributions.MultivariateNormal: MultivariateNormal,
    NormalWishartDistribution: NormalWishart,
}


def family_from_spec(spec: Dict[str, Any]) -> ExponentialFamily:
    """
    Rebuild a family from :meth:`ExponentialFamily.spec` metadata. Nothing is coerced: the
    spec must have exactly the keys the family saves, an event shape of nonnegative ints and
    (for :class:`PointMass`) a real scale.

    Example::

        >>> family_from_spec({"family": "normal", "event_shape": [3]})
        DiagNormal(event_shape=[3])

    :param dict spec: e.g. ``{"family": "normal", "event_shape": [3]}``.
    :raises ValueError: naming the first problem.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a family spec must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    name = spec.pop("family", None)
    if not isinstance(name, str) or name not in FAMILIES:
        shown = repr(name)[:60] if isinstance(name, str) else type(name).__name__
        raise ValueError(f"unknown family {shown}; known: {sorted(FAMILIES)}")
    cls = FAMILIES[name]
    keys = {"event_shape", *cls.spec_args}
    if set(spec) != keys:
        got = sorted(str(k)[:40] for k in spec)[:8]
        raise ValueError(f"family {name!r} is described by the keys {sorted(keys)} besides 'family', got {got}")
    return cls(**spec)


def _lookup(dist_type: type) -> Optional[type]:
    """The family of ``dist_type`` or of its nearest registered base class (e.g. Pyro's wrappers)."""
    for cls in dist_type.__mro__:
        if cls in _ELEMENTWISE:
            return _ELEMENTWISE[cls]
        if cls in _VECTOR:
            return _VECTOR[cls]
    return None


def family_of(
    dist: Distribution, component_dims: int = 1, point_scale: Optional[float] = None
) -> ExponentialFamily:
    """
    The family of ``dist`` whose event shape is everything after the first
    ``component_dims`` batch dimensions (for ``Categorical``, plus the category axis).

    Example::

        >>> family_of(torch.distributions.Normal(torch.zeros(4, 3), 1.0))
        DiagNormal(event_shape=[3])
        >>> family_of(torch.distributions.Dirichlet(torch.ones(4, 5, 5)))
        Dirichlet(event_shape=[5, 5])

    :param Distribution dist: a distribution whose leading dims index components.
    :param int component_dims: number of leading dims that index components.
    :param float point_scale: scale for reading :class:`~pyro.distributions.Delta` as
        :class:`PointMass`; required for point estimates.
    """
    base = base_distribution(dist)
    shape = dist.batch_shape + dist.event_shape
    event_shape = shape[component_dims:]
    if isinstance(base, Delta):
        if point_scale is None:
            raise ValueError("a Delta (point estimate) needs point_scale to be read as PointMass")
        return PointMass(event_shape, scale=point_scale)
    family = _lookup(type(base))
    if family is None:
        supported = sorted(t.__name__ for t in (*_ELEMENTWISE, *_VECTOR))
        raise ValueError(
            f"{type(base).__name__} is not a supported exponential family; supported: {supported} and Delta"
        )
    if isinstance(base, torch.distributions.Categorical):
        event_shape = event_shape + base.param_shape[-1:]
    return family(event_shape)
