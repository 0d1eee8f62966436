"""Fuse extracted guides and write the result back as Pyro objects (components -> guide).

- :func:`fuse_posteriors`: match and average the per-component fields with
  :func:`~pyro_fusion.fusion.fuse`, average the shared fields with
  :func:`~pyro_fusion.barycenter.barycenter`, rebuild simplex-indexed sites.
- :meth:`FusedPosterior.to_guide`: a ready :class:`~pyro.infer.autoguide.AutoNormal`
  whose locs *and* scales are the fused values.
- :func:`init_to_fused`: an ``init_loc_fn`` for any autoguide.
- :class:`FusedPrior`: a messenger that replaces the priors of fused sites by the fused
  posterior, for the next round of a continual or federated fit; :class:`PosteriorPrior`
  does the same from a dict of per-site distributions (e.g. a fused BNN's).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import pyro
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.nn import PyroParam
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import Distribution, Independent, TransformedDistribution, biject_to

from .barycenter import barycenter
from .components import Components
from .expfam import DiagNormal, ExponentialFamily, PointMass
from .expfam.base import base_distribution
from .extract import GuidePosterior, SiteLayout
from .fusion import FusionResult, client_weights, fuse
from .simplex import rebuild_simplex


class FusedAutoNormal(AutoNormal):
    """An :class:`~pyro.infer.autoguide.AutoNormal` whose parameters live under the name
    ``FusedAutoNormal``, so it can sit beside the clients' ``AutoNormal`` guides."""


