"""The KL-fusion engine: alternate per-client assignment and KL barycenters.

With client weights ``w_j``, a price ``lam`` per global component in use and ``pi_j`` the
injective map of client ``j``'s components to global ones, fusion minimises::

    F(pi, p) = sum_j sum_l w_j KL(q_jl, p_{pi_j(l)}) + lam * #globals

(KL in the chosen direction). For fixed ``pi`` the barycenters minimise ``F`` exactly, and
then ``F = sum_jl w_j Phi(x_jl) - sum_g W_g Phi(xbar_g) + lam M`` (a Jensen gap in the
averaging space of :mod:`pyro_fusion.cost`), which the engine tracks from per-global sums in
float64. Clients are re-matched in random order. Each update first tries the
SPAHM/PFNM-style match against the barycenters *without* the client's own contribution;
if that does not decrease ``F`` it falls back to the exact block-coordinate step (match
against the current barycenters, where a global used by this client alone costs ``lam``
extra), and if that does not decrease ``F`` either, the client keeps its assignment. So the
recorded objective never increases, and a sweep that changes nothing has converged.

How the work is shared (the state holds per-global rows, never a copy per client):

- one cost matrix per client against the current barycenters serves both steps; the
  candidate recomputes only the columns of the client's own globals without it;
- an accepted update writes only the rows of the globals the client leaves or joins, and
  the change of ``F`` comes from those rows alone;
- in-memory clients are matched in blocks: one GEMM of a block of clients against the
  barycenters, after which each client recomputes only the columns that the clients
  before it in the block changed (exactly the sequential result, one large GEMM instead
  of many small ones);
- exchanging two identical components of one client is not a change.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .assignment import NEW, assign_edges, assign_rows
from .components import Components, check_client, check_clients, check_prior, client_weights
from .cost import KLGeometry, balance, check_direction, refine, review
from .deprecation import warn
from .price import (
    COST_FLOOR,
    COUNTERPART_MULTIPLE,
    COUNTERPART_SAMPLE,
    COUNTERPART_WEIGHT,
    RULES,
    SPREAD_MULTIPLE,
    Price,
    _closest_pair_price,
    _counterpart_price,
    _prior_price,
    as_price,
)
from .threads import engine_threads, gemm_threads

COMBINES = ("average", "product")
#: in-memory clients are matched in blocks of about this many local components (one GEMM each)
BLOCK_ROWS = 512
#: an update must lower ``F`` by more than this times the size of the terms it changes
DECREASE_TOL = 1e-12


@dataclass
class FusionResult:
    """
    What :func:`fuse` returns.

    :ivar Components components: the ``M`` global components.
    :ivar list assignments: per client, a LongTensor mapping local index -> global index.
    :ivar Tensor support: LongTensor ``[M]``, the number of clients matched to each global.
    :ivar list objective: ``F`` after initialisation and after every client update.
    :ivar int iterations: number of full sweeps over the clients.
    :ivar bool converged: whether the last sweep changed no assignment (up to exchanging
        identical components of one client).
    :ivar float price: the price of a global component (None in parametric mode).
    :ivar str direction: ``"reverse"`` or ``"forward"``.
    :ivar str combine: ``"average"`` or ``"product"``.
    :ivar dict info: counters of the run: ``updates`` (client updates that changed an
        assignment), ``exact_steps`` (of those, by the exact step), ``refined_costs``
        (cost entries recomputed in float64, see :func:`~pyro_fusion.cost.refine`) and
        ``rule_seconds`` (time spent in the price rule).
    :ivar list costs: per client, float64 ``[L_j]``: the KL (in ``direction``) between each
        local component and the barycenter of its global, so that
        ``objective[-1] == sum_j w_j costs[j].sum() + price * M``; None for loaded results.
    """

    components: Components
    assignments: List[Tensor]
    support: Tensor
    objective: List[float]
    iterations: int
    converged: bool
    price: Optional[float]
    direction: str
    combine: str = "average"
    info: Dict[str, float] = field(default_factory=dict)
    costs: Optional[List[Tensor]] = None

    @property
    def num_global(self) -> int:
        return len(self.components)

    def distributions(self):
        """Field name -> torch distribution with batch shape ``[M]``."""
        return self.components.distributions()

    def save(self, path: str) -> None:
        """Save as a safetensors file (plain tensors + JSON metadata; no pickle)."""
        from .io import save_result

        save_result(self, path)

    @classmethod
    def load(cls, path: str) -> "FusionResult":
        """Load a file written by :meth:`save`."""
        from .io import load_result_record

        return cls(**load_result_record(path))


class LazyClients(Sequence):
    """
    Clients read on access: item ``j`` is ``load(sources[j])``, and nothing is kept.
    :func:`fuse` reads a client each time it visits it, so it holds the global model and one
    client's components at a time (a list of :class:`Components` is held in memory and
    matched in blocks instead). Each client is checked when it is read.

    Example::

        >>> from torch.distributions import Normal
        >>> def load(shift):  # e.g. read one client's file
        ...     return Components.from_distributions({"x": Normal(torch.tensor([[0.0], [10.0]]) + shift, 0.1)})
        >>> clients = LazyClients([0.0, 0.1, 0.2], load)
        >>> fuse(clients, price=5.0).num_global
        2

    :param list sources: one entry per client (file names, keys, ...).
    :param callable load: ``load(source) -> Components``.
    """

    def __init__(self, sources: Sequence, load: Callable[..., Components]):
        self.sources = list(sources)
        self.load = load

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, j):
        if isinstance(j, slice):
            return LazyClients(self.sources[j], self.load)
        return self.load(self.sources[j])


class _Client(NamedTuple):
    """One client as the engine reads it (see :class:`_ClientSource`)."""

    natural: Tensor  # the client's concatenated natural parameters, as given
    x: Tensor  # [L, d] averaging-space coordinates, working dtype, device, engine frame
    phi: Tensor  # [L] Phi(x), float64
    phi_w: Tensor  # [L] the same in the working dtype
    norm: Tensor  # [L] |x| after balance(), in the working dtype


class _ClientSource:
    """
    The clients in the engine's frame (translated to the origin when they share an offset,
    :meth:`KLGeometry.centre`) on the working device: kept for in-memory clients (the
    coordinates are the clients' own tensors where no conversion is needed), read again on
    every visit for other sequences. Checks each client the first time it is read.
    """

    def __init__(self, clients, geometry: KLGeometry, dtype, device, keep: bool, max_components=None):
        self.clients = clients
        self.geometry = geometry
        self.dtype = dtype
        self.device = device
        self.keep = keep
        self.max_components = max_components
        self.shifts: Optional[list] = None  # translation of each field (first client read)
        self.scale: Optional[Tensor] = None  # coordinate scales of the error bounds (first client read)
        self.cache: Dict[int, _Client] = {}
        self.first: Optional[Tuple[int, Components]] = None  # reference for checks

    def __len__(self) -> int:
        return len(self.clients)

    def components(self, j: int) -> Components:
        comps = self.clients[j]
        if self.first is None:
            check_client(j, comps, comps, j)
            self.first = (j, comps)
        elif not self.keep:
            check_client(j, comps, self.first[1], self.first[0])
        if self.max_components is not None and len(comps) > self.max_components:
            raise ValueError(
                f"client {j} has {len(comps)} components, more than num_global={self.max_components}"
            )
        return comps

    def natural64(self, natural: Tensor) -> Tensor:
        """float64 natural parameters on the device, in the engine's frame."""
        eta = natural.to(device=self.device, dtype=torch.float64)
        return self.geometry.translate(eta, self.shifts)

    def rows64(self, client: _Client, rows: Tensor) -> Tensor:
        """:meth:`natural64` of the client's components at ``rows``."""
        return self.natural64(client.natural[rows.to(client.natural.device)])

    def norm(self, x: Tensor) -> Tensor:
        """Norms of coordinates for the error bounds of :func:`refine`."""
        return torch.linalg.vector_norm(x * self.scale, dim=-1)

    def dual_norm(self, y: Tensor) -> Tensor:
        """Norms of duals for the error bounds of :func:`refine`."""
        return torch.linalg.vector_norm(y / self.scale, dim=-1)

    def coordinates64(self, client: _Client) -> Tensor:
        return self.geometry.coordinates(self.natural64(client.natural))

    def __getitem__(self, j: int) -> _Client:
        client = self.cache.get(j)
        if client is not None:
            return client
        natural = self.components(j).concat()
        if self.shifts is None:
            self.shifts = self.geometry.centre(natural.to(device=self.device, dtype=torch.float64))
        x64, phi, y, c = self.geometry.terms(self.natural64(natural))
        if self.scale is None:
            self.scale = balance(x64, y)
        norm = self.norm(x64)
        _check_representable(j, phi, c, norm, self.dual_norm(y), self.dtype)
        same = (
            self.geometry.direction == "reverse"
            and all(s is None for s in self.shifts)
            and natural.dtype == self.dtype
            and natural.device == torch.device(self.device)
        )
        x = natural if same else x64.to(self.dtype)
        client = _Client(natural, x, phi, phi.to(self.dtype), norm.to(self.dtype))
        if self.keep:
            self.cache[j] = client
        return client


def _check_representable(j: int, phi: Tensor, c: Tensor, x_norm: Tensor, y_norm: Tensor, dtype) -> None:
    """Raise naming client ``j`` if its cost terms overflow the working dtype (then its cost
    matrices would hold inf or NaN); ``x_norm * y_norm`` bounds its inner products."""
    big = torch.finfo(dtype).max
    terms = torch.stack([phi.abs(), c.abs(), x_norm, y_norm, x_norm * y_norm])
    bad = ~(terms < big).all(0)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"client {j}: component {first} has KL cost terms that are not finite in {dtype} "
            f"(log-normalizer {float(phi[first]):.3g}, |natural| x |mean| "
            f"{float(x_norm[first] * y_norm[first]):.3g}); its parameters are too extreme"
            + ("" if dtype == torch.float64 else "; try dtype=torch.float64")
        )


