"""Dirichlet distributions over the last event axis, and the Newton solver for their mean map."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from .base import positive_finite
from .vector import VectorFamily


def _solver_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.dtype


def inverse_digamma_start(y: Tensor) -> Tensor:
    """Minka's starting point for solving ``digamma(a) = y``: ``exp(y) + 1/2`` or ``-1 / (y + gamma)``."""
    euler_gamma = 0.5772156649015329
    return torch.where(y >= -2.22, y.exp() + 0.5, -1 / (y.clamp(max=-2.22) + euler_gamma))


def dirichlet_concentration(mean_log: Tensor, tol: float = 1e-12, max_iter: int = 100) -> Tensor:
    """
    Solve ``digamma(alpha_k) - digamma(sum(alpha)) = mean_log_k`` for ``alpha > 0`` over the
    last axis, i.e. the Dirichlet whose ``E[log x]`` is ``mean_log`` (its maximum-likelihood fit).

    Vectorised Newton (Minka 2000, "Estimating a Dirichlet distribution"): the Hessian of the
    concave log-likelihood is ``diag(q) + z 11^T`` and is inverted in closed form. The start
    solves ``digamma(alpha_k) = mean_log_k + digamma(s)`` approximately, with the total
    ``s = (K - 1) / (-2 logsumexp(mean_log))`` from ``digamma(a) ~ log(a) - 1/(2a)``. Steps are shortened so that no concentration
    falls below a tenth of its value; iteration stops when every relative step is below
    ``tol`` or the residual is at rounding level (or after ``max_iter``). The solve runs in float64 for float32 input.
    There is a solution iff ``logsumexp(mean_log) < 0``; other rows give NaN.

    :param Tensor mean_log: ``E[log x]`` of shape ``(..., K)``, ``K >= 2``.
    :returns: ``alpha`` of the same shape and dtype.
    """
    x = mean_log.to(_solver_dtype(mean_log))
    lse = x.logsumexp(-1, keepdim=True)
    valid = lse < 0
    x = torch.where(valid, x, -1.0)  # any solvable row; NaN is put back at the end
    lse = torch.where(valid, lse, x.logsumexp(-1, keepdim=True))
    alpha = inverse_digamma_start(x + torch.digamma((x.shape[-1] - 1) / (-2 * lse)))
    floor = 16 * torch.finfo(x.dtype).eps
    for _ in range(max_iter):
        alpha0 = alpha.sum(-1, keepdim=True)
        psi, psi0 = torch.digamma(alpha), torch.digamma(alpha0)
        grad = x - psi + psi0
        q = -torch.polygamma(1, alpha)
        z = torch.polygamma(1, alpha0)
        b = (grad / q).sum(-1, keepdim=True) / (z.reciprocal() + q.reciprocal().sum(-1, keepdim=True))
        step = (b - grad) / q
        shrink = (-0.9 * alpha / step).masked_fill(step >= 0, 1.0).amin(-1, keepdim=True)
        step = step * shrink.clamp(max=1.0)
        alpha = alpha + step
        at_rounding = grad.abs() <= floor * (x.abs() + psi.abs() + psi0.abs())
        if ((step.abs() <= tol * alpha) | at_rounding).all():
            break
    alpha = torch.where(valid, alpha, torch.nan)
    return alpha.to(mean_log.dtype)


class DirichletCoordinates:
    """The Dirichlet maps on blocks of concentrations ``(..., n, K)``, shared by
    :class:`Dirichlet` and :class:`~pyro_fusion.expfam.Beta` (``K = 2``)."""

    domain_hint = "concentrations must be positive"

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        return torch.lgamma(coords).sum(-1) - torch.lgamma(coords.sum(-1))

    def coord_mean(self, coords: Tensor) -> Tensor:
        return torch.digamma(coords) - torch.digamma(coords.sum(-1, keepdim=True))

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        return dirichlet_concentration(coords)

    def coord_invalid(self, coords: Tensor) -> Tensor:
        return ~(coords > 0).all(-1)


class Dirichlet(DirichletCoordinates, VectorFamily):
    """
    Independent Dirichlets over the last event axis, one per index of the others (e.g. the
    rows of a transition matrix, ``event_shape = (S, S)``): ``T(x) = log x``, ``eta = alpha``
    (with base measure ``1 / prod x``), ``A = sum lgamma(alpha) - lgamma(alpha_0)``,
    ``mu = digamma(alpha) - digamma(alpha_0)``. The inverse mean map is
    :func:`dirichlet_concentration`.

    Example::

        >>> fam = Dirichlet(event_shape=(3,))
        >>> eta = fam.natural(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> torch.allclose(fam.natural_from_mean(fam.mean_params(eta)), eta)
        True

    :param event_shape: ``outer + (K,)`` with ``K >= 2`` categories.
    """

    name = "dirichlet"
    min_size = 2

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        (concentration,) = self._event_params(dist, "concentration")
        return self.natural(concentration)

    def natural(self, concentration: Tensor) -> Tensor:
        """
        Natural parameters from ``concentration`` of shape ``batch + event_shape``.

        :raises ValueError: unless every concentration is positive and finite.
        """
        self.require("concentration", concentration, positive_finite(concentration), "positive and finite")
        return self._join_blocks(concentration)

    def concentration(self, eta: Tensor) -> Tensor:
        """Concentrations of shape ``batch + event_shape``."""
        return self._outer_coords(eta)

    def distribution(self, eta: Tensor) -> Distribution:
        base = torch.distributions.Dirichlet(self.concentration(eta))
        return self._independent_outer(base)
