"""Applications built on pyro_fusion: :mod:`pyro_fusion.apps.mocap` (``pyro-fusion demo``)."""