class _Move(NamedTuple):
    """A proposed new assignment of one client and the per-global rows it would write."""

    new: Tensor  # [L] slots
    touched: Tensor  # [T] sorted slots the move changes
    sum: Tensor  # [T, d]
    weight: Tensor  # [T]
    count: Tensor  # [T]
    duals: Tuple[Tensor, Tensor, Tensor, Tensor]  # xbar, y, c, phi of the touched slots in use
    delta: float  # change of F
    noise: float  # rounding level of delta


class _FusionState:
    """Assignments plus per-global float64 sums in slots; see the module docstring.

    Per slot: ``sum`` of ``w_j x_jl`` over members, ``weight``, ``count``, the barycenter
    ``xbar`` and its duals ``y`` (float64 and ``y_w`` in the working dtype), ``c``, ``phi``,
    ``y_norm``. Slots with ``count == 0`` are free (nonparametric) and reused.
    """

    def __init__(self, geometry: KLGeometry, source: _ClientSource, weights: Tensor, price, num_global, rng):
        self.geometry = geometry
        self.source = source
        self.weights = weights
        self.price = price
        self.parametric = num_global is not None
        self.rng = rng
        self.dtype, self.device = source.dtype, source.device
        self.dim = sum(geometry.sizes)
        self.assign: List[Optional[Tensor]] = [None] * len(source)
        self.local_phi = 0.0
        self.size = 0  # slots [0, size) have been used
        self.recorded: Optional[float] = None  # F as recorded, updated by each accepted delta
        self.info = {"updates": 0, "exact_steps": 0, "refined_costs": 0}
        self.version = 0  # number of commits so far
        self.checked = [-1] * len(source)  # per client, the version it was last found unchanged at
        self._allocate(64 if num_global is None else num_global)

    # ----- slots ----------------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        f64 = dict(dtype=torch.float64, device=self.device)
        d = self.dim
        fresh = {
            "sum": torch.zeros(capacity, d, **f64),
            "weight": torch.zeros(capacity, **f64),
            "count": torch.zeros(capacity, dtype=torch.long, device=self.device),
            "xbar": torch.zeros(capacity, d, **f64),
            "y": torch.zeros(capacity, d, **f64),
            "y_w": torch.zeros(capacity, d, dtype=self.dtype, device=self.device),
            "c": torch.zeros(capacity, **f64),
            "phi": torch.zeros(capacity, **f64),
            "y_norm": torch.zeros(capacity, **f64),
            "dirty": torch.zeros(capacity, dtype=torch.bool, device=self.device),
        }
        for key, value in fresh.items():
            if hasattr(self, key):
                value[: self.size] = getattr(self, key)[: self.size]
            setattr(self, key, value)
        self.capacity = capacity

    def _alive(self) -> Tensor:
        if self.parametric:
            return torch.ones(self.size, dtype=torch.bool, device=self.device)
        return self.count[: self.size] > 0

    def _free_slots(self, k: int) -> Tensor:
        """``k`` slots for new globals: free ones first, then appended ones."""
        free = (self.count[: self.size] == 0).nonzero().squeeze(-1)[:k]
        extra = k - free.numel()
        if self.size + extra > self.capacity:
            self._allocate(max(2 * self.capacity, self.size + extra))
        return torch.cat([free, torch.arange(self.size, self.size + extra, device=self.device)])

    def _set_duals(self, slots: Tensor, xbar: Tensor, y: Tensor, c: Tensor, phi: Tensor) -> None:
        self.xbar[slots] = xbar
        self.y[slots] = y
        self.y_w[slots] = y.to(self.dtype)
        self.c[slots] = c
        self.phi[slots] = phi
        self.y_norm[slots] = self.source.dual_norm(y)
        self.dirty[slots] = True

    def _global_natural(self, slots: Tensor) -> Tensor:
        """float64 natural parameters of the barycenters at ``slots`` (engine frame)."""
        return self.xbar[slots] if self.geometry.direction == "reverse" else self.y[slots]

    # ----- objective ---------------------------------------------------------------------
    def objective(self) -> float:
        """``F`` from the per-global sums."""
        alive = self._alive()
        gap = self.local_phi - float((self.weight[: self.size] * self.phi[: self.size])[alive].sum())
        if self.parametric:
            return gap
        return gap + self.price * int(alive.sum())

    # ----- initialisation -----------------------------------------------------------------
    def seed_globals(self, num_global: int, existing: int = 0) -> None:
        """k-means++ seeding with the Bregman cost over all local components, after
        ``existing`` slots that already hold barycenters."""
        clients = [self.source[j] for j in range(len(self.source))]
        x = torch.cat([self.source.coordinates64(client) for client in clients])
        phi_x = torch.cat([client.phi for client in clients])
        if existing:
            dist = KLGeometry.cost(x, phi_x, self.y[:existing], self.c[:existing]).min(-1).values.clamp(min=0)
            centers = []
        else:
            first = int(self.rng.integers(len(x)))
            centers = [first]
            y, c, _ = self.geometry.dual(x[first : first + 1])
            dist = KLGeometry.cost(x, phi_x, y, c).squeeze(-1).clamp(min=0)
        for _ in range(existing + len(centers), num_global):
            p = dist.cpu().numpy() / dist.sum().item() if dist.sum() > 0 else None
            nxt = int(self.rng.choice(len(x), p=p))
            centers.append(nxt)
            y, c, _ = self.geometry.dual(x[nxt : nxt + 1])
            dist = torch.minimum(dist, KLGeometry.cost(x, phi_x, y, c).squeeze(-1).clamp(min=0))
        slots = torch.arange(existing, num_global, device=self.device)
        xbar = x[centers]
        self._set_duals(slots, xbar, *self.geometry.dual(xbar))
        self.size = num_global

    def start_from(self, assignments: List[Tensor], num_used: int, num_global: Optional[int] = None) -> None:
        """Add every client under the given assignments (global indices ``0..num_used-1``);
        in parametric mode, seed the ``num_global - num_used`` globals no one uses."""
        if num_used > self.capacity:
            self._allocate(num_used)
        for j, a in enumerate(assignments):
            client = self.source[j]
            if len(a) != len(client.phi):
                raise ValueError(
                    f"init: client {j} has {len(client.phi)} components, its assignment {len(a)}"
                )
            a = a.to(self.device)
            w = float(self.weights[j])
            self.sum.index_add_(0, a, self.source.coordinates64(client), alpha=w)
            self.weight.index_add_(0, a, torch.full((len(a),), w, dtype=torch.float64, device=self.device))
            self.count.index_add_(0, a, torch.ones_like(a))
            self.local_phi += w * float(client.phi.sum())
            self.assign[j] = a
        slots = torch.arange(num_used, device=self.device)
        xbar = self.sum[:num_used] / self.weight[:num_used].unsqueeze(-1)
        self._set_duals(slots, xbar, *self.geometry.dual(xbar))
        self.size = num_used
        if self.parametric and num_used < num_global:
            self.seed_globals(num_global, existing=num_used)

    # ----- costs -------------------------------------------------------------------------
    def _review(self, j: int, cost: Tensor, client: _Client, x64: Tensor, columns, below) -> Tuple[Tensor, Tensor, Tensor]:
        """:func:`review` a cost matrix of client ``j`` (float64 coordinates ``x64``) against
        ``columns = (c, y_norm, dual_of, natural_of)``: their terms and float64 rows."""
        c, y_norm, dual_of, natural_of = columns
        try:
            rows, cols, values, recomputed = review(
                cost, client.phi, c, client.norm, y_norm, self.dim,
                lambda rows, cols: self.geometry.pair_cost(self.source.rows64(client, rows), natural_of(cols)),
                below=below, coordinates=(lambda rows: x64[rows], dual_of),
            )
        except ValueError as e:
            raise ValueError(f"client {j}: {e}") from None
        self.info["refined_costs"] += recomputed
        return rows, cols, values

    def _columns(self, cols: Tensor):
        """``(c, y_norm, dual_of, natural_of)`` of the current barycenters at ``cols``."""
        return (
            self.c[cols], self.y_norm[cols],
            lambda k: self.y[cols[k]], lambda k: self._global_natural(cols[k]),
        )

    def _gemm_cost(self, client: _Client, cols: Tensor, block: Optional[Tuple[Tensor, int]]) -> Tensor:
        """Unreviewed costs ``[L, len(cols)]`` against the current barycenters at ``cols``.
        ``block``: this client's rows of a GEMM against the first ``size0`` slots, valid
        where no slot is dirty since."""
        y_w = self.y_w[: self.size]
        if block is None:
            with gemm_threads(client.x.numel() * self.size):
                gemm = client.x @ y_w.T
        else:
            gemm, size0 = block
            stale = self.dirty[: self.size].nonzero().squeeze(-1)
            if size0 < self.size or stale.numel():
                gemm = torch.cat([gemm, gemm.new_empty(len(gemm), self.size - size0)], -1)
                with gemm_threads(client.x.numel() * stale.numel()):
                    gemm[:, stale] = client.x @ y_w[stale].T
        if cols.numel() < self.size:
            gemm = gemm[:, cols]
        return (self.c[cols].to(self.dtype) - gemm).add_(client.phi_w.unsqueeze(-1))

    # ----- one client update ---------------------------------------------------------------
    def update(self, j: int, block: Optional[Tuple[Tensor, int]] = None) -> bool:
        """Re-match client ``j``; returns whether its assignment changed. A client found
        unchanged against the same state (no commit since) is not examined again."""
        if self.checked[j] == self.version:
            return False
        if not self._update(j, block):
            self.checked[j] = self.version
            return False
        return True

    def _update(self, j: int, block: Optional[Tuple[Tensor, int]]) -> bool:
        client = self.source[j]
        w = float(self.weights[j])
        old = self.assign[j]
        x64 = self.source.coordinates64(client)
        cols = self._alive().nonzero().squeeze(-1)
        cost = self._gemm_cost(client, cols, block)
        steps = self._dense_steps if self.parametric else self._sparse_steps
        candidate, exact = steps(j, client, x64, w, old, cols, cost)
        reopen = None if self.parametric or old is None else torch.where(self.count[old] > 1, NEW, old)
        new = self._slots(candidate(), cols, reopen)
        if old is None:
            self._commit(j, self._move(client, x64, w, None, new))
            return True
        if self._same(client, old, new):
            return False
        move = self._move(client, x64, w, old, new)
        if not move.delta < -move.noise:
            new = self._slots(exact(), cols, reopen)
            if self._same(client, old, new):
                return False
            move = self._move(client, x64, w, old, new)
            if not move.delta < -move.noise:
                return False
            self.info["exact_steps"] += 1
        self._commit(j, move)
        self.recorded += move.delta
        self.info["updates"] += 1
        return True

    def _left(self, x64: Tensor, w: float, old: Tensor):
        """The barycenters of the client's globals without it, where others remain:
        ``(kept rows, xbar, y, c)``, or None."""
        stays = self.count[old] > 1
        if not bool(stays.any()):
            return None
        kept = stays.nonzero().squeeze(-1)
        xbar = (self.sum[old[kept]] - w * x64[kept]) / (self.weight[old[kept]] - w).unsqueeze(-1)
        y, c, _ = self.geometry.dual(xbar)
        return kept, xbar, y, c

    def _left_columns(self, left):
        """:meth:`_columns` of the barycenters from :meth:`_left`."""
        _, xbar, y, c = left
        natural = xbar if self.geometry.direction == "reverse" else y
        return c, self.source.dual_norm(y), lambda k: y[k], lambda k: natural[k]

    def _left_costs(self, j, client, x64, w, old, below):
        """The client's costs against the barycenters of :meth:`_left`, reviewed (``below``
        as :meth:`_review`): ``(kept, cost, rows, cols, values)`` with ``kept`` the rows of
        ``old`` those barycenters belong to, or None."""
        left = self._left(x64, w, old)
        if left is None:
            return None
        cost = KLGeometry.cost(client.x, client.phi_w, left[2].to(self.dtype), left[3])
        return (left[0], cost, *self._review(j, cost, client, x64, self._left_columns(left), below))

    def _positions(self, cols: Tensor) -> Tensor:
        """Slot -> its index in ``cols`` (-1 for slots not in it)."""
        position = torch.full((self.size,), -1, dtype=torch.long, device=self.device)
        position[cols] = torch.arange(cols.numel(), device=self.device)
        return position

    def _sparse_steps(self, j, client, x64, w, old, cols, cost):
        """Nonparametric steps on the entries below the price: ``(candidate, exact)``,
        each returning an :func:`assign_edges` result over ``cols``. The candidate matches
        against the barycenters of the other clients (the client's own globals without it;
        those only it uses are closed); the exact step against the current ones, where a
        global only this client uses costs the price on top."""
        rows, at_cols, values = self._review(j, cost, client, x64, self._columns(cols), self.price)
        num_rows = len(client.phi)
        if old is None:
            return (lambda: assign_edges(num_rows, rows, at_cols, values, self.price)), None
        position = self._positions(cols)
        own = torch.zeros(cols.numel(), dtype=torch.bool, device=self.device)
        own[position[old]] = True

        def candidate() -> Tensor:
            others = ~own[at_cols]
            parts = [(rows[others], at_cols[others], values[others])]
            left = self._left_costs(j, client, x64, w, old, self.price)
            if left is not None:
                kept, _, sub_rows, sub_cols, sub_values = left
                parts.append((sub_rows, position[old[kept]][sub_cols], sub_values))
            return assign_edges(num_rows, *(torch.cat(p) for p in zip(*parts)), self.price)

        def exact() -> Tensor:
            solo = torch.zeros_like(own)
            solo[position[old[self.count[old] == 1]]] = True
            return assign_edges(num_rows, rows, at_cols, values + self.price * solo[at_cols], self.price)

        return candidate, exact

    def _dense_steps(self, j, client, x64, w, old, cols, cost):
        """Parametric steps on the whole cost matrix (every entry matters): as
        :meth:`_sparse_steps`, with :func:`assign_rows` and no price."""
        rows, at_cols, values = self._review(j, cost, client, x64, self._columns(cols), None)
        cost[rows, at_cols] = values
        if old is None:
            return (lambda: assign_rows(cost)), None
        position = self._positions(cols)

        def candidate() -> Tensor:
            matrix = cost.clone()
            left = self._left_costs(j, client, x64, w, old, None)
            if left is not None:
                kept, sub, sub_rows, sub_cols, sub_values = left
                sub[sub_rows, sub_cols] = sub_values
                matrix[:, position[old[kept]]] = sub
            return assign_rows(matrix)

        return candidate, lambda: assign_rows(cost)

    def _slots(self, match: Tensor, cols: Tensor, reopen: Optional[Tensor]) -> Tensor:
        """Slots of an :func:`assign_rows` result over ``cols``; ``NEW`` rows reopen the
        slot in ``reopen`` (a global only this client used) or stay ``NEW``."""
        match = match.to(self.device)
        new = torch.cat([cols, cols.new_tensor([NEW])])[match]  # NEW (-1) picks the last entry
        if reopen is not None:
            new = torch.where(new == NEW, reopen, new)
        return new

    @staticmethod
    def _same(client: _Client, old: Tensor, new: Tensor) -> bool:
        """Whether ``new`` gives the same state as ``old``: equal, or exchanging identical
        components of the client."""
        moved = (old != new).nonzero().squeeze(-1)
        if moved.numel() == 0:
            return True
        if bool((new[moved] == NEW).any()):
            return False
        old_sorted, old_order = old[moved].sort()
        new_sorted, new_order = new[moved].sort()
        if not torch.equal(old_sorted, new_sorted):
            return False
        natural = client.natural
        return torch.equal(natural[moved[old_order].to(natural.device)], natural[moved[new_order].to(natural.device)])

    def _move(self, client: _Client, x64: Tensor, w: float, old: Optional[Tensor], new: Tensor) -> _Move:
        """The rows ``new`` would write and the change of ``F``; ``NEW`` rows get free slots."""
        fresh = new == NEW
        if bool(fresh.any()):
            new = new.clone()
            new[fresh] = self._free_slots(int(fresh.sum()))
        touched = new if old is None else torch.cat([old, new])
        touched = touched.unique()
        total = self.sum[touched]
        weight = self.weight[touched]
        count = self.count[touched]
        ones = torch.ones(len(new), dtype=torch.long, device=self.device)
        if old is not None:
            at = torch.searchsorted(touched, old)
            total = total.index_add(0, at, x64, alpha=-w)
            weight = weight.index_add(0, at, torch.full_like(x64[:, 0], -w))
            count = count.index_add(0, at, -ones)
        at = torch.searchsorted(touched, new)
        total = total.index_add(0, at, x64, alpha=w)
        weight = weight.index_add(0, at, torch.full_like(x64[:, 0], w))
        count = count.index_add(0, at, ones)
        live = count > 0
        total[~live] = 0
        weight[~live] = 0
        was = self.count[touched] > 0
        before = self.weight[touched][was] * self.phi[touched][was]
        xbar = total[live] / weight[live].unsqueeze(-1)
        duals = (xbar, *self.geometry.dual(xbar))
        after = weight[live] * duals[3]
        delta = -(float(after.sum()) - float(before.sum()))
        if not self.parametric:
            delta += self.price * (int(live.sum()) - int(was.sum()))
        if old is None:
            delta += w * float(client.phi.sum())
        noise = DECREASE_TOL * (float(before.abs().sum()) + float(after.abs().sum()))
        return _Move(new, touched, total, weight, count, duals, delta, noise)

    def _commit(self, j: int, move: _Move) -> None:
        old = self.assign[j]
        if old is None:
            self.local_phi += float(self.weights[j]) * float(self.source[j].phi.sum())
        touched = move.touched
        self.sum[touched] = move.sum
        self.weight[touched] = move.weight
        self.count[touched] = move.count
        live = move.count > 0
        self._set_duals(touched[live], *move.duals)
        if not self.parametric:
            self.phi[touched[~live]] = 0
        self.size = max(self.size, int(touched.max()) + 1)
        self.assign[j] = move.new
        self.version += 1

    # ----- sweeps --------------------------------------------------------------------------
    def _blocks(self, order) -> Iterator[List[int]]:
        """Consecutive clients of ``order`` with about :data:`BLOCK_ROWS` components
        together (one client at a time for streamed clients)."""
        block, rows = [], 0
        for j in order:
            block.append(int(j))
            rows += len(self.source[int(j)].phi) if self.source.keep else BLOCK_ROWS
            if rows >= BLOCK_ROWS:
                yield block
                block, rows = [], 0
        if block:
            yield block

    def sweep(self, order, record: Optional[List[float]] = None) -> bool:
        """Update every client in ``order``; appends ``F`` after each update to ``record``."""
        changed = False
        for block in self._blocks(order):
            size0, parts = self.size, {}
            due = [j for j in block if self.checked[j] != self.version]
            if len(due) > 1 and self.size:
                x = torch.cat([self.source[j].x for j in due])
                with gemm_threads(x.shape[0] * x.shape[1] * size0):
                    gemm = x @ self.y_w[:size0].T
                self.dirty[:size0] = False
                for j, rows in zip(due, gemm.split([len(self.source[j].phi) for j in due])):
                    parts[j] = (rows, size0)
            for j in block:
                changed |= self.update(j, parts.get(j))
                if record is not None:
                    record.append(self.recorded)
        return changed

    # ----- results ---------------------------------------------------------------------------
    def result_parts(self):
        """``(natural [M, d] float64 in the clients' frame, assignments, support, costs)``
        over the globals in use, in slot order."""
        alive = self._alive()
        slots = alive.nonzero().squeeze(-1)
        index = torch.full((self.size,), -1, dtype=torch.long, device=self.device)
        index[slots] = torch.arange(slots.numel(), device=self.device)
        back = [None if s is None else -s for s in self.source.shifts]
        natural = self.geometry.translate(self._global_natural(slots), back)
        costs = []
        for j, a in enumerate(self.assign):
            client = self.source[j]
            x64 = self.source.coordinates64(client)
            y = self.y[a]
            cost = (client.phi + self.c[a] - torch.linalg.vecdot(x64, y)).unsqueeze(-1)
            refine(  # all entries: these are reported
                cost, client.phi, self.c[a].unsqueeze(-1), self.source.norm(x64),
                self.y_norm[a].unsqueeze(-1), self.dim,
                lambda rows, _: self.geometry.pair_cost(self.source.rows64(client, rows), self._global_natural(a[rows])),
            )
            costs.append(cost.squeeze(-1).cpu())
        assignments = [index[a].cpu() for a in self.assign]
        return natural, assignments, self.count[slots].cpu(), costs


