"""The environment the tutorials and applications read: one switch for their small size."""

from __future__ import annotations

import os

from ..deprecation import warn

__all__ = ["SMALL_ENV", "small_run"]

#: ``PYRO_FUSION_SMALL=1`` runs tutorials at a small size (the tests do)
SMALL_ENV = "PYRO_FUSION_SMALL"
#: the variables it replaces (honoured, with a warning, until 0.3)
OLD_SMALL_ENVS = ("PYRO_FUSION_SMOKE", "PYRO_FUSION_TUTORIAL_SMALL")


def small_run() -> bool:
    """
    Whether to run at the small size: ``PYRO_FUSION_SMALL=1`` (the old ``PYRO_FUSION_SMOKE=1``
    and ``PYRO_FUSION_TUTORIAL_SMALL=1`` still count, with a :class:`DeprecationWarning`).

    Example::

        >>> SMALL = small_run()
        >>> STEPS = 30 if SMALL else 400
    """
    for old in OLD_SMALL_ENVS:
        if os.environ.get(old) is not None and os.environ.get(SMALL_ENV) is None:
            warn(f"the environment variable {old}", SMALL_ENV)
            return os.environ[old] == "1"
    return os.environ.get(SMALL_ENV) == "1"
