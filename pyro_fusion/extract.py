"""Deprecated module (removed in 0.3): :func:`~pyro_fusion.readout.extract` and
:func:`~pyro_fusion.readout.site_estimates` live in :mod:`pyro_fusion.readout`,
:class:`~pyro_fusion.posterior.GuidePosterior` and :class:`~pyro_fusion.posterior.SiteLayout`
in :mod:`pyro_fusion.posterior`."""
from .posterior import GuidePosterior, SiteLayout
from .readout import NON_MEAN_FIELD_HINT, SiteEstimate, extract, site_estimates
from .deprecation import deprecated_module

deprecated_module(__name__, "pyro_fusion.readout and pyro_fusion.posterior", call=extract)

__all__ = ["GuidePosterior", "NON_MEAN_FIELD_HINT", "SiteEstimate", "SiteLayout", "extract", "site_estimates"]
