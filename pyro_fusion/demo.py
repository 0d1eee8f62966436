"""Deprecated module (removed in 0.3): the mocap application lives in :mod:`pyro_fusion.apps.mocap`."""
from .apps import mocap
from .apps.mocap import *  # noqa: F401,F403 (the public names, listed in mocap.__all__)
from .deprecation import deprecated_module

deprecated_module(__name__, "pyro_fusion.apps.mocap")

__all__ = list(mocap.__all__)
