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

The three terms are large and cancel where a component sits far from the origin relative
to its scale (``|mean| / scale`` of ``1e2`` already costs float32 a percent on a KL of 1):

- a translation of the sample space, which leaves every KL unchanged, moves the components
  to the origin first when they share an offset (:meth:`KLGeometry.centre`);
- entries whose rounding error bound exceeds :data:`REFINE_TOL` of their value are
  recomputed pair by pair in float64, each pair translated to the local component's own
  location (:func:`refine`), so a close pair is accurate however far both are from zero.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .components import Components
from .expfam import ExponentialFamily
from .threads import gemm_threads

DIRECTIONS = ("reverse", "forward")
#: relative error a cost entry may carry (by its rounding bound) before :func:`refine` recomputes it
REFINE_TOL = 1e-4
#: costs below this many nats are held to an absolute error of ``REFINE_TOL`` times it
REFINE_FLOOR = 1.0
#: :func:`refine` recomputes at most this many parameters (pairs x dim) at once
_PAIR_CHUNK = 1 << 22
#: :meth:`KLGeometry.centre` and :func:`balance` look at this many components
_CENTRE_ROWS = 256


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

    def terms(self, natural: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        ``(x, phi, y, c)`` of components given by natural parameters: their coordinates,
        ``Phi(x)`` and the dual terms of :meth:`dual`, from ``A`` and the mean map alone
        (in the forward direction the dual of mean parameters is the natural parameters,
        so no inverse mean map is solved).
        """
        mean = self._map("mean_params", natural)
        log_normalizer = self._sum("log_normalizer", natural)
        if self.direction == "reverse":
            return natural, log_normalizer, mean, torch.linalg.vecdot(natural, mean) - log_normalizer
        return mean, torch.linalg.vecdot(natural, mean) - log_normalizer, natural, log_normalizer

    @staticmethod
    def cost(x: Tensor, phi_x: Tensor, y: Tensor, c: Tensor) -> Tensor:
        """``C[l, g] = phi_x[l] + c[g] - <x[l], y[g]>`` in one fused GEMM."""
        with gemm_threads(x.shape[0] * x.shape[1] * y.shape[0]):
            out = torch.addmm(c.to(x.dtype).expand(x.shape[0], -1), x, y.to(x.dtype).T, alpha=-1)
        return out.add_(phi_x.to(x.dtype).unsqueeze(-1))

    # ----- translations of the sample space (location families) ------------------------
    def centre(self, natural: Tensor) -> List[Optional[Tensor]]:
        """
        Per field, the mean location of the components ``natural`` (the first
        :data:`_CENTRE_ROWS`) if they share an offset larger than their spread around it
        (translating by it at least halves the squared distance to the origin), else None;
        None for fields without a location.
        """
        shifts: List[Optional[Tensor]] = []
        natural = natural[:_CENTRE_ROWS]
        for family, part in zip(self.families.values(), natural.split(self.sizes, -1)):
            loc = family.location(part)
            shift = None
            if loc is not None:
                mean = loc.mean(0)
                if float(mean.square().sum()) > float((loc - mean).square().sum(-1).mean()):
                    shift = mean
            shifts.append(shift)
        return shifts

    def translate(self, natural: Tensor, shifts: Sequence[Optional[Tensor]]) -> Tensor:
        """Concatenated natural parameters after translating each field by its shift (None: unchanged)."""
        if all(s is None for s in shifts):
            return natural
        parts = natural.split(self.sizes, -1)
        return torch.cat(
            [p if s is None else f.translate(p, s) for f, p, s in zip(self.families.values(), parts, shifts)],
            -1,
        )

    def pair_cost(self, local: Tensor, global_: Tensor) -> Tensor:
        """
        The cost (KL in this direction) between row pairs of concatenated natural
        parameters ``local[k]`` and ``global_[k]``, each pair first translated to the local
        component's location in fields that have one: accurate however far from the
        origin the pair is. Use float64.
        """
        total = torch.zeros(local.shape[:-1], dtype=local.dtype, device=local.device)
        for family, a, b in zip(self.families.values(), local.split(self.sizes, -1), global_.split(self.sizes, -1)):
            loc = family.location(a)
            if loc is not None:
                a, b = family.translate(a, loc), family.translate(b, loc)
            total = total + (family.kl(b, a) if self.direction == "reverse" else family.kl(a, b))
        return total


def balance(x: Tensor, y: Tensor) -> Tensor:
    """
    Per-coordinate scales ``s > 0`` such that ``|x_l * s| |y_g / s|`` bounds
    ``sum_i |x_li y_gi|`` closely (Cauchy-Schwarz after a rescaling that leaves every inner
    product unchanged): natural and mean parameters weigh their coordinates very
    differently, e.g. ``m / s^2`` against ``m^2 + s^2``. Use the norms in :func:`refine`.

    :param Tensor x: ``[N, d]`` rows; ``y``: ``[M, d]`` columns (the first
        :data:`_CENTRE_ROWS` of each are used: any rows give a valid bound).
    """
    x, y = x[:_CENTRE_ROWS], y[:_CENTRE_ROWS]
    ratio = (y.square().mean(0) / x.square().mean(0)).sqrt().sqrt()
    return torch.where(torch.isfinite(ratio) & (ratio > 0), ratio, torch.ones_like(ratio))


def review(
    cost: Tensor,
    phi_x: Tensor,
    c: Tensor,
    x_norm: Tensor,
    y_norm: Tensor,
    dim: int,
    pairs: Callable[[Tensor, Tensor], Tensor],
    tol: float = REFINE_TOL,
    below: Optional[float] = None,
    coordinates: Optional[Tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = None,
) -> Tuple[Tensor, Tensor, Tensor, int]:
    """
    The entries of a cost matrix from :meth:`KLGeometry.cost` that need a look, with
    accurate values: those whose rounding error may exceed ``tol`` times their value (or
    ``tol`` times :data:`REFINE_FLOOR` nats) and the non-finite ones, or with ``below``,
    every entry that may lie below it. The bound per entry is
    ``eps (|phi_x| + |c| + (1 + sqrt(d)) |x| |y|)`` for the dtype's ``eps``: the rounding of
    the three terms and of the inner product (Cauchy-Schwarz, with the ``sqrt(d)`` growth
    of a blocked sum). Entries beyond it are recomputed: in float64 by the same formula
    when ``coordinates`` are given and that bound holds in float64, else by ``pairs``.

    :param Tensor cost: ``[N, M]``.
    :param Tensor phi_x: ``[N]`` row terms; ``c``: ``[M]`` column terms (or ``[N, 1]`` for a
        column of paired costs, as ``y_norm``); float64 if ``coordinates`` are given.
    :param Tensor x_norm: ``[N]`` Euclidean norms of the rows' coordinates; ``y_norm``: ``[M]``
        of the columns' duals (both after the rescaling of :func:`balance`).
    :param int dim: length ``d`` of the inner products.
    :param pairs: ``pairs(rows, cols)`` -> float64 costs of those entries, e.g. by
        :meth:`KLGeometry.pair_cost`.
    :param float below: the entries that may lie below this value (e.g. the price of a new
        component, above which no entry is ever chosen) instead of the inaccurate ones.
    :param tuple coordinates: ``(rows -> x [K, d], cols -> y [K, d])`` in float64.
    :returns: ``(rows, cols, values, recomputed)``: the entries, their values in the
        matrix's dtype, and how many were recomputed.
    :raises ValueError: if a recomputed entry is not finite.
    """
    dtype = cost.dtype
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty, cost.new_zeros(0), 0
    eps = torch.finfo(dtype).eps
    growth = 1.0 + math.sqrt(dim)
    phi_abs, c_abs = phi_x.abs().to(dtype), c.abs().to(dtype)
    x_norm, y_norm = x_norm.to(dtype), y_norm.to(dtype)
    # the largest error in each row; an entry needs a look only if it is small next to
    # that (or, with `below`, if it may lie below `below`)
    reach = (phi_abs + c_abs.max()).add_(x_norm, alpha=growth * float(y_norm.max())).mul_(eps)
    if below is None:
        near = cost.abs() < reach.div_(tol).unsqueeze(-1)
    else:
        near = cost < reach.add_(below).unsqueeze(-1)
    finite = bool(torch.isfinite(cost.sum()))
    if not finite:
        near |= ~torch.isfinite(cost)
    rows, cols = near.nonzero(as_tuple=True)
    values = cost[rows, cols]
    bound = (phi_abs[rows] + c_abs.expand_as(cost)[rows, cols]).addcmul_(
        x_norm[rows], y_norm.expand_as(cost)[rows, cols], value=growth
    )
    flagged = bound > values.abs().clamp_(min=REFINE_FLOOR).mul_(tol / eps)
    if not finite:
        flagged |= ~torch.isfinite(values)
    flagged = flagged.nonzero().squeeze(-1)
    eps64 = torch.finfo(torch.float64).eps
    for chunk in flagged.split(max(1, _PAIR_CHUNK // max(1, dim))) if flagged.numel() else ():
        r, g = rows[chunk], cols[chunk]
        if coordinates is not None and dtype != torch.float64:
            exact = phi_x[r] + c.expand_as(cost)[r, g] - torch.linalg.vecdot(coordinates[0](r), coordinates[1](g))
            unsure = eps64 * bound[chunk].double() > tol * exact.abs().clamp(min=REFINE_FLOOR)
            if bool(unsure.any()):
                exact[unsure] = pairs(r[unsure], g[unsure])
        else:
            exact = pairs(r, g)
        if not bool(torch.isfinite(exact).all()):
            raise ValueError("KL costs are not finite even in float64 (parameters too extreme)")
        values[chunk] = exact.to(dtype)
    return rows, cols, values, flagged.numel()


def refine(cost: Tensor, *args, **kwargs) -> int:
    """
    :func:`review` a cost matrix and write the accurate values back in place; same
    arguments. Far pairs keep their GEMM value; close pairs of components far from the
    origin are recomputed.

    :returns: the number of entries recomputed.
    """
    rows, cols, values, recomputed = review(cost, *args, **kwargs)
    cost[rows, cols] = values
    return recomputed


def kl_cost_matrix(local: Components, global_: Components, direction: str = "reverse") -> Tensor:
    """
    The ``[N, M]`` matrix of KL divergences between ``N`` local and ``M`` global components:
    ``KL(global_g || local_l)`` for ``direction="reverse"``, ``KL(local_l || global_g)`` for
    ``"forward"``; summed over fields. One GEMM in the components' dtype; entries the GEMM
    cannot resolve (close pairs far from the origin) are recomputed in float64 (see the
    module notes), so float32 costs stay within ``REFINE_TOL`` of exact.

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
    eta_local, eta_global = local.concat(), global_.concat()
    shifts = geometry.centre(eta_global)
    if any(s is not None for s in shifts):
        shifts = [None if s is None else s.double() for s in shifts]
        x = geometry.translate(eta_local.double(), shifts).to(dtype)
        x_global = geometry.translate(eta_global.double(), shifts).to(dtype)
    else:
        x, x_global = eta_local.to(dtype), eta_global.to(dtype)
    x, x_global = geometry.coordinates(x), geometry.coordinates(x_global)
    y, c, _ = geometry.dual(x_global)
    phi = geometry.potential(x)
    cost = geometry.cost(x, phi, y, c)
    scale = balance(x, y)
    refine(
        cost, phi, c, torch.linalg.vector_norm(x * scale, dim=-1), torch.linalg.vector_norm(y / scale, dim=-1),
        x.shape[-1],
        lambda rows, cols: geometry.pair_cost(eta_local[rows].double(), eta_global[cols].double()),
    )
    return cost
