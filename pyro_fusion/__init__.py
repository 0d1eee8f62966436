"""pyro_fusion: fuse mean-field Pyro guides trained by separate parties (KL-fusion).

The front doors, one per model family, share one signature and return a
:class:`~pyro_fusion.adapters.base.FusedModel`: :func:`fuse_posteriors` (any mean-field guide),
:func:`fuse_gmms`, :func:`fuse_hmms`, :func:`fuse_lda` and :func:`fuse_mlps`. The engine below them
is :func:`fuse` (components in, :class:`FusionResult` out).
"""
from .adapters.base import FusedModel, FusionAdapter, Layout
from .adapters.bnn import fuse_mlps
from .adapters.gmm import fuse_gmms
from .adapters.guide import fuse_posteriors
from .adapters.hmm import fuse_hmms
from .adapters.lda import fuse_lda
from .barycenter import barycenter
from .components import Components, Field
from .cost import KLGeometry, kl_cost_matrix
from .deprecation import moved
from .fusion import FusionResult, LazyClients, default_price, fuse, price_of, spread_price
from .io import load_components, save_components
from .posterior import FusedPosterior, GuidePosterior
from .price import Price, counterpart_price
from .priors import FusedPrior, PosteriorPrior
from .readout import extract
from .writeback import FusedAutoNormal, init_to_fused

__version__ = "0.2.0"

__all__ = [
    "Components",
    "Field",
    "FusedAutoNormal",
    "FusedModel",
    "FusedPosterior",
    "FusedPrior",
    "FusionAdapter",
    "FusionResult",
    "GuidePosterior",
    "KLGeometry",
    "Layout",
    "LazyClients",
    "PosteriorPrior",
    "Price",
    "barycenter",
    "counterpart_price",
    "default_price",
    "extract",
    "fuse",
    "fuse_gmms",
    "fuse_hmms",
    "fuse_lda",
    "fuse_mlps",
    "fuse_posteriors",
    "init_to_fused",
    "kl_cost_matrix",
    "load_components",
    "price_of",
    "save_components",
    "spread_price",
]

__getattr__ = moved(__name__, {"load_result": "pyro_fusion.fusion:FusionResult.load"})
