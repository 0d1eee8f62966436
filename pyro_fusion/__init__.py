"""pyro_fusion: fuse mean-field Pyro guides trained by separate parties (KL-fusion)."""
from .barycenter import barycenter
from .components import Components, Field
from .cost import KLGeometry, kl_cost_matrix
from .deprecation import moved
from .fusion import FusionResult, default_price, fuse, spread_price
from .io import load_components, save_components
from .posterior import FusedPosterior, GuidePosterior, fuse_posteriors
from .priors import FusedPrior, PosteriorPrior
from .readout import extract
from .writeback import FusedAutoNormal, init_to_fused

__version__ = "0.1.0"

__all__ = [
    "Components",
    "Field",
    "FusedAutoNormal",
    "FusedPosterior",
    "FusedPrior",
    "PosteriorPrior",
    "FusionResult",
    "GuidePosterior",
    "KLGeometry",
    "barycenter",
    "default_price",
    "extract",
    "fuse",
    "fuse_posteriors",
    "init_to_fused",
    "kl_cost_matrix",
    "load_components",
    "spread_price",
    "save_components",
]

__getattr__ = moved(__name__, {"load_result": "pyro_fusion.fusion:FusionResult.load"})
