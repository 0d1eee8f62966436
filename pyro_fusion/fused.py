"""Deprecated module (removed in 0.3): :class:`~pyro_fusion.posterior.FusedPosterior` lives in
:mod:`pyro_fusion.posterior`, :func:`~pyro_fusion.fuse_posteriors` (now returning a
:class:`~pyro_fusion.FusedModel`) in :mod:`pyro_fusion.adapters.guide`,
:class:`~pyro_fusion.writeback.FusedAutoNormal` and :func:`~pyro_fusion.writeback.init_to_fused`
in :mod:`pyro_fusion.writeback`, :class:`~pyro_fusion.priors.FusedPrior` and
:class:`~pyro_fusion.priors.PosteriorPrior` in :mod:`pyro_fusion.priors`."""
from .adapters.guide import fuse_posteriors
from .posterior import FusedPosterior
from .priors import FusedPrior, FusedSitePrior, PosteriorPrior
from .writeback import FusedAutoNormal, init_to_fused
from .deprecation import deprecated_module

deprecated_module(
    __name__, "pyro_fusion (fuse_posteriors), pyro_fusion.posterior, pyro_fusion.writeback and pyro_fusion.priors"
)

__all__ = [
    "FusedAutoNormal", "FusedPosterior", "FusedPrior", "FusedSitePrior", "PosteriorPrior", "fuse_posteriors",
    "init_to_fused",
]