def default_price(
    clients: Sequence[Components],
    weights: Optional[Tensor] = None,
    direction: str = "reverse",
    prior: Optional[Components] = None,
) -> float:
    """
    Deprecated since 0.2: the default price before 0.2, :func:`~pyro_fusion.price.prior_price`
    with a ``prior``, else :func:`~pyro_fusion.price.closest_pair_price`. The default is now
    :func:`~pyro_fusion.price.counterpart_price`; :func:`price_of` gives
    any rule's price.
    """
    rule = "closest-pair" if prior is None else "prior"
    warn("pyro_fusion.default_price", f'pyro_fusion.price_of("{rule}", ...) (the default rule is now "counterpart")')
    return price_of(rule, clients, weights, direction, prior=prior)


def spread_price(
    clients: Sequence[Components],
    weights: Union[Sequence[float], Tensor, None] = None,
    direction: str = "reverse",
    multiple: float = SPREAD_MULTIPLE,
    iterations: int = 4,
    max_rows: int = 2048,
    seed: int = 0,
) -> float:
    """
    A price set by the spread between versions of one component: ``multiple`` times the
    (lower) median cost ``w_j KL`` of a local component to the global it is matched to (over
    globals matched by at least two clients), re-estimated until the number of globals settles.

    It starts from ``multiple`` times the (lower) median cost of a local component to its
    nearest component in *another* client, fuses at that price, sets the price from the
    spread of the matches, and repeats (each fusion starting from the last one) until the
    number of globals stops changing, returning the price of the last fusion (after
    ``iterations`` fusions, the price set from the last one). It assumes versions of one
    component are much closer than different components; where they are not, merging raises
    the spread and the search can settle on merging almost everything (LDA topics of 15 Brown
    genres, 10 per client: 10 globals, each matched by all 15 clients).

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[0.0], [10.0]]), 0.1)})
        >>> b = Components.from_distributions({"x": Normal(torch.tensor([[0.2], [10.1]]), 0.1)})
        >>> round(spread_price([a, b]), 1)  # costs 0.5, 0.5, 0.125, 0.125: 40 * lower median
        5.0

    :param list clients: the clients' :class:`Components` (at least two clients).
    :param weights: client weights (normalised to mean 1), default uniform.
    :param str direction: the KL direction of the cost.
    :param float multiple: the price in units of the spread.
    :param int iterations: maximum number of fusions.
    :param int max_rows: the starting median is taken over at most this many local
        components (a random subset), which bounds its work at ``max_rows`` x all components.
    :param int seed: seed of that subset and of the fusions' client order.
    """
    clients = list(clients)
    check_clients(clients)
    check_direction(direction)
    w = client_weights(weights, len(clients))
    return _spread_search(clients, w, direction, multiple, iterations, max_rows, seed)[0]


