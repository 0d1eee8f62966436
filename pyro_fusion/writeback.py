"""Write a fused posterior back as Pyro objects (the last step: components -> guide).

- :func:`fused_guide` (:meth:`FusedPosterior.to_guide <pyro_fusion.posterior.FusedPosterior.to_guide>`):
  a ready :class:`FusedAutoNormal` whose locs *and* scales are the fused values.
- :func:`write_params` (:meth:`FusedPosterior.write_params
  <pyro_fusion.posterior.FusedPosterior.write_params>`): the fused values in a hand-written
  guide's ``pyro.param`` s.
- :func:`init_to_fused`: an ``init_loc_fn`` for any autoguide.

Each takes a :class:`~pyro_fusion.posterior.FusedPosterior` (read through its public methods,
so this module does not import it); :func:`init_to_fused` also the
:class:`~pyro_fusion.adapters.base.FusedModel` that holds one.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict

import pyro
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.nn import PyroParam
from torch import Tensor
from torch.distributions import Independent, TransformedDistribution, biject_to

from .expfam.base import base_distribution


class FusedAutoNormal(AutoNormal):
    """An :class:`~pyro.infer.autoguide.AutoNormal` whose parameters live under the name
    ``FusedAutoNormal``, so it can sit beside the clients' ``AutoNormal`` guides."""


def fused_guide(
    fused: "FusedPosterior", model: Callable, *args, init_scale: float = 0.1, **kwargs
) -> FusedAutoNormal:
    """
    A ready :class:`FusedAutoNormal` (an :class:`~pyro.infer.autoguide.AutoNormal`) for
    ``model(*args, **kwargs)``, whose locs and scales are the fused values, sized to the
    global components.

    Its parameters are named ``FusedAutoNormal.locs.*``/``FusedAutoNormal.scales.*``, so
    the clients' own guides (``AutoNormal.*``) in the same param store are never touched;
    a previous fused guide is replaced. Simplex-indexed sites get the fused value as
    loc and ``init_scale`` as scale; sites not fused keep AutoNormal's defaults. The model is
    checked first (in a scratch param store): every fused site must be one of its latent
    sites, with the support the clients' site had and the fused shape.

    Example::

        >>> guide = fused_guide(fused.posterior, model, torch.zeros(4, 2), fused.num_global)
        >>> guide.median(torch.zeros(4, 2), 4)["loc"].shape  # = fused.posterior.to_guide(model, ...)
        torch.Size([4, 2])

    :param FusedPosterior fused: the fused posterior.
    :param model: the global model; ``args``/``kwargs`` must size it to
        ``fused.num_global`` components.
    :param float init_scale: scale of sites without a fused scale.
    :raises ValueError: naming the site the model lacks, or whose support or shape differs;
        the param store is then left as it was.
    """
    _check_model(fused, _latent_sites(model, args, kwargs))
    guide = FusedAutoNormal(model, init_loc_fn=init_to_fused(fused), init_scale=init_scale)
    prefix = type(guide).__name__
    store = pyro.get_param_store()
    for key in [k for k in store.keys() if k.startswith(prefix + ".")]:
        del store[key]
    guide(*args, **kwargs)
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        if name not in fused.site_shapes or name in fused.simplex:
            continue
        _, scale = fused.loc_scale(name)
        current = functools.reduce(getattr, name.split("."), guide.scales)
        event_dim = site["fn"].event_dim + scale.dim() - site["value"].dim()
        parent_path, _, leaf = name.rpartition(".")
        parent = functools.reduce(getattr, parent_path.split("."), guide.scales) if parent_path else guide.scales
        setattr(parent, leaf, PyroParam(scale.to(current.dtype).clone(), guide.scale_constraint, event_dim))
    return guide


def _latent_sites(model: Callable, args, kwargs) -> Dict[str, dict]:
    """The model's latent sample sites, traced in a scratch param store with the RNG state restored."""
    rng = pyro.util.get_rng_state()
    try:
        with pyro.get_param_store().scope():
            trace = poutine.trace(model).get_trace(*args, **kwargs)
    finally:
        pyro.util.set_rng_state(rng)
    return dict(trace.iter_stochastic_nodes())


