"""
Data sets shipped with pyro_fusion in compact form, each with its licence in ``data/``.
"""

from pyro_fusion.datasets.mocap6 import Mocap6, load_mocap6

__all__ = [
    "Mocap6",
    "load_mocap6",
]
