"""
The Gaussian-mixture adapter: fuse guides of :func:`~pyro_fusion.models.gmm.gmm_model` (e.g. from
:func:`~pyro_fusion.models.gmm.fit_gmm`) into a guide of the global mixture, :func:`fuse_gmms`.

A mixture component is the components of the sites ``locs``, ``scales`` (and ``corr``), dimension 0;
the mixture ``weights`` are a simplex indexed by components, rebuilt after matching
(:func:`~pyro_fusion.models.gmm.gmm_sites`).
"""

from __future__ import annotations

import functools
from typing import List, Optional

import torch

from ..models.gmm import GMMPrior, gmm_model, gmm_sites
from ..posterior import FusedPosterior, GuidePosterior
from .base import FusedModel, FuseSettings, front_door
from .guide import GuideAdapter

__all__ = ["GMMAdapter", "fuse_gmms"]


class GMMAdapter(GuideAdapter):
    """
    Fusion of Gaussian-mixture guides (see the module docstring); the fused model is
    ``gmm_model`` with the global number of components, its guide a
    :class:`~pyro_fusion.writeback.FusedAutoNormal`: ``fused.guide(data)`` and
    ``fused.model(data)`` take the data only.

    :param GMMPrior prior: the clients' hyperparameters (default :class:`GMMPrior()`).
    :param float simplex_concentration: see :class:`~pyro_fusion.adapters.guide.GuideAdapter`.
    :param engine_options: ``combine``, ``max_sweeps``, ``dtype`` of :func:`~pyro_fusion.fuse`.
    """

    family = "Gaussian mixture"

    def __init__(self, *, prior: Optional[GMMPrior] = None, simplex_concentration: float = 1e-3, **engine_options):
        self.gmm_prior = GMMPrior() if prior is None else prior
        super().__init__(**gmm_sites(self.gmm_prior), simplex_concentration=simplex_concentration, **engine_options)

    def write(self, fused: FusedPosterior, local: List[GuidePosterior], settings: FuseSettings) -> FusedModel:
        model = functools.partial(gmm_model, num_components=fused.num_global, prior=self.gmm_prior)
        dim = fused.site_shapes["locs"][-1]
        guide = fused.to_guide(model, torch.zeros(1, dim))
        return FusedModel(fused, fused.result, model=model, guide=guide, assignments=fused.result.assignments)


fuse_gmms = front_door(
    GMMAdapter,
    "fuse_gmms",
    """
Fuse the clients' Gaussian-mixture guides into one global mixture.

Example::

    >>> from pyro_fusion.models.gmm import fit_gmm, gmm_sites
    >>> centres = torch.tensor([[0.0, 0.0], [6.0, 6.0]])
    >>> client_data = [centres[torch.arange(n) % 2] + torch.randn(n, 2) for n in (80, 120)]
    >>> posts = [extract(fit_gmm(d, 2, num_steps=50, seed=j), **gmm_sites()) for j, d in enumerate(client_data)]
    >>> fused = fuse_gmms(posts, [len(d) for d in client_data])
    >>> fused.num_global
    2

A guide read right after its fit (``extract(guide, **gmm_sites())``) can stand for it: the
clients' ``AutoNormal`` guides share parameter names in Pyro's param store, so only the
last one fitted in a process still holds its values.

:param list local_models: per client, a trained guide of ``gmm_model`` or its ``GuidePosterior``.
:param weights: client weights, e.g. numbers of data points; default each posterior's
    ``weight`` if all have one, else uniform.
:param str direction: KL direction (see :func:`~pyro_fusion.fuse`).
:param int num_global: a fixed number of mixture components (default learned).
:param price: a number, a rule name of :func:`~pyro_fusion.fuse` or a
    :class:`~pyro_fusion.price.Price`; default :func:`~pyro_fusion.price.counterpart_price`.
:param int seed: seed of the matching.
:param bool progress: show progress bars.
:param family_options: :class:`GMMAdapter` options (``prior``, ``simplex_concentration``,
    ``combine``, ``max_sweeps``, ``dtype``).
:rtype: FusedModel
""",
)
