"""Gamma and Beta distributions, elementwise over any event shape."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from .base import ElementwiseFamily, positive_finite
from .dirichlet import DirichletCoordinates, _solver_dtype


def gamma_shape(gap: Tensor, tol: float = 1e-12, max_iter: int = 100) -> Tensor:
    """
    Solve ``digamma(a) - log(a) = gap`` for the Gamma shape ``a > 0``, where
    ``gap = E[log x] - log E[x] < 0`` (the maximum-likelihood shape).

    Minka's generalised Newton iteration ("Estimating a Gamma distribution", 2002): Newton
    steps on ``1 / a``, started from ``(3 - g + sqrt((g - 3)^2 + 24 g)) / (12 g)``, ``g = -gap``.
    Stops when every relative step is below ``tol`` or the residual is at rounding level.
    The solve runs in float64 for float32 input; ``gap >= 0`` (no solution) gives NaN.

    :param Tensor gap: ``E[log x] - log E[x]``, any shape.
    :returns: the shape ``a``, same shape and dtype.
    """
    s = gap.to(_solver_dtype(gap))
    valid = s < 0
    s = torch.where(valid, s, -1.0)  # any solvable value; NaN is put back at the end
    g = -s
    a = (3 - g + ((g - 3).square() + 24 * g).sqrt()) / (12 * g)
    floor = 16 * torch.finfo(s.dtype).eps
    for _ in range(max_iter):
        psi, log_a = torch.digamma(a), a.log()
        residual = psi - log_a - s
        new = (a.reciprocal() + residual / (a.square() * (torch.polygamma(1, a) - a.reciprocal()))).reciprocal()
        step, a = new - a, new
        at_rounding = residual.abs() <= floor * (psi.abs() + log_a.abs() + g)
        if ((step.abs() <= tol * a) | at_rounding).all():
            break
    return torch.where(valid, a, torch.nan).to(gap.dtype)


class Gamma(ElementwiseFamily):
    """
    Independent Gammas over ``event_shape``: ``T(x) = (log x, x)``,
    ``eta = (alpha - 1, -beta)``, ``A = lgamma(alpha) - alpha log(beta)`` per coordinate,
    ``mu = (digamma(alpha) - log(beta), alpha / beta)``. The inverse mean map solves for
    ``alpha`` with :func:`gamma_shape`, then ``beta = alpha / E[x]``.

    Example::

        >>> fam = Gamma(event_shape=(2,))
        >>> eta = fam.natural(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 3.0]))
        >>> fam.concentration_rate(fam.natural_from_mean(fam.mean_params(eta)))[0]
        tensor([2.0000, 0.5000])

    :param event_shape: shape of one draw.
    """

    name = "gamma"
    stat_dim = 2
    domain_hint = "concentration and rate must be positive"

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        concentration, rate = self._event_params(dist, "concentration", "rate")
        return self.natural(concentration, rate)

    def natural(self, concentration: Tensor, rate: Tensor) -> Tensor:
        """
        Natural parameters from ``concentration`` and ``rate`` of shape ``batch + event_shape``.

        :raises ValueError: naming the argument unless both are positive and finite.
        """
        self.require("concentration", concentration, positive_finite(concentration), "positive and finite")
        self.require("rate", rate, positive_finite(rate), "positive and finite")
        return self._stack(concentration - 1, -rate)

    def concentration_rate(self, eta: Tensor):
        """``(concentration, rate)`` of shape ``batch + event_shape``."""
        eta1, eta2 = self._unstack(eta)
        return eta1 + 1, -eta2

    def distribution(self, eta: Tensor) -> Distribution:
        return self._independent(torch.distributions.Gamma(*self.concentration_rate(eta)))

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        alpha, rate = coords[..., 0] + 1, -coords[..., 1]
        return torch.lgamma(alpha) - alpha * rate.log()

    def coord_mean(self, coords: Tensor) -> Tensor:
        alpha, rate = coords[..., 0] + 1, -coords[..., 1]
        return torch.stack([torch.digamma(alpha) - rate.log(), alpha / rate], -1)

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        mean_log, mean = coords.unbind(-1)
        alpha = gamma_shape(mean_log - mean.log())
        return torch.stack([alpha - 1, -alpha / mean], -1)

    def coord_invalid(self, coords: Tensor) -> Tensor:
        return ~((coords[..., 0] > -1) & (coords[..., 1] < 0))


class Beta(DirichletCoordinates, ElementwiseFamily):
    """
    Independent Betas over ``event_shape``: ``T(x) = (log x, log(1 - x))``, ``eta = (a, b)``
    (with base measure ``1 / (x (1 - x))``), ``A = lgamma(a) + lgamma(b) - lgamma(a + b)``
    per coordinate, i.e. a two-category :class:`~pyro_fusion.expfam.Dirichlet`; the inverse
    mean map is :func:`~pyro_fusion.expfam.dirichlet.dirichlet_concentration`.

    Example::

        >>> fam = Beta()
        >>> eta = fam.natural(torch.tensor(2.0), torch.tensor(5.0))
        >>> fam.natural_from_mean(fam.mean_params(eta))
        tensor([2.0000, 5.0000])

    :param event_shape: shape of one draw.
    """

    name = "beta"
    stat_dim = 2

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        a, b = self._event_params(dist, "concentration1", "concentration0")
        return self.natural(a, b)

    def natural(self, concentration1: Tensor, concentration0: Tensor) -> Tensor:
        """
        Natural parameters from torch's ``concentration1`` (a) and ``concentration0`` (b).

        :raises ValueError: naming the argument unless both are positive and finite.
        """
        self.require("concentration1", concentration1, positive_finite(concentration1), "positive and finite")
        self.require("concentration0", concentration0, positive_finite(concentration0), "positive and finite")
        return self._stack(concentration1, concentration0)

    def concentrations(self, eta: Tensor):
        """``(concentration1, concentration0)`` of shape ``batch + event_shape``."""
        a, b = self._unstack(eta)
        return a, b

    def distribution(self, eta: Tensor) -> Distribution:
        return self._independent(torch.distributions.Beta(*self.concentrations(eta)))