@dataclass
class FusedPosterior(SiteLayout):
    """
    The global posterior: fused component sites, shared sites and simplex sites
    (simplex values are the rebuilt global ones, site shapes those of the global model).

    :ivar FusionResult result: matching and fused components (None without component sites).
    :ivar Components shared: fused shared sites (one component), or None.
    """

    result: Optional[FusionResult] = None
    shared: Optional[Components] = None

    @property
    def num_global(self) -> int:
        """Number of global components."""
        return 0 if self.result is None else self.result.num_global

    def site_field(self, name: str) -> Tuple[ExponentialFamily, Tensor]:
        """
        ``(family, natural)`` of a site in the global model: the family of the clients' guide
        distribution and natural parameters of shape ``site_shapes[name] + (family.dim,)``.
        """
        family = self.site_families[name]
        shape = tuple(self.site_shapes[name])
        if name in self.component_dims:
            dim = self.component_dims[name]
            moved = (shape[dim],) + shape[:dim] + shape[dim + 1 :]
            natural = self.result.components[name].natural.reshape(moved + (family.dim,))
            return family, natural.movedim(0, dim)
        if self.shared is not None and name in self.shared.fields:
            return family, self.shared[name].natural.reshape(shape + (family.dim,))
        raise KeyError(f"site {name!r} has no fused natural parameters (simplex sites: {list(self.simplex)})")

    def loc_scale(self, name: str) -> Tuple[Tensor, Tensor]:
        """Unconstrained ``(loc, scale)`` of a site read from AutoNormal, AutoDiagonalNormal or AutoDelta."""
        family, natural = self.site_field(name)
        if isinstance(family, DiagNormal):
            return family.loc_scale(natural)
        if isinstance(family, PointMass):
            value = family.value(natural)
            return value, torch.full_like(value, family.scale)
        raise ValueError(f"site {name!r} came from a hand-written guide's {family.name} distribution")

    def site_distribution(self, name: str) -> Distribution:
        """The fused distribution of a site, in the space the clients' guides used
        (unconstrained for autoguides), with batch shape ``site_shapes[name]``."""
        family, natural = self.site_field(name)
        return family.distribution(natural)

    def to_guide(self, model: Callable, *args, init_scale: float = 0.1, **kwargs) -> "FusedAutoNormal":
        """
        A ready :class:`FusedAutoNormal` (an :class:`~pyro.infer.autoguide.AutoNormal`) for
        ``model(*args, **kwargs)``, whose locs and scales are the fused values, sized to the
        global components.

        Its parameters are named ``FusedAutoNormal.locs.*``/``FusedAutoNormal.scales.*``, so
        the clients' own guides (``AutoNormal.*``) in the same param store are never touched;
        a previous fused guide is replaced. Simplex-indexed sites get the fused value as
        loc and ``init_scale`` as scale; sites not fused keep AutoNormal's defaults.

        :param model: the global model; ``args``/``kwargs`` must size it to
            :attr:`num_global` components.
        :param float init_scale: scale of sites without a fused scale.
        """
        guide = FusedAutoNormal(model, init_loc_fn=init_to_fused(self), init_scale=init_scale)
        prefix = type(guide).__name__
        store = pyro.get_param_store()
        for key in [k for k in store.keys() if k.startswith(prefix + ".")]:
            del store[key]
        guide(*args, **kwargs)
        for name, site in guide.prototype_trace.iter_stochastic_nodes():
            if name not in self.site_shapes or name in self.simplex:
                continue
            loc, scale = self.loc_scale(name)
            current = functools.reduce(getattr, name.split("."), guide.scales)
            if current.shape != scale.shape:
                raise ValueError(
                    f"site {name!r}: the model gives guide parameters of shape {tuple(current.shape)}, "
                    f"the fused posterior has {tuple(scale.shape)}; size the model to "
                    f"{self.num_global} components"
                )
            event_dim = site["fn"].event_dim + scale.dim() - site["value"].dim()
            parent_path, _, leaf = name.rpartition(".")
            parent = functools.reduce(getattr, parent_path.split("."), guide.scales) if parent_path else guide.scales
            setattr(parent, leaf, PyroParam(scale.to(current.dtype).clone(), guide.scale_constraint, event_dim))
        return guide

    def write_params(self, guide: Callable, *args, **kwargs) -> Dict[str, str]:
        """
        Fill a hand-written guide's parameters with the fused values.

        Runs ``guide(*args, **kwargs)`` once (creating its parameters at the global size),
        finds for each fused site the ``pyro.param`` that feeds each argument of the site's
        distribution, and overwrites it in the param store.

        Example::

            >>> fused.write_params(lda_guide, docs, num_topics=fused.num_global)
            {'topics': 'topic_concentration'}

        :returns: site -> name of the parameter that was written (one per distribution argument).
        """
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        params = {n: s["value"] for n, s in trace.nodes.items() if s["type"] == "param"}
        store = pyro.get_param_store()
        written = {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or name not in self.site_shapes or name in self.simplex:
                continue
            base = base_distribution(site["fn"], (Independent, TransformedDistribution))
            fused = self.site_distribution(name)
            for arg in type(base).arg_constraints:
                if arg not in base.__dict__:
                    continue  # a lazily derived parameterisation (e.g. logits vs probs)
                current = getattr(base, arg)
                source = [p for p, v in params.items() if _same_storage(v, current)]
                if not source:
                    continue
                new = getattr(fused, arg)
                if new.shape != current.shape:
                    raise ValueError(
                        f"site {name!r}: the guide's {arg} has shape {tuple(current.shape)}, the fused "
                        f"posterior {tuple(new.shape)}; size the guide to {self.num_global} components"
                    )
                store[source[0]] = new.detach().to(current.dtype).clone()
                written[name] = source[0]
            if name not in written:
                raise ValueError(
                    f"site {name!r}: no pyro.param feeds its distribution directly; set its "
                    f"parameters from fused.site_distribution({name!r})"
                )
        return written

    def save(self, path: str) -> None:
        """Save as plain tensors + JSON (safetensors); no pickle."""
        from .io import save_posterior

        save_posterior(self, path)

    @classmethod
    def load(cls, path: str) -> "FusedPosterior":
        from .io import load_posterior

        return load_posterior(path, kind="fused_posterior")


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.data_ptr() == b.data_ptr()


def fuse_posteriors(
    posteriors: Sequence[GuidePosterior],
    weights: Optional[Sequence[float]] = None,
    *,
    simplex_concentration: float = 1e-3,
    **fuse_kwargs,
) -> FusedPosterior:
    """
    Fuse clients' extracted guides into one global posterior.

    Example::

        >>> posts = [extract(g, components={"loc": 0}) for g in client_guides]
        >>> fused = fuse_posteriors(posts, direction="reverse")
        >>> guide = fused.to_guide(model, K=fused.num_global)

    :param list posteriors: one :class:`~pyro_fusion.extract.GuidePosterior` per client.
    :param weights: client weights; default each posterior's ``weight`` if all have one,
        else uniform.
    :param float simplex_concentration: pseudo-count of simplex entries no client saw, in
        units of one (average-weight) client's probability mass (see
        :func:`~pyro_fusion.simplex.rebuild_simplex`).
    :param fuse_kwargs: passed to :func:`~pyro_fusion.fusion.fuse` (``direction``,
        ``num_global``, ``price``, ``prior``, ``combine``, ``seed``, ...).
    """
    posteriors = list(posteriors)
    if not posteriors:
        raise ValueError("fuse_posteriors needs at least one client")
    ref = posteriors[0]
    for j, p in enumerate(posteriors):
        for attr in ("component_dims", "sources", "site_families"):
            if getattr(p, attr) != getattr(ref, attr):
                raise ValueError(
                    f"client {j}: {attr} {getattr(p, attr)} differ from client 0's {getattr(ref, attr)}"
                )
        if set(p.simplex) != set(ref.simplex):
            raise ValueError(f"client {j}: simplex sites {sorted(p.simplex)} differ from client 0's")
        for name, shape in p.site_shapes.items():
            if name in ref.component_dims or name in ref.simplex:
                continue
            if shape != ref.site_shapes[name]:
                raise ValueError(
                    f"client {j}, site {name!r}: shape {tuple(shape)} differs from client 0's "
                    f"{tuple(ref.site_shapes[name])}"
                )
    if weights is None and all(p.weight is not None for p in posteriors):
        weights = [p.weight for p in posteriors]
    w = client_weights(weights, len(posteriors))

    result = None
    if ref.components is not None:
        result = fuse([p.components for p in posteriors], w, **fuse_kwargs)
    elif ref.simplex:
        raise ValueError("simplex-indexed sites need component sites to be matched")
    shared = None
    if ref.shared is not None:
        stacked = Components(
            {
                n: (f.family, torch.cat([p.shared[n].natural for p in posteriors]))
                for n, f in ref.shared.fields.items()
            }
        )
        for j, p in enumerate(posteriors):
            p.shared.check(f"client {j}")
        shared = barycenter(stacked, w, direction=fuse_kwargs.get("direction", "reverse"))
    simplex = {}
    for name, (axes, _) in ref.simplex.items():
        values = [p.simplex[name][1] for p in posteriors]
        simplex[name] = (axes, rebuild_simplex(values, axes, result.assignments, w, result.num_global, simplex_concentration))
    shapes = {}
    for name, shape in ref.site_shapes.items():
        shape = list(shape)
        if name in ref.component_dims:
            shape[ref.component_dims[name]] = result.num_global
        elif name in simplex:
            shape = simplex[name][1].shape
        shapes[name] = torch.Size(shape)
    return FusedPosterior(
        component_dims=dict(ref.component_dims),
        simplex=simplex,
        site_shapes=shapes,
        sources=dict(ref.sources),
        site_families=dict(ref.site_families),
        result=result,
        shared=shared,
    )


def init_to_fused(fused: FusedPosterior, fallback: Callable = init_to_feasible) -> Callable:
    """
    An ``init_loc_fn`` for autoguides: fused sites start at the fused posterior's median
    (the transform of the unconstrained fused loc), simplex sites at their fused value,
    other sites at ``fallback``.

    Example::

        >>> guide = AutoDiagonalNormal(model, init_loc_fn=init_to_fused(fused))
    """

    def init_fn(site):
        name = site["name"]
        if name in fused.simplex:
            return fused.simplex[name][1].clone()
        if name in fused.site_shapes and fused.sources[name] in ("autonormal", "delta"):
            loc, _ = fused.loc_scale(name)
            value = biject_to(site["fn"].support)(loc)
            if value.shape != site["fn"].shape():
                raise ValueError(
                    f"site {name!r}: the model's value has shape {tuple(site['fn'].shape())}, "
                    f"the fused posterior gives {tuple(value.shape)}; size the model to "
                    f"{fused.num_global} components"
                )
            return value
        return fallback(site)

    return init_fn


class FusedSitePrior(pyro.distributions.TransformedDistribution):
    """
    A Normal pushed through ``biject_to(support)`` that reports the model site's
    ``support`` (torch reports the last transform's codomain, e.g. ``real`` for the affine
    step of ``biject_to(greater_than(0))``), so autoguides built on a model under
    :class:`FusedPrior` still constrain the site.

    :param Distribution base: the unconstrained Normal.
    :param Transform transform: ``biject_to(support)``.
    :param Constraint support: the model site's support.
    """

    def __init__(self, base, transform, support, validate_args=None):
        self._site_support = support
        super().__init__(base, transform, validate_args=validate_args)

    @property
    def support(self):
        return self._site_support

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FusedSitePrior, _instance)
        new._site_support = self._site_support
        return super().expand(batch_shape, _instance=new)