def _check_model(fused: "FusedPosterior", sites: Dict[str, dict]) -> None:
    """Raise :class:`ValueError` naming the site unless every fused site is a latent site of the
    model, with the clients' support and the fused (unconstrained) shape."""
    missing = sorted(set(fused.site_shapes) - set(sites))
    if missing:
        raise ValueError(f"sites {missing} of the fused posterior are not latent sites of the model; "
                         "write back into a model with the clients' sites")
    for name in fused.site_shapes:
        site = sites[name]
        if name in fused.simplex:
            got, want = site["value"].shape, fused.simplex[name][1].shape
        elif fused.sources[name] in ("autonormal", "delta"):
            fused.check_support(name, site["fn"].support)
            got, want = biject_to(site["fn"].support).inv(site["value"]).shape, fused.site_shapes[name]
        else:
            continue
        if tuple(got) != tuple(want):
            raise ValueError(
                f"site {name!r}: the model gives guide parameters of shape {tuple(got)}, the fused "
                f"posterior has {tuple(want)}; size the model to {fused.num_global} components"
            )


def write_params(fused: "FusedPosterior", guide: Callable, *args, **kwargs) -> Dict[str, Dict[str, str]]:
    """
    Fill a hand-written guide's parameters with the fused values.

    Runs ``guide(*args, **kwargs)`` once (creating its parameters at the global size),
    finds for each fused site the ``pyro.param`` that feeds each argument of the site's
    distribution, checks every site (its distribution must be of the fused family, its
    parameters of the fused shapes) and only then overwrites the parameters in the param
    store: a bad guide leaves the store as it was (apart from parameters the run created).

    Example::

        >>> write_params(fused.posterior, handwritten_guide, torch.zeros(4, 2), K=fused.num_global)
        {'loc': {'loc': 'loc_loc', 'scale': 'loc_scale'}}

    :param FusedPosterior fused: the fused posterior.
    :param guide: the hand-written guide, sized by ``args``/``kwargs`` to the global components.
    :returns: site -> {distribution argument -> name of the parameter written for it}.
    :raises ValueError: naming the site whose distribution is of another family, whose
        parameters have other shapes, or that no ``pyro.param`` feeds.
    """
    trace = poutine.trace(guide).get_trace(*args, **kwargs)
    params = {n: s["value"] for n, s in trace.nodes.items() if s["type"] == "param"}
    writes, written = {}, {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name not in fused.site_shapes or name in fused.simplex:
            continue
        base = base_distribution(site["fn"], (Independent, TransformedDistribution))
        distribution = base_distribution(fused.site_distribution(name))
        if type(distribution) not in type(base).__mro__:
            raise ValueError(
                f"site {name!r}: the guide samples a {type(base).__name__}, the fused posterior is a "
                f"{type(distribution).__name__}; write back into a guide of the clients' family"
            )
        for arg in type(base).arg_constraints:
            if arg not in base.__dict__:
                continue  # a lazily derived parameterisation (e.g. logits vs probs)
            current = getattr(base, arg)
            source = [p for p, v in params.items() if _same_storage(v, current)]
            if not source:
                continue
            new = getattr(distribution, arg)
            if new.shape != current.shape:
                raise ValueError(
                    f"site {name!r}: the guide's {arg} has shape {tuple(current.shape)}, the fused "
                    f"posterior {tuple(new.shape)}; size the guide to {fused.num_global} components"
                )
            writes[source[0]] = new.detach().to(current.dtype).clone()
            written.setdefault(name, {})[arg] = source[0]
        if name not in written:
            raise ValueError(
                f"site {name!r}: no pyro.param feeds its distribution directly; set its "
                f"parameters from fused.site_distribution({name!r})"
            )
    store = pyro.get_param_store()
    for param, value in writes.items():
        store[param] = value
    return written


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.data_ptr() == b.data_ptr()


def init_to_fused(fused: "FusedPosterior", fallback: Callable = init_to_feasible) -> Callable:
    """
    An ``init_loc_fn`` for autoguides: fused sites start at the fused posterior's median
    (the transform of the unconstrained fused loc), simplex sites at their fused value,
    other sites at ``fallback``.

    Example::

        >>> guide = AutoDiagonalNormal(model, init_loc_fn=init_to_fused(fused))

    :param fused: a :class:`~pyro_fusion.posterior.FusedPosterior`, or a
        :class:`~pyro_fusion.adapters.base.FusedModel` holding one (its ``posterior``).
    :param fallback: the ``init_loc_fn`` of the other sites.
    """
    fused = getattr(fused, "posterior", fused)

    def init_fn(site):
        name = site["name"]
        if name in fused.simplex:
            return fused.simplex[name][1].clone()
        if name in fused.site_shapes and fused.sources[name] in ("autonormal", "delta"):
            fused.check_support(name, site["fn"].support)
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
