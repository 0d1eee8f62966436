"""Applications built on pyro_fusion: :mod:`pyro_fusion.apps.mocap` (``pyro-fusion demo``), and
:func:`~pyro_fusion.apps.environment.small_run`, the small-size switch of the tutorials."""
from .environment import SMALL_ENV, small_run

__all__ = ["SMALL_ENV", "small_run"]