def _spread_search(clients, w, direction, multiple, iterations, max_rows, seed):
    """:func:`spread_price` of checked clients with normalised weights ``w``, and the last
    fusion it ran (at the returned price, or at the one before when ``iterations`` ran out)."""
    if len(clients) < 2:
        raise ValueError("spread_price needs at least two clients")
    if not 0 < multiple < math.inf:
        raise ValueError(f"multiple must be positive and finite, got {multiple}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    geometry = KLGeometry(clients[0].families, direction)
    xs = [geometry.coordinates(c.concat().double()) for c in clients]
    price = multiple * _nearest_cost_median(geometry, xs, w, max_rows, seed)
    count, result = None, None
    for _ in range(iterations):
        result = fuse(clients, w, direction=direction, price=price, seed=seed, init=result)
        if result.num_global == count:
            break
        count = result.num_global
        spread = _member_cost_median(w, result)
        if spread is None:  # no global is shared by two clients
            break
        price = multiple * spread
    return price, result


def _nearest_cost_median(
    geometry: KLGeometry, xs: List[Tensor], w: Tensor, max_rows: int, seed: int
) -> float:
    """Median over (at most ``max_rows``) local components of ``w_j`` times the cost to the
    nearest component of another client."""
    x = torch.cat(xs)
    owner = torch.cat([torch.full((len(xj),), j) for j, xj in enumerate(xs)])
    rows = torch.arange(len(x))
    if len(x) > max_rows:
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_rows]
    y, c, phi = geometry.dual(x)
    nearest = []
    for chunk in rows.split(256):
        cost = KLGeometry.cost(x[chunk], phi[chunk], y, c)
        cost = cost.masked_fill(owner[chunk, None] == owner[None], math.inf)
        nearest.append(cost.min(-1).values * w[owner[chunk]])
    return max(float(torch.cat(nearest).median()), COST_FLOOR)