class _PriorReplacement(Messenger):
    """Replaces the prior of each site in ``sites`` by ``_prior(name, fn)``, whose event and
    batch shapes must be the site's (only extra leading batch dims of the site, e.g.
    vectorised particles, are broadcast)."""

    def __init__(self, sites, size_hint: str):
        super().__init__()
        self.sites = set(sites)
        self.size_hint = size_hint

    def _prior(self, name: str, fn: Distribution) -> Distribution:
        raise NotImplementedError

    def _pyro_sample(self, msg):
        if msg["name"] not in self.sites or msg["is_observed"]:
            return
        name, fn = msg["name"], msg["fn"]
        model_shapes = (
            f"the model's prior has batch shape {tuple(fn.batch_shape)} and event shape "
            f"{tuple(fn.event_shape)}"
        )
        try:
            new = self._prior(name, fn)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"site {name!r}: {model_shapes}; cannot build the new prior: {e}") from None
        batch, lead = new.batch_shape, len(fn.batch_shape) - len(new.batch_shape)
        # only extra leading dims (e.g. vectorised particles) are broadcast, never size-1 dims
        if new.event_shape != fn.event_shape or lead < 0 or fn.batch_shape[lead:] != batch:
            raise ValueError(
                f"site {name!r}: {model_shapes}, the new prior {tuple(batch)} and "
                f"{tuple(new.event_shape)}; {self.size_hint}"
            )
        msg["fn"] = new.expand(fn.batch_shape) if lead else new


