"""pyro_fusion: fuse mean-field Pyro guides trained by separate parties (KL-fusion)."""
from .barycenter import barycenter
from .components import Components, Field
from .cost import KLGeometry, kl_cost_matrix
from .fusion import FusionResult, default_price, fuse
from .io import load_components, load_result, save_components

__version__ = "0.1.0"

__all__ = [
    "Components",
    "Field",
    "FusionResult",
    "KLGeometry",
    "barycenter",
    "default_price",
    "fuse",
    "kl_cost_matrix",
    "load_components",
    "load_result",
    "save_components",
]