def _member_cost_median(w: Tensor, result: "FusionResult") -> Optional[float]:
    """Median of the costs ``w_j KL`` of local components to their globals, over globals
    matched by at least two clients (None if there is none)."""
    costs = [w[j] * c[result.support[a] >= 2].double() for j, (c, a) in enumerate(zip(result.costs, result.assignments))]
    costs = torch.cat(costs)
    if costs.numel() == 0:
        return None
    return max(float(costs.median()), COST_FLOOR)


def _checked(price: float, rule: str) -> float:
    if not (0 < price < math.inf):
        raise ValueError(
            f"the {rule} price rule gave {price}; a price must be positive and finite "
            "(pass price=... or check the clients' parameters)"
        )
    return float(price)


def _rule_price(
    price, clients, weights=None, direction: str = "reverse", *, prior=None, seed: int = 0
) -> Tuple[float, Optional["FusionResult"]]:
    """:func:`price_of` of checked clients (in memory, or read on access and checked by the
    engine), and for ``"spread"`` the last fusion its search ran (a warm start that converges
    in one sweep at that price); ``weights`` are already normalised."""
    price = as_price(price)
    if not isinstance(price, Price):
        return price, None
    rule = price.rule or RULES[0]
    fusion = None
    if rule == "counterpart":
        value = _counterpart_price(
            clients, weights, direction, COUNTERPART_MULTIPLE, COUNTERPART_WEIGHT, COUNTERPART_SAMPLE, seed
        )
    elif rule == "closest-pair":
        value = _closest_pair_price(clients, weights, direction)
    elif rule == "prior":
        if prior is None:
            raise ValueError('price rule "prior" needs the clients\' prior (prior=...)')
        value = _prior_price(clients, prior, weights)
    else:
        value, fusion = _spread_search(clients, weights, direction, SPREAD_MULTIPLE, 4, 2048, seed)
        if price.scale != 1.0 or fusion.price != value:
            fusion = None
    return _checked(value, rule) * price.scale, fusion


