"""Normal families with diagonal covariance, and point estimates read as Normals."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal

from .base import ElementwiseFamily, check_positive_real, positive_finite


class DiagNormal(ElementwiseFamily):
    """
    Independent Normals over ``event_shape``: ``T(x) = (x, x^2)``,
    ``eta = (m / s^2, -1 / (2 s^2))``, ``A = m^2 / (2 s^2) + log s`` per coordinate.

    Example::

        >>> fam = DiagNormal(event_shape=(3,))
        >>> eta = fam.natural_from_distribution(Normal(torch.zeros(5, 3), torch.ones(5, 3)))
        >>> eta.shape
        torch.Size([5, 6])

    :param event_shape: shape of one draw.
    """

    name = "normal"
    stat_dim = 2
    domain_hint = "scales must be positive and finite"

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        loc, scale = self._event_params(dist, "loc", "scale")
        return self.natural(loc, scale)

    def natural(self, loc: Tensor, scale: Tensor) -> Tensor:
        """
        Natural parameters from ``loc`` and ``scale`` of shape ``batch + event_shape``.

        :raises ValueError: naming the argument if ``loc`` is not finite, ``scale`` is not
            positive and finite, or the parameters overflow the dtype (e.g. ``scale=1e-200``).
        """
        self.require("loc", loc, torch.isfinite(loc), "finite")
        self.require("scale", scale, positive_finite(scale), "positive and finite")
        precision = scale.pow(-2)
        return self.require_finite_result(self._stack(loc * precision, -0.5 * precision), "loc and scale")

    def loc_scale(self, eta: Tensor):
        """``(loc, scale)`` of shape ``batch + event_shape``."""
        eta1, eta2 = self._unstack(eta)
        return -0.5 * eta1 / eta2, (-0.5 / eta2).sqrt()

    def distribution(self, eta: Tensor) -> Distribution:
        return self._independent(Normal(*self.loc_scale(eta)))

    def location(self, eta: Tensor) -> Tensor:
        coords = self._split(eta)
        return -0.5 * coords[..., 0] / coords[..., 1]

    def translate(self, eta: Tensor, shift: Tensor) -> Tensor:
        """``(m - t) / s^2 = eta_1 + 2 t eta_2``; the precision does not move.

        Example::

            >>> fam = DiagNormal(event_shape=(1,))
            >>> fam.loc_scale(fam.translate(fam.natural(torch.tensor([5.0]), torch.tensor([2.0])), 4.0))
            (tensor([1.]), tensor([2.]))
        """
        coords = self._split(eta)
        eta1 = coords[..., 0] + 2 * shift * coords[..., 1]
        return self._join(torch.stack([eta1, coords[..., 1].expand_as(eta1)], -1))

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        eta1, eta2 = coords.unbind(-1)
        return -0.25 * eta1.square() / eta2 - 0.5 * torch.log(-2 * eta2)

    def coord_mean(self, coords: Tensor) -> Tensor:
        eta1, eta2 = coords.unbind(-1)
        mean = -0.5 * eta1 / eta2
        return torch.stack([mean, mean.square() - 0.5 / eta2], -1)

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        mean, second = coords.unbind(-1)
        precision = (second - mean.square()).reciprocal()
        return torch.stack([mean * precision, -0.5 * precision], -1)

    def coord_invalid(self, coords: Tensor) -> Tensor:
        return ~(coords[..., 1] < 0)


class PointMass(ElementwiseFamily):
    """
    Point estimates (e.g. :class:`~pyro.infer.autoguide.AutoDelta` values) read as isotropic
    Normals of a fixed, user-set ``scale``: ``T(x) = x``, ``eta = m / scale^2``,
    ``A = scale^2 eta^2 / 2``. The KL between two of them is ``|m_1 - m_2|^2 / (2 scale^2)``
    and both barycenters are the weighted mean, so point estimates fuse with the same engine.

    Example::

        >>> fam = PointMass(event_shape=(2,), scale=0.1)
        >>> eta = fam.natural(torch.tensor([[0.0, 1.0]]))
        >>> fam.kl(eta, fam.natural(torch.tensor([[0.0, 0.0]])))
        tensor([50.])

    :param event_shape: shape of one value.
    :param float scale: the standard deviation the point estimates are read with.
    """

    name = "point_mass"
    stat_dim = 1
    spec_args = ("scale",)
    domain_hint = "values must be finite"

    def __init__(self, event_shape: Sequence[int] = (), scale: float = 1.0):
        scale = check_positive_real(scale, "PointMass scale (point_scale)")
        super().__init__(event_shape)
        self.scale = scale

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        """Reads ``dist.mean`` (a :class:`~pyro.distributions.Delta` value or any location)."""
        (mean,) = self._event_params(dist, "mean")
        return self.natural(mean)

    def natural(self, value: Tensor) -> Tensor:
        """
        Natural parameters of point estimates of shape ``batch + event_shape``.

        :raises ValueError: if a value is not finite, or ``value / scale**2`` overflows the
            dtype (the scale is too small for these values).
        """
        self.require("value", value, torch.isfinite(value), "finite")
        return self.require_finite_result(self._stack(value / self.scale**2), f"values at scale {self.scale}")

    def value(self, eta: Tensor) -> Tensor:
        """The point estimates, shape ``batch + event_shape``."""
        return self._unstack(eta)[0] * self.scale**2

    def distribution(self, eta: Tensor) -> Distribution:
        value = self.value(eta)
        return self._independent(Normal(value, torch.full_like(value, self.scale)))

    def location(self, eta: Tensor) -> Tensor:
        return eta * self.scale**2

    def translate(self, eta: Tensor, shift: Tensor) -> Tensor:
        return eta - shift / self.scale**2

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        return 0.5 * self.scale**2 * coords[..., 0].square()

    def coord_mean(self, coords: Tensor) -> Tensor:
        return coords * self.scale**2

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        return coords / self.scale**2

    def coord_invalid(self, coords: Tensor) -> Tensor:
        return torch.zeros(coords.shape[:-1], dtype=torch.bool, device=coords.device)
