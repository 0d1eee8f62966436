"""Full-covariance Gaussians, and the Normal-Wishart prior/posterior of a Gaussian's mean and precision."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .base import base_distribution, positive_finite
from .dirichlet import _solver_dtype
from .vector import VectorFamily


def _sym(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.mT)


def _outer(x: Tensor) -> Tensor:
    return x.unsqueeze(-1) * x.unsqueeze(-2)


def _quad(matrix: Tensor, x: Tensor) -> Tensor:
    """``x^T matrix x`` over the last axes."""
    return (x.unsqueeze(-2) @ matrix @ x.unsqueeze(-1))[..., 0, 0]


def _log_det(tril: Tensor) -> Tensor:
    return 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _pd_failed(matrix: Tensor) -> Tensor:
    """True where a symmetric matrix is not (numerically) positive definite or not finite."""
    return (torch.linalg.cholesky_ex(matrix).info != 0) | ~matrix.isfinite().all(-1).all(-1)


def _require_pd(family, name: str, matrix: Tensor) -> None:
    """Raise :class:`ValueError` naming ``name`` and the first batch index where ``matrix`` is
    not finite, symmetric (to torch's tolerance) and positive definite."""
    finite = matrix.isfinite().all(-1).all(-1)
    safe = torch.where(finite.unsqueeze(-1).unsqueeze(-1), matrix, torch.eye(matrix.shape[-1], dtype=matrix.dtype))
    valid = finite & constraints.positive_definite.check(safe)
    if not bool(valid.all()):
        index = [int(i) for i in (~valid).nonzero()[0]] if valid.dim() else []
        raise ValueError(
            f"{type(family).__name__}: {name} must be finite, symmetric and positive definite; "
            f"the matrix at batch index {index} is not"
        )


class MultivariateNormal(VectorFamily):
    """
    Full-covariance Gaussians over the last event axis (independent over the others):
    ``T(x) = (x, x x^T)``, ``eta = (P m, -P / 2)`` with the precision ``P`` flattened,
    ``A = m^T P m / 2 - log det P / 2``, ``mu = (m, P^-1 + m m^T)``. The second block is
    symmetrised before use, so ``eta`` is valid iff ``-(eta_2 + eta_2^T)`` is positive definite.

    Example::

        >>> fam = MultivariateNormal(event_shape=(2,))
        >>> eta = fam.natural(torch.zeros(2), covariance_matrix=torch.eye(2))
        >>> fam.distribution(eta).covariance_matrix
        tensor([[1., 0.],
                [0., 1.]])

    :param event_shape: ``outer + (D,)``.
    """

    name = "mvn"
    domain_hint = "precision matrices must be symmetric positive definite"

    @staticmethod
    def block_dim(size: int) -> int:
        return size + size * size

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        base = base_distribution(dist)
        return self.natural(base.loc, precision_matrix=base.precision_matrix)

    def natural(
        self,
        loc: Tensor,
        covariance_matrix: Optional[Tensor] = None,
        precision_matrix: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Natural parameters from ``loc`` (shape ``batch + event_shape``) and exactly one of
        ``covariance_matrix`` or ``precision_matrix`` (shape ``batch + event_shape + (D,)``).
        """
        if (covariance_matrix is None) == (precision_matrix is None):
            raise ValueError("give exactly one of covariance_matrix and precision_matrix")
        matrix = precision_matrix if covariance_matrix is None else covariance_matrix
        d = self.size
        if matrix.dim() < 2 or matrix.shape[-2:] != (d, d):
            raise ValueError(f"expected {d} x {d} matrices for {self!r}, got shape {tuple(matrix.shape)}")
        loc = loc.expand(torch.broadcast_shapes(loc.shape, matrix.shape[:-1]))
        self._check_event("loc", loc)
        self.require("loc", loc, torch.isfinite(loc), "finite")
        _require_pd(self, "precision_matrix" if covariance_matrix is None else "covariance_matrix", matrix)
        if precision_matrix is None:
            precision_matrix = torch.cholesky_inverse(torch.linalg.cholesky(covariance_matrix))
        precision_matrix = _sym(precision_matrix)
        eta1 = (precision_matrix @ loc.unsqueeze(-1))[..., 0]
        eta = self._join_blocks(eta1, -0.5 * precision_matrix.flatten(-2))
        return self.require_finite_result(eta, "loc and matrices")

    def _blocks(self, coords: Tensor) -> Tuple[Tensor, Tensor]:
        """``(eta_1, precision)`` from coordinates ``(..., D + D^2)``."""
        d = self.size
        eta2 = coords[..., d:].unflatten(-1, (d, d))
        return coords[..., :d], -(eta2 + eta2.mT)

    def loc_precision(self, eta: Tensor) -> Tuple[Tensor, Tensor]:
        """``(loc, precision_matrix)`` of shapes ``batch + event_shape`` and ``... + (D, D)``."""
        eta1, precision = self._blocks(self._outer_coords(eta))
        loc = torch.cholesky_solve(eta1.unsqueeze(-1), torch.linalg.cholesky(precision))[..., 0]
        return loc, precision

    def distribution(self, eta: Tensor) -> Distribution:
        loc, precision = self.loc_precision(eta)
        return self._independent_outer(torch.distributions.MultivariateNormal(loc, precision_matrix=precision))

    def location(self, eta: Tensor) -> Tensor:
        loc = self.loc_precision(eta)[0]
        return loc.reshape(eta.shape[:-1] + (self.num_coords * self.size,))

    def translate(self, eta: Tensor, shift: Tensor) -> Tensor:
        """``P (m - t) = eta_1 - P t``; the precision does not move."""
        coords = self._outer_coords(eta)
        eta1, precision = self._blocks(coords)
        shift = shift.reshape(shift.shape[:-1] + self.event_shape)
        eta1 = eta1 - (precision @ shift.unsqueeze(-1))[..., 0]
        return self._join_blocks(eta1, coords[..., self.size :])

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        eta1, precision = self._blocks(coords)
        tril = torch.linalg.cholesky_ex(precision).L
        white = torch.linalg.solve_triangular(tril, eta1.unsqueeze(-1), upper=False)[..., 0]
        return 0.5 * white.square().sum(-1) - 0.5 * _log_det(tril)

    def coord_mean(self, coords: Tensor) -> Tensor:
        eta1, precision = self._blocks(coords)
        covariance = torch.cholesky_inverse(torch.linalg.cholesky_ex(precision).L)
        mean = (covariance @ eta1.unsqueeze(-1))[..., 0]
        return torch.cat([mean, (covariance + _outer(mean)).flatten(-2)], -1)

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        d = self.size
        mean, second = coords[..., :d], _sym(coords[..., d:].unflatten(-1, (d, d)))
        tril, info = torch.linalg.cholesky_ex(second - _outer(mean))
        precision = torch.cholesky_inverse(tril)
        eta = torch.cat([(precision @ mean.unsqueeze(-1))[..., 0], -0.5 * precision.flatten(-2)], -1)
        return eta.masked_fill((info != 0).unsqueeze(-1), torch.nan)

    def coord_invalid(self, coords: Tensor) -> Tensor:
        return _pd_failed(self._blocks(coords)[1])


def _log_multigamma(a: Tensor, d: int) -> Tensor:
    """``log Gamma_d(a)``, defined (not raising) for every ``a``."""
    i = torch.arange(d, dtype=a.dtype, device=a.device)
    return d * (d - 1) / 4 * math.log(math.pi) + torch.lgamma(a.unsqueeze(-1) - i / 2).sum(-1)


def _multi_digamma(a: Tensor, d: int, order: int = 0) -> Tensor:
    """``sum_{i<d} polygamma(order, a - i/2)``."""
    i = torch.arange(d, dtype=a.dtype, device=a.device)
    return torch.polygamma(order, a.unsqueeze(-1) - i / 2).sum(-1)


def wishart_dof(gap: Tensor, d: int, tol: float = 1e-12, max_iter: int = 100) -> Tensor:
    """
    Solve ``sum_{i=1..d} digamma((nu + 1 - i) / 2) - d log(nu / 2) = gap`` for ``nu > d - 1``,
    where ``gap = E[log det L] - log det E[L] < 0`` for a Wishart ``L``.

    The left side is increasing and concave in ``nu``, so Newton converges monotonically
    once left of the root; a step that would leave ``nu > d - 1`` goes halfway to the bound
    instead. Start: ``nu = d (d + 1) / (-2 gap)`` from ``digamma(a) ~ log(a) - 1/(2a)``.
    Runs in float64 for float32 input; ``gap >= 0`` (no solution) gives NaN.

    :param Tensor gap: any shape.
    :param int d: dimension of the Wishart.
    """
    s = gap.to(_solver_dtype(gap))
    valid = s < 0
    s = torch.where(valid, s, -1.0)  # any solvable value; NaN is put back at the end
    bound = d - 1.0
    nu = (d * (d + 1) / (-2 * s)).clamp(min=bound + 1e-3)
    floor = 16 * torch.finfo(s.dtype).eps
    for _ in range(max_iter):
        psi, log_half = _multi_digamma(nu / 2, d), d * (nu / 2).log()
        residual = psi - log_half - s
        slope = 0.5 * _multi_digamma(nu / 2, d, order=1) - d / nu
        new = nu - residual / slope
        new = torch.where(new > bound, new, 0.5 * (nu + bound))
        step, nu = new - nu, new
        at_rounding = residual.abs() <= floor * (psi.abs() + log_half.abs())
        if ((step.abs() <= tol * nu) | at_rounding).all():
            break
    return torch.where(valid, nu, torch.nan).to(gap.dtype)


class NormalWishartDistribution(Distribution):
    """
    Normal-Wishart distribution of a Gaussian's mean ``mu`` and precision ``Lambda``:
    ``Lambda ~ Wishart(nu, W)`` and ``mu | Lambda ~ N(m, (kappa Lambda)^-1)``, the
    parametrisation of variational Bayesian GMM/HMM code (Bishop, PRML §10.2).

    A draw is the pair ``(mu, Lambda)`` of shapes ``batch + (D,)`` and ``batch + (D, D)``;
    :meth:`log_prob` takes such a pair. ``event_shape`` is ``(D,)``.

    Example::

        >>> d = NormalWishartDistribution(torch.tensor(2.0), torch.tensor(5.0), torch.zeros(3), torch.eye(3))
        >>> mu, lam = d.sample((4,))
        >>> d.log_prob((mu, lam)).shape
        torch.Size([4])

    :param Tensor kappa: precision scale of the mean, shape ``batch``.
    :param Tensor nu: Wishart degrees of freedom ``> D - 1``, shape ``batch``.
    :param Tensor loc: mean of the mean ``m``, shape ``batch + (D,)``.
    :param Tensor scale_matrix: Wishart scale ``W`` (``E[Lambda] = nu W``), shape ``batch + (D, D)``.
    """

    arg_constraints = {
        "kappa": constraints.positive,
        "nu": constraints.positive,
        "loc": constraints.real_vector,
        "scale_matrix": constraints.positive_definite,
    }
    has_rsample = True

    def __init__(
        self, kappa: Tensor, nu: Tensor, loc: Tensor, scale_matrix: Tensor, validate_args: Optional[bool] = None
    ):
        d = loc.shape[-1]
        batch_shape = torch.broadcast_shapes(kappa.shape, nu.shape, loc.shape[:-1], scale_matrix.shape[:-2])
        self.kappa = kappa.expand(batch_shape)
        self.nu = nu.expand(batch_shape)
        self.loc = loc.expand(batch_shape + (d,))
        self.scale_matrix = scale_matrix.expand(batch_shape + (d, d))
        super().__init__(batch_shape, torch.Size([d]), validate_args=validate_args)
        if self._validate_args and not (self.nu > d - 1).all():
            raise ValueError(f"NormalWishartDistribution needs nu > D - 1 = {d - 1}")

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tuple[Tensor, Tensor]:
        """Bartlett decomposition: ``Lambda = (C B)(C B)^T`` with ``C = chol(W)``, then ``mu``."""
        d = self.event_shape[0]
        shape = torch.Size(sample_shape) + self.batch_shape
        dof = self.nu.expand(shape).unsqueeze(-1) - torch.arange(d, dtype=self.nu.dtype, device=self.nu.device)
        chi = torch.distributions.Chi2(dof, validate_args=False).rsample().sqrt()
        noise = torch.randn(shape + (d, d), dtype=self.loc.dtype, device=self.loc.device).tril(-1)
        tril = torch.linalg.cholesky(self.scale_matrix) @ (noise + chi.diag_embed())
        precision = tril @ tril.mT
        eps = torch.randn(shape + (d, 1), dtype=self.loc.dtype, device=self.loc.device)
        scaled_tril = self.kappa.sqrt().unsqueeze(-1).unsqueeze(-1) * tril  # chol(kappa Lambda)
        mu = self.loc + torch.linalg.solve_triangular(scaled_tril.mT, eps, upper=True)[..., 0]
        return mu, precision

    def log_prob(self, value: Tuple[Tensor, Tensor]) -> Tensor:
        mu, precision = value
        scaled = self.kappa.unsqueeze(-1).unsqueeze(-1) * precision
        normal = torch.distributions.MultivariateNormal(self.loc, precision_matrix=scaled, validate_args=False)
        wishart = torch.distributions.Wishart(self.nu, covariance_matrix=self.scale_matrix, validate_args=False)
        return wishart.log_prob(precision) + normal.log_prob(mu)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        return type(self)(
            self.kappa.expand(batch_shape),
            self.nu.expand(batch_shape),
            self.loc.expand(batch_shape + (d,)),
            self.scale_matrix.expand(batch_shape + (d, d)),
            validate_args=False,
        )


class NormalWishart(VectorFamily):
    """
    Normal-Wishart distributions (:class:`NormalWishartDistribution`) over the last event axis
    ``D``, independent over the others. With ``L`` the precision and ``x`` the mean:
    ``T = (L x, x^T L x, L, log det L)``,
    ``eta = (kappa m, -kappa / 2, -(W^-1 + kappa m m^T) / 2, (nu - D) / 2)`` (the third block
    flattened and symmetrised before use),
    ``A = -D/2 log kappa + nu/2 log det W + nu D/2 log 2 + log Gamma_D(nu / 2)`` and
    ``mu = (nu W m, D / kappa + nu m^T W m, nu W, sum_i digamma((nu + 1 - i) / 2) + D log 2 + log det W)``.
    The inverse mean map is closed form except for ``nu``, solved by :func:`wishart_dof`.

    Example::

        >>> fam = NormalWishart(event_shape=(2,))
        >>> eta = fam.natural(torch.tensor(1.0), torch.tensor(4.0), torch.zeros(2), torch.eye(2))
        >>> fam.distribution(eta).nu
        tensor(4.)

    :param event_shape: ``outer + (D,)``.
    """

    name = "normal_wishart"
    domain_hint = "need kappa > 0, nu > D - 1 and a positive definite scale matrix"

    @staticmethod
    def block_dim(size: int) -> int:
        return size * size + size + 2

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        base = base_distribution(dist)
        return self.natural(base.kappa, base.nu, base.loc, base.scale_matrix)

    def natural(self, kappa: Tensor, nu: Tensor, loc: Tensor, scale_matrix: Tensor) -> Tensor:
        """
        Natural parameters from ``kappa`` and ``nu`` (shape ``batch + outer``), ``loc`` (shape
        ``batch + event_shape``) and the Wishart scale ``W`` (shape ``batch + event_shape + (D,)``).
        """
        d = self.size
        if scale_matrix.dim() < 2 or scale_matrix.shape[-2:] != (d, d):
            raise ValueError(f"expected {d} x {d} matrices for {self!r}, got shape {tuple(scale_matrix.shape)}")
        self._check_event("loc", loc.expand(torch.broadcast_shapes(loc.shape, scale_matrix.shape[:-1])))
        self.require("kappa", kappa, positive_finite(kappa), "positive and finite")
        self.require("nu", nu, torch.isfinite(nu) & (nu > d - 1), f"finite and greater than D - 1 = {d - 1}")
        self.require("loc", loc, torch.isfinite(loc), "finite")
        _require_pd(self, "scale_matrix", scale_matrix)
        kappa, nu = kappa.unsqueeze(-1), nu.unsqueeze(-1)
        inv_scale = torch.cholesky_inverse(torch.linalg.cholesky(scale_matrix))
        eta3 = -0.5 * (_sym(inv_scale) + kappa.unsqueeze(-1) * _outer(loc))
        eta = self._join_blocks(kappa * loc, -0.5 * kappa, eta3.flatten(-2), 0.5 * (nu - d))
        return self.require_finite_result(eta, "parameters")

    def _blocks(self, coords: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(kappa, nu, loc, W^-1)`` from coordinates ``(..., D^2 + D + 2)``."""
        d = self.size
        eta1, eta2 = coords[..., :d], coords[..., d]
        eta3, eta4 = coords[..., d + 1 : -1].unflatten(-1, (d, d)), coords[..., -1]
        kappa = -2 * eta2
        loc = eta1 / kappa.unsqueeze(-1)
        inv_scale = -(eta3 + eta3.mT) - kappa.unsqueeze(-1).unsqueeze(-1) * _outer(loc)
        return kappa, 2 * eta4 + d, loc, inv_scale

    def params(self, eta: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(kappa, nu, loc, scale_matrix)`` with shapes ``batch + outer`` (twice), ``... + (D,)``, ``... + (D, D)``."""
        kappa, nu, loc, inv_scale = self._blocks(self._outer_coords(eta))
        return kappa, nu, loc, torch.cholesky_inverse(torch.linalg.cholesky(inv_scale))

    def distribution(self, eta: Tensor) -> Distribution:
        return self._independent_outer(NormalWishartDistribution(*self.params(eta)))

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        d = self.size
        kappa, nu, _, inv_scale = self._blocks(coords)
        log_det_scale = -_log_det(torch.linalg.cholesky_ex(inv_scale).L)
        return (
            -0.5 * d * kappa.log()
            + 0.5 * nu * log_det_scale
            + 0.5 * nu * d * math.log(2)
            + _log_multigamma(0.5 * nu, d)
        )

    def coord_mean(self, coords: Tensor) -> Tensor:
        d = self.size
        kappa, nu, loc, inv_scale = self._blocks(coords)
        tril = torch.linalg.cholesky_ex(inv_scale).L
        expected_precision = nu.unsqueeze(-1).unsqueeze(-1) * torch.cholesky_inverse(tril)
        expected_log_det = _multi_digamma(0.5 * nu, d) + d * math.log(2) - _log_det(tril)
        return torch.cat(
            [
                (expected_precision @ loc.unsqueeze(-1))[..., 0],
                (d / kappa + _quad(expected_precision, loc)).unsqueeze(-1),
                expected_precision.flatten(-2),
                expected_log_det.unsqueeze(-1),
            ],
            -1,
        )

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        d = self.size
        precision_loc, quad = coords[..., :d], coords[..., d]
        expected_precision = _sym(coords[..., d + 1 : -1].unflatten(-1, (d, d)))
        tril, info = torch.linalg.cholesky_ex(expected_precision)
        loc = torch.cholesky_solve(precision_loc.unsqueeze(-1), tril)[..., 0]
        kappa = d / (quad - (precision_loc * loc).sum(-1))
        nu = wishart_dof(coords[..., -1] - _log_det(tril), d)
        inv_scale = nu.unsqueeze(-1).unsqueeze(-1) * torch.cholesky_inverse(tril)
        eta3 = -0.5 * (inv_scale + kappa.unsqueeze(-1).unsqueeze(-1) * _outer(loc))
        eta = torch.cat(
            [kappa.unsqueeze(-1) * loc, -0.5 * kappa.unsqueeze(-1), eta3.flatten(-2), 0.5 * (nu - d).unsqueeze(-1)], -1
        )
        bad = (info != 0) | ~(kappa > 0)
        return eta.masked_fill(bad.unsqueeze(-1), torch.nan)

    def coord_invalid(self, coords: Tensor) -> Tensor:
        d = self.size
        kappa, nu, _, inv_scale = self._blocks(coords)
        return ~((kappa > 0) & (nu > d - 1)) | _pd_failed(inv_scale)