def price_of(
    price: Union[None, float, str, Price],
    clients: Sequence[Components],
    weights: Union[Sequence[float], Tensor, None] = None,
    direction: str = "reverse",
    *,
    prior: Optional[Components] = None,
    seed: int = 0,
) -> float:
    """
    The price (nats) a ``price=`` setting gives on these clients, as :func:`~pyro_fusion.fuse`
    would use it: e.g. to share one price between several fusions of the same clients.

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[0.0], [10.0]]), 1.0)})
        >>> b = Components.from_distributions({"x": Normal(torch.tensor([[1.0], [12.0]]), 1.0)})
        >>> price_of(Price(scale=2.0), [a, b])  # twice the default rule's price
        40.5

    :param price: a positive number, a rule name of :data:`RULES`, a :class:`Price` or None
        (the default rule, :func:`~pyro_fusion.price.counterpart_price`).
    :param list clients: the clients' :class:`Components`.
    :param weights: client weights, default uniform.
    :param str direction: the KL direction of the cost.
    :param Components prior: the clients' prior component (rule ``"prior"``).
    :param int seed: seed of the rules' draws.
    """
    clients = list(clients)
    check_clients(clients)
    if prior is not None:
        check_prior(prior, clients[0])
    return _rule_price(price, clients, client_weights(weights, len(clients)), direction, prior=prior, seed=seed)[0]


