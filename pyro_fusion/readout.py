"""Read a trained mean-field guide as one client's components (guide -> components).

Every latent site becomes a factor of a known exponential family:

- :class:`~pyro.infer.autoguide.AutoNormal` and
  :class:`~pyro.infer.autoguide.AutoDiagonalNormal`: a diagonal Normal over the site's
  *unconstrained* value. Constrained sites (positive, simplex, interval, ...) are Normals
  pushed through ``biject_to(support)``; KL is invariant under a shared bijection, so they
  fuse exactly in the unconstrained space.
- :class:`~pyro.infer.autoguide.AutoDelta`: point estimates, read as
  :class:`~pyro_fusion.expfam.PointMass` with a user-set ``point_scale``.
- :class:`~pyro.infer.autoguide.AutoGuideList`: the union of its parts.
- hand-written guides: each sample site's distribution (an exponential family, possibly
  wrapped in ``Independent`` or a ``TransformedDistribution`` of bijections).

Sites listed in ``components`` are split along their component dimension; sites listed in
``simplex`` (mixture weights, transition matrices: a simplex indexed by component) are kept
as constrained point values and rebuilt after matching; every other latent site is *shared*.
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro import poutine
from pyro.distributions import Delta
from pyro.poutine.util import site_is_subsample
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuide,
    AutoGuideList,
    AutoNormal,
)
from torch import Tensor
from torch.distributions import Independent, TransformedDistribution, biject_to

from .components import Components
from .expfam import DiagNormal, ElementwiseFamily, ExponentialFamily, PointMass, family_from_spec, family_of
from .expfam.base import check_positive_real
from .posterior import GuidePosterior
from .simplex import check_simplex
from .supports import support_name


@dataclass
class SiteEstimate:
    """
    One latent site of a guide as an exponential-family factor.

    :ivar ExponentialFamily family: family of one coordinate block (event shape ``()`` for
        elementwise families read per coordinate, else the distribution's event shape).
    :ivar Tensor natural: natural parameters of shape ``batch_shape + (family.dim,)``.
    :ivar str source: ``"autonormal"``, ``"delta"``, ``"distribution"`` or ``"transformed"``
        (a hand-written guide's distribution pushed through bijections, read in its base space).
    :ivar Tensor value: a constrained point value of the site (posterior mean where known,
        else the median), used for simplex-indexed sites.
    :ivar str support: :func:`~pyro_fusion.supports.support_name` of the site's support (the
        model's for autoguides, the guide distribution's for hand-written guides).
    """

    family: ExponentialFamily
    natural: Tensor
    source: str
    value: Tensor
    support: str = ""

    @property
    def batch_shape(self) -> torch.Size:
        return self.natural.shape[:-1]

    def field(self, leading: int) -> Tuple[ExponentialFamily, Tensor]:
        """Family and natural parameters ``[N, dim]`` with the first ``leading`` batch dims
        flattened into ``N`` and the rest joined to the event."""
        rest = tuple(self.batch_shape[leading:])
        spec = self.family.spec()
        if rest and not isinstance(self.family, ElementwiseFamily):
            raise ValueError(f"{self.family!r} cannot absorb batch dims {rest} into its event")
        spec["event_shape"] = list(rest) + list(spec["event_shape"])
        family = family_from_spec(spec)
        return family, self.natural.reshape(-1, family.dim)


NON_MEAN_FIELD_HINT = (
    "pyro_fusion needs a mean-field guide: use AutoNormal, AutoDiagonalNormal, AutoDelta, "
    "an AutoGuideList of those, or a hand-written guide of independent exponential-family sites"
)


def _site_estimates_autonormal(guide: AutoNormal) -> Dict[str, SiteEstimate]:
    out = {}
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        loc = functools.reduce(getattr, name.split("."), guide.locs).detach()
        scale = functools.reduce(getattr, name.split("."), guide.scales).detach()
        out[name] = _normal_estimate(name, site, loc, scale)
    return out


def _normal_estimate(name: str, site: dict, loc: Tensor, scale: Tensor) -> SiteEstimate:
    family = DiagNormal(())
    try:
        natural = family.natural(loc, scale).reshape(loc.shape + (2,))
    except ValueError as e:
        raise ValueError(f"site {name!r}: {e}") from None
    value = biject_to(site["fn"].support)(loc).detach()
    return SiteEstimate(family, natural, "autonormal", value, support_name(site["fn"].support))


def _unconstrained_layout(guide: AutoGuide):
    """``(name, site, unconstrained shape)`` in the order AutoContinuous packs latents."""
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        shape = biject_to(site["fn"].support).inv(site["value"]).shape
        yield name, site, shape


def _site_estimates_diagonal(guide: AutoDiagonalNormal) -> Dict[str, SiteEstimate]:
    loc, scale = guide.loc.detach(), guide.scale.detach()
    out, pos = {}, 0
    for name, site, shape in _unconstrained_layout(guide):
        size = shape.numel()
        site_loc = loc[pos : pos + size].reshape(shape)
        site_scale = scale[pos : pos + size].reshape(shape)
        out[name] = _normal_estimate(name, site, site_loc, site_scale)
        pos += size
    if pos != loc.numel():
        raise ValueError(f"{type(guide).__name__}: latent layout does not match its {loc.numel()} parameters")
    return out


def _site_estimates_delta(guide: AutoDelta, point_scale: Optional[float]) -> Dict[str, SiteEstimate]:
    if point_scale is None:
        raise ValueError("AutoDelta holds point estimates: pass point_scale=... to read them as PointMass")
    medians = guide.median()
    out = {}
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        value = medians[name].detach()
        unconstrained = biject_to(site["fn"].support).inv(value)
        family = PointMass((), scale=point_scale)
        try:
            natural = family.natural(unconstrained).reshape(unconstrained.shape + (1,))
        except ValueError as e:
            raise ValueError(f"site {name!r}: {e}") from None
        out[name] = SiteEstimate(family, natural, "delta", value, support_name(site["fn"].support))
    return out


def _site_estimates_traced(guide: Callable, args, kwargs, point_scale) -> Dict[str, SiteEstimate]:
    store = pyro.get_param_store()
    before = set(store.keys())
    rng = pyro.util.get_rng_state()
    try:
        with poutine.block(hide_types=["param"]):
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
    finally:
        pyro.util.set_rng_state(rng)
        created = set(store.keys()) - before
        for name in created:
            del store[name]
    if created:
        raise ValueError(
            f"guide created parameters {sorted(created)} while being read: train it first"
        )
    out = {}
    for name, site in trace.iter_stochastic_nodes():
        if site["infer"].get("is_auxiliary") or site_is_subsample(site):
            continue
        fn = site["fn"]
        base, transformed = fn, False
        while isinstance(base, (Independent, TransformedDistribution)):
            if isinstance(base, TransformedDistribution):
                transformed = True
                if not all(t.bijective for t in base.transforms):
                    raise ValueError(f"site {name!r}: transforms must be bijective to fuse in base space")
            base = base.base_dist
        if isinstance(base, Delta):
            if point_scale is None:
                raise ValueError(f"site {name!r} is a Delta: pass point_scale=... to read it as PointMass")
        try:
            family = family_of(base, component_dims=len(base.batch_shape), point_scale=point_scale)
        except ValueError as e:
            raise ValueError(f"site {name!r}: {e}. {NON_MEAN_FIELD_HINT}") from None
        try:
            natural = family.natural_from_distribution(base)
        except ValueError as e:  # parameters outside the family's domain, e.g. a negative scale
            raise ValueError(f"site {name!r}: {e}") from None
        try:
            value = fn.mean
        except NotImplementedError:
            value = site["value"]
        source = "transformed" if transformed else "distribution"
        out[name] = SiteEstimate(family, natural.detach(), source, value.detach(), support_name(fn.support))
    return out


def site_estimates(
    guide: Callable, *args, point_scale: Optional[float] = None, **kwargs
) -> Dict[str, SiteEstimate]:
    """
    Every latent site of a trained mean-field guide as a :class:`SiteEstimate`.

    Reads only: the guide, the model, the param store and the RNG state are left as they were.

    :raises ValueError: naming the site whose parameters are outside its family's domain
        (e.g. a negative scale in a guide built with ``validate_args=False``), or naming
        ``point_scale`` if it is not a positive real number with a finite square and inverse square.
    """
    if point_scale is not None:
        point_scale = check_positive_real(point_scale, "point_scale")
    if isinstance(guide, AutoGuideList):
        out: Dict[str, SiteEstimate] = {}
        for part in guide:
            out.update(site_estimates(part, *args, point_scale=point_scale, **kwargs))
        return out
    if isinstance(guide, AutoGuide):
        if guide.prototype_trace is None:
            raise ValueError(f"{type(guide).__name__} has not been run yet: train it before extracting")
        if isinstance(guide, AutoNormal):  # also FusedAutoNormal, for the next round
            return _site_estimates_autonormal(guide)
        if isinstance(guide, AutoDiagonalNormal):
            return _site_estimates_diagonal(guide)
        if isinstance(guide, AutoDelta):
            return _site_estimates_delta(guide, point_scale)
        raise ValueError(f"{type(guide).__name__} is not supported. {NON_MEAN_FIELD_HINT}")
    return _site_estimates_traced(guide, args, kwargs, point_scale)


def extract(
    guide: Callable,
    *args,
    components: Mapping[str, int] = None,
    simplex: Union[Mapping[str, Sequence[int]], None] = None,
    exclude: Sequence[str] = (),
    point_scale: Optional[float] = None,
    weight: Optional[float] = None,
    **kwargs,
) -> GuidePosterior:
    """
    Read one client's trained guide as components to fuse.

    Example::

        >>> def model(K=3):
        ...     with pyro.plate("components", K):
        ...         pyro.sample("loc", dist.Normal(torch.zeros(2), 10.0).to_event(1))
        >>> guide = AutoNormal(model)
        >>> _ = guide()  # (train it)
        >>> post = extract(guide, components={"loc": 0})
        >>> len(post.components), post.components.families
        (3, {'loc': DiagNormal(event_shape=[2])})

    :param guide: a trained mean-field guide (see the module docstring).
    :param args: the model/guide arguments (used by hand-written guides).
    :param dict components: component site -> the dimension of its value that indexes
        components (e.g. ``{"locs": 0}`` or ``{"locs": -2}``). All must have the same size.
    :param dict simplex: simplex-indexed site -> the dimensions of its value indexed by
        component (e.g. mixture weights ``{"weights": [-1]}``, an HMM transition matrix
        ``{"trans": [0, 1]}``); rebuilt in the global index space after matching.
    :param list exclude: sites to leave out (e.g. per-datum local latent variables).
    :param float point_scale: scale to read point estimates (AutoDelta, Delta sites) with.
    :param float weight: the client's fusion weight, e.g. its number of data points.
    :raises ValueError: naming the argument or site at fault: dimensions that are not ints,
        a simplex site whose value is not on a simplex (its last axis must sum to 1), a
        non-positive or non-finite weight, sites outside their family's domain, ...
    """
    components, simplex, exclude = _check_layout(components, simplex, exclude)
    if weight is not None and (
        isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not (math.isfinite(weight) and weight > 0)
    ):
        raise ValueError(f"weight must be positive and finite (a real number), got {weight!r}")
    estimates = site_estimates(guide, *args, point_scale=point_scale, **kwargs)
    for name in list(components) + list(simplex) + list(exclude):
        if name not in estimates:
            raise ValueError(f"site {name!r} is not a latent site of the guide; sites: {sorted(estimates)}")
    overlap = set(components) & set(simplex)
    if overlap:
        raise ValueError(f"sites {sorted(overlap)} are listed both in components and simplex")
    comp_fields, shared_fields, dims, sizes = {}, {}, {}, {}
    simplex_values, shapes, sources, families, supports = {}, {}, {}, {}, {}
    for name, est in estimates.items():
        if name in exclude:
            continue
        shapes[name] = est.value.shape if name in simplex else est.batch_shape
        sources[name] = est.source
        families[name] = est.family
        supports[name] = est.support
        if name in simplex:
            value = check_simplex(est.value, f"site {name!r} listed in simplex=")
            simplex_values[name] = (_positive_dims(simplex[name], est.value.dim(), name), value)
        elif name in components:
            value_dim = est.value.dim()
            dim = _positive_dims([components[name]], value_dim, name)[0]
            if est.batch_shape[dim : dim + 1] != est.value.shape[dim : dim + 1] or dim >= len(est.batch_shape):
                raise ValueError(
                    f"site {name!r}: dimension {components[name]} is transformed with the "
                    f"support (e.g. the simplex axis); list the site in simplex=... instead"
                )
            moved = SiteEstimate(est.family, est.natural.movedim(dim, 0), est.source, est.value, est.support)
            try:
                comp_fields[name] = moved.field(1)
            except ValueError as e:
                raise ValueError(f"site {name!r}: {e}") from None
            dims[name] = dim
            sizes[name] = est.batch_shape[dim]
        else:
            family, natural = est.field(0)
            shared_fields[name] = (family, natural.reshape(1, -1))
    if len(set(sizes.values())) > 1:
        raise ValueError(f"component sites have different numbers of components: {sizes}")
    comps = Components(comp_fields) if comp_fields else None
    shared = Components(shared_fields) if shared_fields else None
    if comps is not None:
        comps.check("guide")
    if shared is not None:
        shared.check("guide")
    return GuidePosterior(
        component_dims=dims,
        simplex=simplex_values,
        site_shapes=shapes,
        sources=sources,
        site_families=families,
        supports=supports,
        components=comps,
        shared=shared,
        weight=weight,
    )


def _check_layout(components, simplex, exclude):
    """``extract``'s site arguments as a dict of int dims, a dict of int tuples and a list of
    names; ValueError naming the argument otherwise (no float or bool dims, no bare string)."""

    def dims(value, what):
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (str, bytes)) or not values or any(isinstance(d, bool) or not isinstance(d, int) for d in values):
            raise ValueError(f"{what} must be {'ints' if isinstance(value, (list, tuple)) else 'an int'}, got {value!r}")
        return value

    for what, value in (("components", components), ("simplex", simplex)):
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"{what} must be a dict of site name -> dimension(s), got {type(value).__name__}")
    axes = {}
    for k, v in (simplex or {}).items():
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"simplex[{k!r}] must be a list of ints, got {v!r}")
        axes[k] = tuple(dims(v, f"simplex[{k!r}]"))
    if isinstance(exclude, (str, bytes)) or not all(isinstance(n, str) for n in exclude):
        raise ValueError(f"exclude must be a list of site names, got {exclude!r}")
    return {k: dims(v, f"components[{k!r}]") for k, v in (components or {}).items()}, axes, list(exclude)


def _positive_dims(dims: Sequence[int], ndim: int, name: str) -> Tuple[int, ...]:
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"site {name!r}: dimension {d} out of range for a value with {ndim} dims")
        out.append(d % ndim)
    return tuple(out)
