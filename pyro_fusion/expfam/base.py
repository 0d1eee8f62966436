"""The exponential-family interface every fused field goes through.

A family maps a torch distribution to a flat vector of natural parameters ``eta`` of
size :attr:`ExponentialFamily.dim` and back, and gives the log-normalizer ``A(eta)``, the
mean parameters ``mu = grad A(eta)`` and the inverse map ``mu -> eta``. With those four,
any KL divergence inside the family is a Bregman divergence::

    KL(p_a || p_b) = A(eta_b) - A(eta_a) - <eta_b - eta_a, mu_a>

which is what lets :mod:`pyro_fusion.cost` build a whole cost matrix from one matrix product.
Log-normalizers may drop additive constants: every formula here uses differences of ``A``.
"""
from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent


def base_distribution(dist: Distribution, wrappers: tuple = (Independent,)) -> Distribution:
    """
    ``dist`` with its outer ``wrappers`` (by default ``Independent``) removed.

    Example::

        >>> from torch.distributions import Normal
        >>> base_distribution(Independent(Normal(torch.zeros(3), 1.0), 1))
        Normal(loc: torch.Size([3]), scale: torch.Size([3]))
    """
    while isinstance(dist, wrappers):
        dist = dist.base_dist
    return dist


class ExponentialFamily(ABC):
    """
    Base class of the families a field of a component can belong to.

    Natural parameters are flat tensors of shape ``batch_shape + (dim,)``; the family
    object carries the event shape needed to read and write them.

    :param event_shape: shape of one draw of the field.
    """

    #: name used in saved metadata; set by subclasses
    name: str = ""
    #: names of the constructor arguments saved in metadata besides the event shape
    spec_args: Sequence[str] = ()

    def __init__(self, event_shape: Sequence[int] = ()):
        self.event_shape = torch.Size(check_shape(event_shape, f"{type(self).__name__} event_shape"))

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of the flat natural-parameter vector."""

    @abstractmethod
    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        """
        Natural parameters of a torch distribution of this family.

        :param Distribution dist: distribution whose trailing shape is ``event_shape``.
        :returns: tensor of shape ``batch_shape + (dim,)``.
        """

    @abstractmethod
    def distribution(self, eta: Tensor) -> Distribution:
        """The torch distribution with natural parameters ``eta``."""

    @abstractmethod
    def log_normalizer(self, eta: Tensor) -> Tensor:
        """``A(eta)`` up to an additive constant, shape ``eta.shape[:-1]``."""

    @abstractmethod
    def mean_params(self, eta: Tensor) -> Tensor:
        """Mean parameters ``mu = E[T(x)] = grad A(eta)``, same shape as ``eta``."""

    @abstractmethod
    def natural_from_mean(self, mu: Tensor) -> Tensor:
        """Inverse of :meth:`mean_params` (moment matching)."""

    @abstractmethod
    def invalid(self, eta: Tensor) -> Tensor:
        """Boolean mask of shape ``eta.shape[:-1]``: True where ``eta`` is outside the domain."""

    def conjugate(self, mu: Tensor) -> Tensor:
        """Convex conjugate ``A*(mu) = <eta(mu), mu> - A(eta(mu))`` (negative entropy up to ``h``)."""
        eta = self.natural_from_mean(mu)
        return (eta * mu).sum(-1) - self.log_normalizer(eta)

    def kl(self, eta_p: Tensor, eta_q: Tensor) -> Tensor:
        """
        Elementwise ``KL(p || q)`` between distributions given by natural parameters.

        :param Tensor eta_p: natural parameters of ``p``.
        :param Tensor eta_q: natural parameters of ``q``, broadcastable with ``eta_p``.
        """
        mu_p = self.mean_params(eta_p)
        return (
            self.log_normalizer(eta_q)
            - self.log_normalizer(eta_p)
            - ((eta_q - eta_p) * mu_p).sum(-1)
        )

    def location(self, eta: Tensor) -> Optional[Tensor]:
        """
        Where each distribution sits, shape ``eta.shape[:-1] + (k,)``, for families whose
        members move with a translation ``x -> x - t`` of the sample space; None for the
        others. KL divergences do not change under a translation, so
        :mod:`pyro_fusion.cost` moves components near the origin before forming a cost
        matrix, where floating point cancels least.
        """
        return None

    def translate(self, eta: Tensor, shift: Tensor) -> Tensor:
        """
        Natural parameters of ``x - shift`` when ``x`` has natural parameters ``eta``
        (families with a :meth:`location` only).

        :param Tensor shift: broadcastable to :meth:`location` of ``eta``.
        """
        raise NotImplementedError(f"{self!r} has no location to translate")

    def check(self, eta: Tensor, where: str) -> None:
        """
        Raise :class:`ValueError` naming ``where`` if ``eta`` has the wrong size, is not
        finite, or lies outside the family's domain.
        """
        if eta.shape[-1:] != (self.dim,):
            raise ValueError(
                f"{where}: expected natural parameters of size {self.dim} for {self!r}, "
                f"got shape {tuple(eta.shape)}"
            )
        if not torch.isfinite(eta).all():
            raise ValueError(f"{where}: parameters contain NaN or inf")
        bad = self.invalid(eta)
        if bad.any():
            first = [int(i) for i in bad.nonzero()[0]]
            raise ValueError(
                f"{where}: parameters outside the domain of {self.name} at index {first} "
                f"({self.domain_hint})"
            )

    #: what :meth:`check` says about an invalid parameter
    domain_hint: str = "invalid parameter"

    def require(self, name: str, value: Tensor, valid: Tensor, requirement: str) -> None:
        """
        Raise :class:`ValueError` naming the argument ``name`` of :meth:`natural` and its first
        entry where the mask ``valid`` (same shape as ``value``) is False.
        """
        if bool(valid.all()):
            return
        index = [int(i) for i in (~valid).nonzero()[0]] if valid.dim() else []
        bad = value.detach()[tuple(index)] if value.dim() else value.detach()
        shown = f"{float(bad):.6g}" if bad.dim() == 0 else f"{bad.tolist()}"
        raise ValueError(
            f"{type(self).__name__}: {name} must be {requirement}, got {shown} at index {index}"
        )

    def require_finite_result(self, eta: Tensor, arguments: str) -> Tensor:
        """``eta``, or :class:`ValueError` naming the ``arguments`` if it overflowed its dtype."""
        if not bool(torch.isfinite(eta).all()):
            raise ValueError(
                f"{type(self).__name__}: the natural parameters of these {arguments} overflow "
                f"{eta.dtype} (too large or too small values)"
            )
        return eta

    def spec(self) -> Dict[str, Any]:
        """JSON-serialisable description, inverse of :func:`pyro_fusion.expfam.family_from_spec`."""
        out: Dict[str, Any] = {"family": self.name, "event_shape": list(self.event_shape)}
        for arg in self.spec_args:
            out[arg] = getattr(self, arg)
        return out

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.spec() == other.spec()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.spec().items() if k != "family")
        return f"{type(self).__name__}({args})"


def check_shape(shape: Any, what: str) -> Sequence[int]:
    """``shape`` if it is a sequence of nonnegative ints (no bools, floats or strings), else
    :class:`ValueError` naming ``what``."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ValueError(f"{what} must be a sequence of nonnegative ints, got {type(shape).__name__}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"{what} must be a sequence of nonnegative ints, got {list(shape)[:8]!r}")
    return shape


