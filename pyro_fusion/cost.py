"""KL cost matrices in Bregman form: one matrix product plus row and column terms.

Fusion works in an *averaging space* with a convex potential ``Phi``:

- ``direction="reverse"`` (objective ``sum KL(global || local)``): coordinates are natural
  parameters ``eta`` and ``Phi = A``, the log-normalizer;
- ``direction="forward"`` (objective ``sum KL(local || global)``): coordinates are mean
  parameters ``mu`` and ``Phi = A*``, its convex conjugate.

In both cases the cost of local ``x_l`` against global ``x_g`` is the Bregman divergence
``D_Phi(x_l, x_g) = Phi(x_l) - Phi(x_g) - <x_l - x_g, grad Phi(x_g)>``, which equals the KL in
the chosen direction, and the weighted barycenter minimising it is the weighted mean of
the ``x``. Writing ``y_g = grad Phi(x_g)`` and ``c_g = <x_g, y_g> - Phi(x_g)``::

    C[l, g] = Phi(x_l) + c_g - <x_l, y_g>

one GEMM of ``[N, d] x [d, M]``: memory ``O(N M + (N + M) d)``, never ``N x M x d``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from .components import Components
from .expfam import ExponentialFamily

DIRECTIONS = ("reverse", "forward")


def check_direction(direction: str) -> None:
    """Raise a ValueError naming ``direction`` unless it is ``"reverse"`` or ``"forward"``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")


class KLGeometry:
    """
    The averaging space of a product of families for one KL direction.

    :param dict families: field name -> family, in the order of :meth:`Components.concat`.
    :param str direction: ``"reverse"`` or ``"forward"``.
    """

    def __init__(self, families: Dict[str, ExponentialFamily], direction: str = "reverse"):
        check_direction(direction)
        self.families = dict(families)
        self.direction = direction
        self.sizes = [f.dim for f in self.families.values()]

    def _map(self, method: str, x: Tensor) -> Tensor:
        if len(self.sizes) == 1:
            return getattr(next(iter(self.families.values())), method)(x)
        parts = x.split(self.sizes, -1)
        return torch.cat([getattr(f, method)(p) for f, p in zip(self.families.values(), parts)], -1)

    def _sum(self, method: str, x: Tensor) -> Tensor:
        parts = x.split(self.sizes, -1)
        return sum(getattr(f, method)(p) for f, p in zip(self.families.values(), parts))

    def coordinates(self, natural: Tensor) -> Tensor:
        """Averaging-space coordinates of concatenated natural parameters."""
        return natural if self.direction == "reverse" else self._map("mean_params", natural)

    def natural(self, x: Tensor) -> Tensor:
        """Concatenated natural parameters of averaging-space coordinates ``x``."""
        return x if self.direction == "reverse" else self._map("natural_from_mean", x)

    def potential(self, x: Tensor) -> Tensor:
        """``Phi(x)``, summed over fields."""
        method = "log_normalizer" if self.direction == "reverse" else "conjugate"
        return self._sum(method, x)

    def dual(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """
        ``(y, c, phi)`` with ``y = grad Phi(x)``, ``c = <x, y> - Phi(x)`` and ``phi = Phi(x)``:
        what a global component contributes to cost matrices and to the objective.
        """
        if self.direction == "reverse":
            y = self._map("mean_params", x)
            phi = self._sum("log_normalizer", x)
            return y, torch.linalg.vecdot(x, y) - phi, phi
        y = self._map("natural_from_mean", x)
        c = self._sum("log_normalizer", y)
        return y, c, torch.linalg.vecdot(x, y) - c

    @staticmethod
    def cost(x: Tensor, phi_x: Tensor, y: Tensor, c: Tensor) -> Tensor:
        """``C[l, g] = phi_x[l] + c[g] - <x[l], y[g]>`` in one fused GEMM."""
        out = torch.addmm(c.to(x.dtype).expand(x.shape[0], -1), x, y.to(x.dtype).T, alpha=-1)
        return out.add_(phi_x.to(x.dtype).unsqueeze(-1))


def kl_cost_matrix(local: Components, global_: Components, direction: str = "reverse") -> Tensor:
    """
    The ``[N, M]`` matrix of KL divergences between ``N`` local and ``M`` global components:
    ``KL(global_g || local_l)`` for ``direction="reverse"``, ``KL(local_l || global_g)`` for
    ``"forward"``; summed over fields.

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.randn(5, 3), 1.0)})
        >>> b = Components.from_distributions({"x": Normal(torch.randn(7, 3), 1.0)})
        >>> kl_cost_matrix(a, b).shape
        torch.Size([5, 7])

    :param Components local: ``N`` components.
    :param Components global_: ``M`` components with the same fields and families.
    :param str direction: ``"reverse"`` or ``"forward"``.
    """
    if local.families != global_.families:
        raise ValueError(
            f"local and global components differ in fields or families: "
            f"{local.families} vs {global_.families}"
        )
    geometry = KLGeometry(local.families, direction)
    dtype = torch.promote_types(local.dtype, global_.dtype)
    x = geometry.coordinates(local.concat().to(dtype))
    y, c, _ = geometry.dual(geometry.coordinates(global_.concat().to(dtype)))
    return geometry.cost(x, geometry.potential(x), y, c)
