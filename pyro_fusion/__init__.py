"""pyro_fusion: fuse mean-field Pyro guides trained by separate parties (KL-fusion)."""
from .barycenter import barycenter
from .components import Components, Field
from .cost import KLGeometry, kl_cost_matrix
from .extract import GuidePosterior, extract
from .fused import (
    FusedAutoNormal,
    FusedPosterior,
    FusedPrior,
    PosteriorPrior,
    fuse_posteriors,
    init_to_fused,
)
from .fusion import FusionResult, default_price, fuse, spread_price
from .io import load_components, load_result, save_components

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
    "load_result",
    "spread_price",
    "save_components",
]