def check_positive_real(value: Any, what: str) -> float:
    """``value`` as a float if it is a real number (not a bool) whose square and inverse square
    are finite and nonzero in float64, e.g. a scale; else :class:`ValueError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a positive real number, got {type(value).__name__}")
    value = float(value)
    square = value * value
    if not (value > 0 and 0 < square < float("inf") and 1 / square < float("inf")):
        raise ValueError(f"{what} must be positive, with a finite nonzero square and inverse square "
                         f"(about 1e-154 to 1e154), got {value}")
    return value


def positive_finite(x: Tensor) -> Tensor:
    """Mask: True where ``x`` is positive and finite."""
    return (x > 0) & torch.isfinite(x)


class ElementwiseFamily(ExponentialFamily):
    """
    A product of independent scalar (or fixed-size) families over ``event_shape``.

    Subclasses implement the per-coordinate maps on tensors of shape ``(..., n, k)``
    with ``n = prod(event_shape)`` coordinates and ``k = stat_dim`` statistics each.
    """

    #: number of natural parameters per coordinate
    stat_dim: int = 1

    @property
    def num_coords(self) -> int:
        return self.event_shape.numel()

    @property
    def dim(self) -> int:
        return self.num_coords * self.stat_dim

    def _split(self, eta: Tensor) -> Tensor:
        return eta.reshape(eta.shape[:-1] + (self.num_coords, self.stat_dim))

    def _join(self, coords: Tensor) -> Tensor:
        return coords.reshape(coords.shape[:-2] + (self.dim,))

    def _stack(self, *params: Tensor) -> Tensor:
        """Flatten per-coordinate parameters of shape ``batch + event_shape`` into ``eta``."""
        params = torch.broadcast_tensors(*params)
        n = len(self.event_shape)
        batch = params[0].shape[: params[0].dim() - n]
        coords = torch.stack([p.reshape(batch + (self.num_coords,)) for p in params], -1)
        return self._join(coords)

    def _unstack(self, eta: Tensor) -> list:
        """Inverse of :meth:`_stack`: one tensor of shape ``batch + event_shape`` per statistic."""
        coords = self._split(eta)
        shape = eta.shape[:-1] + self.event_shape
        return [coords[..., i].reshape(shape) for i in range(self.stat_dim)]

    def _event_params(self, dist: Distribution, *names: str) -> list:
        """Read named parameters of ``dist`` (unwrapping ``Independent``) with the right event shape."""
        base = base_distribution(dist)
        params = [getattr(base, n) for n in names]
        shape = torch.broadcast_shapes(*(p.shape for p in params))
        n = len(self.event_shape)
        if n and shape[len(shape) - n :] != self.event_shape:
            raise ValueError(
                f"{type(base).__name__} of shape {tuple(shape)} does not end in the event shape "
                f"{tuple(self.event_shape)} of {self!r}"
            )
        return [p.expand(shape) for p in params]

    def _independent(self, base: Distribution) -> Distribution:
        n = len(self.event_shape)
        return torch.distributions.Independent(base, n) if n else base

    @abstractmethod
    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        """Per-coordinate ``A`` of shape ``(..., n)``."""

    @abstractmethod
    def coord_mean(self, coords: Tensor) -> Tensor:
        """Per-coordinate mean parameters of shape ``(..., n, k)``."""

    @abstractmethod
    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        """Per-coordinate inverse mean map of shape ``(..., n, k)``."""

    @abstractmethod
    def coord_invalid(self, coords: Tensor) -> Tensor:
        """Per-coordinate domain violation mask of shape ``(..., n)``."""

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return self.coord_log_normalizer(self._split(eta)).sum(-1)

    def mean_params(self, eta: Tensor) -> Tensor:
        return self._join(self.coord_mean(self._split(eta)))

    def natural_from_mean(self, mu: Tensor) -> Tensor:
        return self._join(self.coord_natural_from_mean(self._split(mu)))

    def invalid(self, eta: Tensor) -> Tensor:
        return self.coord_invalid(self._split(eta)).any(-1)