def _init_assignments(init, num_clients: int) -> Tuple[List[Tensor], int]:
    """Validated warm-start assignments, global indices renumbered ``0..M-1`` in order."""
    assignments = init.assignments if isinstance(init, FusionResult) else init
    if isinstance(assignments, Tensor) or not isinstance(assignments, Sequence) or len(assignments) != num_clients:
        raise ValueError(
            f"init: expected a FusionResult or a list of {num_clients} assignments (one per client), "
            f"got {type(init).__name__}" + (f" of length {len(assignments)}" if isinstance(assignments, Sequence) else "")
        )
    out = []
    for j, a in enumerate(assignments):
        a = torch.as_tensor(a)
        if a.dim() != 1 or a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
            raise ValueError(
                f"init: client {j}: expected a 1-D integer tensor of global indices, got {a.dtype} "
                f"of shape {tuple(a.shape)}"
            )
        a = a.long().cpu()
        if a.numel() and int(a.min()) < 0:
            raise ValueError(f"init: client {j}: negative global index {int(a.min())}")
        if a.unique().numel() != a.numel():
            raise ValueError(f"init: client {j} assigns two of its components to one global component")
        out.append(a)
    used = torch.cat(out).unique()
    index = torch.full((int(used.max()) + 1 if used.numel() else 0,), -1, dtype=torch.long)
    index[used] = torch.arange(used.numel())
    return [index[a] for a in out], used.numel()


def fuse(
    clients: Sequence[Components],
    weights: Union[Sequence[float], Tensor, None] = None,
    *,
    direction: str = "reverse",
    num_global: Optional[int] = None,
    price: Union[float, str, Price, None] = None,
    prior: Optional[Components] = None,
    combine: str = "average",
    max_sweeps: int = 100,
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
    init: Union[FusionResult, Sequence[Tensor], None] = None,
    device: Union[str, torch.device, None] = None,
    num_threads: Optional[int] = 1,
) -> FusionResult:
    """
    Fuse the components of several clients into global components (KL-fusion).

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[0.0], [10.0]]), 0.1)})
        >>> b = Components.from_distributions({"x": Normal(torch.tensor([[10.1], [20.0]]), 0.1)})
        >>> result = fuse([a, b], price=5.0)
        >>> result.num_global, result.assignments[1].tolist()
        (3, [1, 2])
        >>> again = fuse([a, b], price=5.0, init=result)  # warm start: one sweep, no change
        >>> again.iterations, again.converged, again.assignments[1].tolist()
        (1, True, [1, 2])

    :param list clients: one :class:`Components` per client (``L_j >= 1`` each, same fields).
        A list or tuple is held in memory; any other sequence (e.g. :class:`LazyClients`)
        is read item by item whenever a client is visited and nothing of it is kept, so
        fusion holds the global model and one client's components at a time.
    :param weights: positive client weights, e.g. data sizes (normalised to mean 1).
    :param str direction: ``"reverse"`` minimises ``sum KL(global || local)`` with
        natural-parameter averaging; ``"forward"`` minimises ``sum KL(local || global)`` with
        moment matching.
    :param int num_global: parametric mode: this many global components, no new ones.
    :param price: nonparametric mode: the price of a global component, a positive number
        (nats), a rule of :mod:`pyro_fusion.price` by name (``"counterpart"``,
        ``"closest-pair"``, ``"prior"``, ``"spread"``) or a :class:`~pyro_fusion.price.Price`
        (a rule times a scale); default :func:`~pyro_fusion.price.counterpart_price`. A rule
        that gives a non-finite or non-positive price is an error. A warning says when no
        two clients share a global component.
    :param Components prior: one prior component; needed by the ``"prior"`` rule and by
        ``combine="product"``.
    :param str combine: ``"average"`` (the barycenter) or ``"product"``: after matching,
        ``eta_g = sum eta_l - (m_g - 1) eta_prior`` over the ``m_g`` components matched to
        ``g``, the exact posterior given every client's data when all used ``prior``.
    :param int max_sweeps: maximum number of sweeps over the clients.
    :param int seed: seed of the client order (and of the parametric initialisation).
    :param torch.dtype dtype: working dtype of the cost matrices (default: the clients';
        client 0's for streamed clients). Per-global sums and the objective are float64.
    :param init: warm start: a previous :class:`FusionResult` of the same clients (or one
        LongTensor of global indices per client). Fusion starts from that assignment
        instead of adding the clients one by one; from a converged result with the same
        price it converges after one sweep. Useful for price searches and for clients
        whose parameters changed a little since. In parametric mode, globals that no
        client uses are seeded as in a cold start.
    :param device: where cost matrices and barycenters are computed (default: client 0's
        device); clients may live on any device. The assignment runs on the CPU.
    :param int num_threads: intra-op CPU threads while fusing, the price rule included
        (default 1: the per-client work is small and extra threads mostly wait, however
        ``OMP_WAIT_POLICY`` is set); large matrix products run on one thread or on the
        caller's threads, whichever is faster when timed (:mod:`pyro_fusion.threads`).
        None: the caller's setting for everything. It is restored afterwards either way.
    """
    with engine_threads(num_threads):
        return _fuse(
            clients, weights, direction, num_global, price, prior, combine, max_sweeps, seed, dtype, init, device
        )