def _with_event_dim(d: Distribution, event_dim: int) -> Distribution:
    """``d`` as a Pyro distribution with (at least) ``event_dim`` event dimensions."""
    if not isinstance(d, TorchDistributionMixin):
        d = pyro.distributions.Independent(d, 0)  # the same law, with Pyro's methods
    extra = event_dim - len(d.event_shape)
    return d.to_event(extra) if extra > 0 else d


def _is_point_mass(d: Distribution) -> bool:
    wrappers = (Independent, TransformedDistribution, pyro.distributions.MaskedDistribution)
    return isinstance(base_distribution(d, wrappers), pyro.distributions.Delta)


class PosteriorPrior(_PriorReplacement):
    """
    Replace the priors of some sites by given distributions, e.g. a fused posterior held as
    one distribution per site (continual learning: the next data starts from it).

    Wrap the *model* only (a ``with`` block would also replace the guide's samples of those
    sites, and the guide would stop learning).

    Example::

        >>> fused = fuse_mlps(posteriors)
        >>> train_svi(PosteriorPrior(fused.posterior)(fused.model), fused.guide, x_new, y_new)

    :param dict posterior: site name -> distribution of the site's shape (``batch_shape +
        event_shape``); trailing dimensions become event dimensions to match the site.
        Point masses are refused (a prior with no spread would pin the site).
    """

    def __init__(self, posterior: Dict[str, Distribution]):
        for name, d in posterior.items():
            if _is_point_mass(d):
                raise ValueError(
                    f"site {name!r}: a point estimate (Delta) cannot be a prior; fuse with "
                    "uncertainty (e.g. fuse_mlps without point_scale) to use it as a prior"
                )
        super().__init__(posterior, "size the model like the posterior")
        self.posterior = dict(posterior)

    def _prior(self, name: str, fn: Distribution) -> Distribution:
        return _with_event_dim(self.posterior[name], fn.event_dim)


class FusedPrior(_PriorReplacement):
    """
    Replace the priors of fused sites by the fused posterior (continual / federated rounds).

    Sites fused in unconstrained space get ``TransformedDistribution(Normal(loc, scale),
    biject_to(support))``; sites from hand-written guides get the fused distribution, except
    sites whose guide pushed a distribution through a transform (``sources[name] ==
    "transformed"``: only its base distribution was fused, so it is not the site's law).
    Wrap the *model* only (see :class:`PosteriorPrior`).

    Example::

        >>> prior_model = FusedPrior(fused)(model)  # the model only, not the guide
        >>> svi = SVI(prior_model, fused.to_guide(model, data), Adam({"lr": 0.01}), Trace_ELBO())
        >>> svi.step(new_data)   # the model now starts from what all clients learned

    :param FusedPosterior fused: the fused posterior.
    :param list sites: which fused sites to replace (default all but simplex and
        transformed sites).
    """

    def __init__(self, fused: FusedPosterior, sites: Optional[Sequence[str]] = None):
        names = [n for n in fused.site_shapes if n not in fused.simplex]
        usable = [n for n in names if fused.sources[n] != "transformed"]
        chosen = set(usable if sites is None else sites)
        unknown = chosen - set(names)
        if unknown:
            raise ValueError(f"sites {sorted(unknown)} are not fused sites; fused: {sorted(names)}")
        transformed = sorted(chosen - set(usable))
        if transformed:
            raise ValueError(
                f"sites {transformed}: their guides' distributions were fused in the base space "
                "of a transform that is not kept, so the fused distribution is not the site's "
                "prior; leave them out of sites="
            )
        super().__init__(chosen, f"size the model to {fused.num_global} components")
        self.fused = fused

    def _prior(self, name: str, fn: Distribution) -> Distribution:
        if self.fused.sources[name] not in ("autonormal", "delta"):
            return _with_event_dim(self.fused.site_distribution(name), fn.event_dim)
        loc, scale = self.fused.loc_scale(name)
        transform = biject_to(fn.support)
        # unconstrained event dims (a Cholesky factor's event is a vector before the transform)
        event_dim = transform.domain.event_dim + fn.event_dim - transform.codomain.event_dim
        base = pyro.distributions.Normal(loc, scale).to_event(event_dim)
        return FusedSitePrior(base, transform, fn.support)
