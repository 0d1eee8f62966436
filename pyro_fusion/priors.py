"""Fused posteriors as the priors of the next fit (continual learning, federated rounds).

:class:`FusedPrior` is a messenger that replaces the priors of fused sites by a
:class:`~pyro_fusion.posterior.FusedPosterior`; :class:`PosteriorPrior` does the same from a
dict of per-site distributions (e.g. a fused BNN's). Both wrap the *model* only.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import pyro
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.poutine.messenger import Messenger
from torch.distributions import Distribution, Independent, TransformedDistribution, biject_to

from .expfam.base import base_distribution


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
    vectorised particles, are broadcast). A run of the model that samples none of some of
    ``sites`` raises :class:`ValueError` naming them (they would be silently ignored)."""

    def __init__(self, sites, size_hint: str):
        super().__init__()
        self.sites = set(sites)
        self.size_hint = size_hint
        self._replaced: set = set()

    def _prior(self, name: str, fn: Distribution) -> Distribution:
        raise NotImplementedError

    def __enter__(self):
        self._replaced = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        unseen = self.sites - self._replaced
        if exc_type is None and unseen:
            raise ValueError(f"sites {sorted(unseen)} are not latent sites of the model, so their new prior "
                             "would be ignored; wrap the model the posterior came from")
        return result

    def _pyro_sample(self, msg):
        if msg["name"] not in self.sites or msg["is_observed"]:
            return
        name, fn = msg["name"], msg["fn"]
        self._replaced.add(name)
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

        >>> posterior = {"loc": fused.posterior.site_distribution("loc")}  # site -> distribution
        >>> prior_model = PosteriorPrior(posterior)(model)  # the model only, not the guide
        >>> svi = SVI(prior_model, fused.guide, Adam({"lr": 0.01}), Trace_ELBO())
        >>> loss = svi.step(new_data, 4)

    A fused network's posterior (:func:`~pyro_fusion.fuse_mlps`) is such a dict:
    ``train_svi(PosteriorPrior(fused.posterior)(fused.model), fused.guide, x_new, y_new)``.

    :param dict posterior: site name -> distribution of the site's shape (``batch_shape +
        event_shape``); trailing dimensions become event dimensions to match the site.
        Point masses are refused (a prior with no spread would pin the site), and a run of
        the model that lacks one of these sites raises :class:`ValueError` naming it.
    """

    def __init__(self, posterior: Dict[str, Distribution]):
        for name, d in posterior.items():
            if not isinstance(d, Distribution):
                raise ValueError(f"site {name!r}: expected a torch Distribution, got {type(d).__name__}")
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
        >>> svi = SVI(prior_model, fused.guide, Adam({"lr": 0.01}), Trace_ELBO())
        >>> loss = svi.step(new_data, 4)  # the new data start from what all clients learned

    :param FusedPosterior fused: the fused posterior, or a
        :class:`~pyro_fusion.adapters.base.FusedModel` holding one (its ``posterior``).
    :param list sites: which fused sites to replace (default all but simplex and
        transformed sites).
    """

    def __init__(self, fused: "FusedPosterior", sites: Optional[Sequence[str]] = None):
        fused = getattr(fused, "posterior", fused)
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
        self.fused.check_support(name, fn.support)
        loc, scale = self.fused.loc_scale(name)
        transform = biject_to(fn.support)
        # unconstrained event dims (a Cholesky factor's event is a vector before the transform)
        event_dim = transform.domain.event_dim + fn.event_dim - transform.codomain.event_dim
        base = pyro.distributions.Normal(loc, scale).to_event(event_dim)
        return FusedSitePrior(base, transform, fn.support)