def _fuse(clients, weights, direction, num_global, price, prior, combine, max_sweeps, seed, dtype, init, device):
    """:func:`fuse` with the thread setting in place."""
    check_direction(direction)
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; expected one of {COMBINES}")
    in_memory = isinstance(clients, (list, tuple)) or not isinstance(clients, Sequence)
    if not isinstance(clients, Sequence):
        clients = list(clients)
    if len(clients) == 0:
        raise ValueError("fuse needs at least one client")
    if in_memory:
        check_clients(clients)
    w = client_weights(weights, len(clients))
    first = clients[0]
    if not in_memory:
        check_client(0, first, first)
    families = first.families
    if prior is not None:
        check_prior(prior, first)
    if combine == "product" and prior is None:
        raise ValueError('combine="product" needs the prior the clients shared (prior=...)')
    if num_global is not None:
        if isinstance(num_global, bool) or not isinstance(num_global, (int, np.integer)) or num_global < 1:
            raise ValueError(f"num_global must be a positive integer, got {num_global!r}")
        num_global, price = int(num_global), None
    else:
        price = as_price(price)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a nonnegative integer, got {seed!r}")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, (int, np.integer)) or max_sweeps < 0:
        raise ValueError(f"max_sweeps must be a nonnegative integer, got {max_sweeps!r}")
    if dtype is None:
        dtype = first.dtype
        for client in clients if in_memory else ():
            dtype = torch.promote_types(dtype, client.dtype)
    device = torch.device(device) if device is not None else next(iter(first.fields.values())).natural.device
    del first
    geometry = KLGeometry(families, direction)
    source = _ClientSource(clients, geometry, dtype, device, keep=in_memory, max_components=num_global)
    start = None
    if init is not None:
        start = _init_assignments(init, len(clients))
        if num_global is not None and start[1] > num_global:
            raise ValueError(f"init uses {start[1]} global components, more than num_global={num_global}")
    if in_memory:
        for j in range(len(clients)):
            client = source[j]  # checks every client before any work
            if start is not None and len(start[0][j]) != len(client.phi):
                raise ValueError(
                    f"init: client {j} has {len(client.phi)} components, its assignment {len(start[0][j])}"
                )
    rule_start = time.perf_counter()
    if isinstance(price, Price):
        price, searched = _rule_price(price, clients, w, direction, prior=prior, seed=seed)
        if start is None and searched is not None:  # the rule's last fusion ran at this price
            start = _init_assignments(searched, len(clients))
    rule_seconds = time.perf_counter() - rule_start
    rng = np.random.default_rng(seed)
    state = _FusionState(geometry, source, w, price, num_global, rng)
    if start is None:
        if num_global is not None:
            state.seed_globals(num_global)
        state.sweep(rng.permutation(len(clients)))
    else:
        state.start_from(*start, num_global)
    state.recorded = state.objective()
    objective = [state.recorded]
    converged, sweeps = False, 0
    while sweeps < max_sweeps and not converged:
        sweeps += 1
        converged = not state.sweep(rng.permutation(len(clients)), objective)
    natural, assignments, support, costs = state.result_parts()
    if price is not None and len(clients) > 1 and bool((support == 1).all()):
        warnings.warn(
            f"fuse: no two clients share a global component at price {price:.4g} ({support.numel()} "
            "globals, one per local component); if the clients hold versions of the same components, "
            "a larger price merges them (e.g. price=Price(scale=4.0))",
            UserWarning,
            stacklevel=3,
        )

    if combine == "product":
        natural = _product(clients, assignments, prior, support.numel(), device)
    chunks = natural.to(dtype).split(geometry.sizes, -1)
    global_components = Components({n: (f, c) for (n, f), c in zip(families.items(), chunks)})
    if combine == "product":
        global_components.check("combine='product' (the product of posteriors is not a valid "
                                "distribution; use combine='average')")
    return FusionResult(
        components=global_components,
        assignments=assignments,
        support=support,
        objective=objective,
        iterations=sweeps,
        converged=converged,
        price=price,
        direction=direction,
        combine=combine,
        info={**state.info, "rule_seconds": rule_seconds},
        costs=costs,
    )


def _product(clients, assignments, prior: Components, num_global: int, device) -> Tensor:
    eta0 = prior.concat().to(device=device, dtype=torch.float64)
    total = torch.zeros(num_global, eta0.shape[-1], dtype=torch.float64, device=device)
    count = torch.zeros(num_global, dtype=torch.float64, device=device)
    for client, a in zip(clients, assignments):
        a = a.to(device)
        total.index_add_(0, a, client.concat().to(device=device, dtype=torch.float64))
        count.index_add_(0, a, torch.ones(len(a), dtype=torch.float64, device=device))
    return total - (count - 1).unsqueeze(-1) * eta0

