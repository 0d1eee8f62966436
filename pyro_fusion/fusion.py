"""The KL-fusion engine: alternate per-client assignment and KL barycenters.

With client weights ``w_j``, a price ``lam`` per global component in use and ``pi_j`` the
injective map of client ``j``'s components to global ones, fusion minimises::

    F(pi, p) = sum_j sum_l w_j KL(q_jl, p_{pi_j(l)}) + lam * #globals

(KL in the chosen direction). For fixed ``pi`` the barycenters minimise ``F`` exactly, and
then ``F = sum_jl w_j Phi(x_jl) - sum_g W_g Phi(xbar_g) + lam M`` (a Jensen gap in the
averaging space of :mod:`pyro_fusion.cost`), which the engine tracks from per-global sums in
float64. Clients are re-matched in random order. Each update first tries the
SPAHM/PFNM-style match against the barycenters *without* the client's own contribution;
if that would increase ``F`` it falls back to the exact block-coordinate step (match
against the current barycenters, where a global used by this client alone costs ``lam``
extra), which never increases ``F``. So the recorded objective never increases.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .assignment import NEW, assign_rows
from .components import Components
from .cost import KLGeometry, check_direction

COMBINES = ("average", "product")


@dataclass
class FusionResult:
    """
    What :func:`fuse` returns.

    :ivar Components components: the ``M`` global components.
    :ivar list assignments: per client, a LongTensor mapping local index -> global index.
    :ivar Tensor support: LongTensor ``[M]``, the number of clients matched to each global.
    :ivar list objective: ``F`` after initialisation and after every client update.
    :ivar int iterations: number of full sweeps over the clients.
    :ivar bool converged: whether a sweep changed no assignment.
    :ivar float price: the price of a global component (None in parametric mode).
    :ivar str direction: ``"reverse"`` or ``"forward"``.
    :ivar str combine: ``"average"`` or ``"product"``.
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


def _check_clients(clients: Sequence[Components]) -> None:
    if len(clients) == 0:
        raise ValueError("fuse needs at least one client")
    ref = clients[0]
    for j, client in enumerate(clients):
        if not isinstance(client, Components):
            raise ValueError(f"client {j}: expected Components, got {type(client).__name__}")
        if len(client) == 0:
            raise ValueError(f"client {j} has zero components")
        if list(client.fields) != list(ref.fields):
            raise ValueError(
                f"client {j} has fields {list(client.fields)}, client 0 has {list(ref.fields)}"
            )
        for name, f in client.fields.items():
            ref_family = ref.fields[name].family
            if type(f.family) is not type(ref_family):
                raise ValueError(
                    f"client {j}, field {name!r}: family {f.family.name} differs from "
                    f"client 0's {ref_family.name} (one family per field)"
                )
            if f.family != ref_family:
                raise ValueError(
                    f"client {j}, field {name!r}: {f.family!r} differs from client 0's "
                    f"{ref_family!r} (event shapes must agree)"
                )
        client.check(f"client {j}")


def client_weights(weights, num_clients: int) -> Tensor:
    """Validated client weights normalised to mean 1 (uniform when ``weights`` is None)."""
    if weights is None:
        return torch.ones(num_clients, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.numel() != num_clients:
        raise ValueError(f"got {w.numel()} weights for {num_clients} clients")
    for j in range(num_clients):
        if not (torch.isfinite(w[j]) and w[j] > 0):
            raise ValueError(f"client {j}: weight must be positive and finite, got {float(w[j])}")
    return w / w.mean()


class _FusionState:
    """Assignments plus per-global float64 sums; see the module docstring."""

    def __init__(self, geometry, xs64, dtype, phis, weights, price, num_global, rng):
        self.geometry = geometry
        self.xs64 = xs64  # per client [L_j, d] float64, for the sums
        self.xs = [x.to(dtype) for x in xs64]  # the same in the working dtype, for the GEMMs
        self.phis = phis  # per client [L_j] float64
        self.weights = weights
        self.price = price
        self.parametric = num_global is not None
        self.rng = rng
        d = xs64[0].shape[-1]
        self.assign: List[Optional[Tensor]] = [None] * len(xs64)
        self.sum = torch.zeros(0, d, dtype=torch.float64)
        self.weight = torch.zeros(0, dtype=torch.float64)
        self.count = torch.zeros(0, dtype=torch.long)
        self.xbar = torch.zeros(0, d, dtype=torch.float64)
        self.y = torch.zeros(0, d, dtype=torch.float64)
        self.c = torch.zeros(0, dtype=torch.float64)
        self.phi = torch.zeros(0, dtype=torch.float64)
        self.local_phi = 0.0  # sum of w_j Phi(x_jl) over assigned components
        if self.parametric:
            self._seed_globals(num_global)

    # ----- per-global quantities -----------------------------------------------------
    def _refresh(self, state: dict, index: Tensor) -> None:
        """Recompute barycenters and their duals at ``index`` (where they have weight)."""
        index = index[state["count"][index] > 0]
        if index.numel() == 0:
            return
        xbar = state["sum"][index] / state["weight"][index].unsqueeze(-1)
        y, c, phi = self.geometry.dual(xbar)
        state["xbar"][index] = xbar
        state["y"][index] = y
        state["c"][index] = c
        state["phi"][index] = phi

    _KEYS = ("sum", "weight", "count", "xbar", "y", "c", "phi")

    def _state(self) -> dict:
        """The per-global tensors (never modified in place; updates build new ones)."""
        return {k: getattr(self, k) for k in self._KEYS}

    def _objective(self, state: dict, local_phi: float) -> float:
        gap = local_phi - float((state["weight"] * state["phi"]).sum())
        if self.parametric:
            return gap
        return gap + self.price * int((state["count"] > 0).sum())

    def objective(self) -> float:
        return self._objective(self.__dict__, self.local_phi)

    # ----- initialisation (parametric mode) ------------------------------------------
    def _seed_globals(self, num_global: int) -> None:
        """k-means++ seeding with the Bregman cost over all local components."""
        x = torch.cat(self.xs64)
        phi_x = torch.cat(self.phis)
        first = int(self.rng.integers(len(x)))
        centers = [first]
        y, c, _ = self.geometry.dual(x[first : first + 1])
        dist = KLGeometry.cost(x, phi_x, y, c).squeeze(-1).clamp(min=0)
        for _ in range(1, num_global):
            p = dist.numpy() / dist.sum().item() if dist.sum() > 0 else None
            nxt = int(self.rng.choice(len(x), p=p))
            centers.append(nxt)
            y, c, _ = self.geometry.dual(x[nxt : nxt + 1])
            dist = torch.minimum(dist, KLGeometry.cost(x, phi_x, y, c).squeeze(-1).clamp(min=0))
        self.xbar = x[centers].clone()
        self.y, self.c, self.phi = self.geometry.dual(self.xbar)
        self.sum = torch.zeros_like(self.xbar)
        self.weight = torch.zeros(num_global, dtype=torch.float64)
        self.count = torch.zeros(num_global, dtype=torch.long)

    # ----- one client update -----------------------------------------------------------
    def _apply(self, base: dict, j: int, new: Tensor, reopen: Tensor, copy: bool = True) -> dict:
        """Stats after adding client ``j`` under ``new`` (``NEW`` rows reopen ``reopen``);
        ``base`` is copied first unless ``copy`` is False."""
        state = {k: v.clone() for k, v in base.items()} if copy else dict(base)
        w = float(self.weights[j])
        new = new.clone()
        opening = (new == NEW).nonzero().squeeze(-1)
        if opening.numel():
            reuse = reopen[opening]
            can_reuse = reuse >= 0
            new[opening[can_reuse]] = reuse[can_reuse]
            fresh = opening[~can_reuse]
            if fresh.numel():
                m = state["count"].numel()
                new[fresh] = torch.arange(m, m + fresh.numel())
                d = self.xs64[j].shape[-1]
                grow = fresh.numel()
                for key in ("sum", "xbar", "y"):
                    state[key] = torch.cat([state[key], torch.zeros(grow, d, dtype=torch.float64)])
                for key in ("weight", "c", "phi"):
                    state[key] = torch.cat([state[key], torch.zeros(grow, dtype=torch.float64)])
                state["count"] = torch.cat([state["count"], torch.zeros(grow, dtype=torch.long)])
        state["sum"].index_add_(0, new, self.xs64[j] * w)
        state["weight"].index_add_(0, new, torch.full((len(new),), w, dtype=torch.float64))
        state["count"].index_add_(0, new, torch.ones(len(new), dtype=torch.long))
        self._refresh(state, new)
        state["assign"] = new
        return state

    def update(self, j: int) -> bool:
        """Re-match client ``j``; returns whether its assignment changed."""
        w = float(self.weights[j])
        x, phi_x = self.xs[j], self.phis[j]
        current = self._state()
        old = self.assign[j]
        local_phi = self.local_phi + (0.0 if old is not None else float(w * phi_x.sum()))
        before = self.objective() if old is not None else None
        removed = {k: v.clone() for k, v in current.items()}
        reopen = torch.full((len(x),), NEW, dtype=torch.long)
        if old is not None:
            removed["sum"].index_add_(0, old, -self.xs64[j] * w)
            removed["weight"].index_add_(0, old, torch.full((len(old),), -w, dtype=torch.float64))
            removed["count"].index_add_(0, old, -torch.ones(len(old), dtype=torch.long))
            self._refresh(removed, old)
            if not self.parametric:
                solo = removed["count"][old] == 0
                reopen[solo] = old[solo]
        # candidate: match against the barycenters of the other clients
        alive = torch.ones_like(removed["count"], dtype=torch.bool) if self.parametric else removed["count"] > 0
        cols = alive.nonzero().squeeze(-1)
        cost = KLGeometry.cost(x, phi_x, removed["y"][cols], removed["c"][cols]) * w
        match = assign_rows(cost, self.price if not self.parametric else None)
        new = torch.cat([cols, cols.new_tensor([NEW])])[match]  # NEW (-1) picks the last entry
        if old is not None and torch.equal(torch.where(new == NEW, reopen, new), old):
            return False  # re-adding the client would rebuild the current state
        state = self._apply(removed, j, new, reopen)
        after = self._objective(state, local_phi)
        if before is not None and after > before:
            # exact block-coordinate step against the current barycenters
            cost = KLGeometry.cost(x, phi_x, current["y"], current["c"]) * w
            if not self.parametric:
                cost = cost + self.price * (removed["count"] == 0).to(cost.dtype)
            match = assign_rows(cost, None if self.parametric else self.price)
            state = self._apply(removed, j, match, reopen, copy=False)
            after = self._objective(state, local_phi)
        new = state.pop("assign")
        for key, value in state.items():
            setattr(self, key, value)
        self.local_phi = local_phi
        self.assign[j] = new
        if not self.parametric:
            self._drop_empty()
            new = self.assign[j]
        return old is None or not torch.equal(old, new)

    def _drop_empty(self) -> None:
        keep = self.count > 0
        if bool(keep.all()):
            return
        remap = torch.cumsum(keep.long(), 0) - 1
        for key in self._KEYS:
            setattr(self, key, getattr(self, key)[keep])
        self.assign = [None if a is None else remap[a] for a in self.assign]


def default_price(
    clients: Sequence[Components],
    weights: Optional[Tensor] = None,
    direction: str = "reverse",
    prior: Optional[Components] = None,
) -> float:
    """
    The default price of a global component.

    - With a ``prior`` component ``p0``: the median over local components of
      ``w_j KL(q_jl || p0)``, what a component is worth beyond the prior.
    - Without: the median, over clients with at least two components, of the smallest
      cost between two components of the same client. Components inside one client are
      distinct by construction, so a local component opens a new global one only when it
      is farther from every global one than a typical client's two closest components.
      (Half that median, the first rule tried, split components on trained Gaussian
      mixtures and HMMs, whose posteriors sharpen with data: 4 of 10 vs 6 of 10 exact
      counts on the paper's mixture simulation, ``benchmarks/gmm_paper.py``.)

    :param list clients: the clients' :class:`Components`.
    :param Tensor weights: client weights (normalised to mean 1), default uniform.
    :param str direction: the KL direction of the cost.
    :param Components prior: optional single prior component.
    """
    w = client_weights(weights, len(clients))
    families = clients[0].families
    if prior is not None:
        values = []
        for j, client in enumerate(clients):
            kl = sum(
                f.family.kl(f.natural.double(), prior[name].natural.double())
                for name, f in client.fields.items()
            )
            values.append(w[j] * kl)
        return float(torch.cat(values).median())
    geometry = KLGeometry(families, direction)
    minima = []
    for j, client in enumerate(clients):
        if len(client) < 2:
            continue
        x = geometry.coordinates(client.concat())
        y, c, phi = geometry.dual(x)
        cost = KLGeometry.cost(x, phi, y, c)
        cost.fill_diagonal_(float("inf"))
        minima.append(w[j] * cost.min().double())
    if not minima:
        raise ValueError(
            "cannot derive a default price: no client has two components and no prior was "
            "given; pass price=... or prior=..."
        )
    return float(torch.stack(minima).median())


#: default ``multiple`` of :func:`spread_price`
SPREAD_MULTIPLE = 40.0
#: costs below this (nats) count as this in :func:`spread_price`
COST_FLOOR = 1e-3


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
    nearest component in *another* client (a counterpart, when each component is held by
    several clients), fuses at that price, sets the price from the spread of the matches, and
    repeats until the number of globals stops changing, returning the price of the last
    fusion (after ``iterations`` fusions, the price set from the last one). The price
    grows with the spread as posteriors sharpen with data and does not depend on the
    distance between *different* components, unlike the closest-pair rule of
    :func:`default_price`, which merges close components whenever most clients hold only
    far-apart ones (see ``benchmarks/gmm_paper.py``). It assumes versions of one component
    are much closer than different components; where they are not, merging raises the
    spread and the search can settle on merging almost everything (LDA topics of 15 Brown
    genres, 10 per client: 10 globals, each matched by all 15 clients).

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[0.0], [10.0]]), 0.1)})
        >>> b = Components.from_distributions({"x": Normal(torch.tensor([[0.2], [10.1]]), 0.1)})
        >>> round(spread_price([a, b]), 1)  # costs 0.5, 0.5, 0.125, 0.125: 40 * lower median
        5.0

    :param list clients: the clients' :class:`Components` (at least two clients).
    :param Tensor weights: client weights (normalised to mean 1), default uniform.
    :param str direction: the KL direction of the cost.
    :param float multiple: the price in units of the spread.
    :param int iterations: maximum number of fusions.
    :param int max_rows: the starting median is taken over at most this many local
        components (a random subset), which bounds its work at ``max_rows`` x all components.
    :param int seed: seed of that subset and of the fusions' client order.
    """
    clients = list(clients)
    _check_clients(clients)
    if len(clients) < 2:
        raise ValueError("spread_price needs at least two clients")
    check_direction(direction)
    if not (multiple > 0 and np.isfinite(multiple)):
        raise ValueError(f"multiple must be positive and finite, got {multiple}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    w = client_weights(weights, len(clients))
    geometry = KLGeometry(clients[0].families, direction)
    xs = [geometry.coordinates(c.concat().double()) for c in clients]
    phis = [geometry.potential(x) for x in xs]
    price = multiple * _nearest_cost_median(geometry, xs, w, max_rows, seed)
    count = None
    for _ in range(iterations):
        result = fuse(clients, w, direction=direction, price=price, seed=seed)
        if result.num_global == count:
            break
        count = result.num_global
        spread = _member_cost_median(geometry, xs, phis, w, result)
        if spread is None:  # no global is shared by two clients
            break
        price = multiple * spread
    return price


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
        cost = cost.masked_fill(owner[chunk, None] == owner[None], float("inf"))
        nearest.append(cost.min(-1).values * w[owner[chunk]])
    return max(float(torch.cat(nearest).median()), COST_FLOOR)


def _member_cost_median(
    geometry: KLGeometry, xs: List[Tensor], phis: List[Tensor], w: Tensor, result: FusionResult
) -> Optional[float]:
    """Median of ``w_j`` times the cost of a local component to its global, over globals
    matched by at least two clients (None if there is none)."""
    y, c, _ = geometry.dual(geometry.coordinates(result.components.concat().double()))
    costs = []
    for j, (x, phi, a) in enumerate(zip(xs, phis, result.assignments)):
        shared = result.support[a] >= 2
        cost = KLGeometry.cost(x[shared], phi[shared], y, c)
        costs.append(cost.gather(-1, a[shared, None]).squeeze(-1) * w[j])
    costs = torch.cat(costs)
    if costs.numel() == 0:
        return None
    return max(float(costs.median()), COST_FLOOR)


def fuse(
    clients: Sequence[Components],
    weights: Union[Sequence[float], Tensor, None] = None,
    *,
    direction: str = "reverse",
    num_global: Optional[int] = None,
    price: Union[float, str, None] = None,
    prior: Optional[Components] = None,
    combine: str = "average",
    max_sweeps: int = 100,
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
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

    :param list clients: one :class:`Components` per client (``L_j >= 1`` each, same fields).
    :param weights: positive client weights, e.g. data sizes (normalised to mean 1).
    :param str direction: ``"reverse"`` minimises ``sum KL(global || local)`` with
        natural-parameter averaging; ``"forward"`` minimises ``sum KL(local || global)`` with
        moment matching.
    :param int num_global: parametric mode: this many global components, no new ones.
    :param price: nonparametric mode: price of a global component, or ``"spread"``
        for :func:`spread_price` (default :func:`default_price`).
    :param Components prior: one prior component; sets the default price and is needed by
        ``combine="product"``.
    :param str combine: ``"average"`` (the barycenter) or ``"product"``: after matching,
        ``eta_g = sum eta_l - (m_g - 1) eta_prior`` over the ``m_g`` components matched to
        ``g``, the exact posterior given every client's data when all used ``prior``.
    :param int max_sweeps: maximum number of sweeps over the clients.
    :param int seed: seed of the client order (and of the parametric initialisation).
    :param torch.dtype dtype: working dtype of the cost matrices (default: the clients').
    """
    check_direction(direction)
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; expected one of {COMBINES}")
    clients = list(clients)
    _check_clients(clients)
    w = client_weights(weights, len(clients))
    families = clients[0].families
    if prior is not None:
        _check_clients([clients[0], prior])
        if len(prior) != 1:
            raise ValueError(f"prior must be one component, got {len(prior)}")
    if combine == "product" and prior is None:
        raise ValueError('combine="product" needs the prior the clients shared (prior=...)')
    if num_global is not None:
        if num_global < 1 or int(num_global) != num_global:
            raise ValueError(f"num_global must be a positive integer, got {num_global}")
        for j, client in enumerate(clients):
            if len(client) > num_global:
                raise ValueError(
                    f"client {j} has {len(client)} components, more than num_global={num_global}"
                )
        price = None
    elif price is None:
        price = default_price(clients, w, direction, prior)
    elif isinstance(price, str):
        if price != "spread":
            raise ValueError(f'unknown price rule {price!r}; expected a number or "spread"')
        price = spread_price(clients, w, direction, seed=seed)
    elif not (price > 0 and np.isfinite(price)):
        raise ValueError(f"price must be positive and finite, got {price}")
    if dtype is None:
        dtype = clients[0].dtype
        for client in clients:
            dtype = torch.promote_types(dtype, client.dtype)

    geometry = KLGeometry(families, direction)
    xs64 = [geometry.coordinates(c.concat().double()) for c in clients]
    phis = [geometry.potential(x) for x in xs64]
    rng = np.random.default_rng(seed)
    state = _FusionState(geometry, xs64, dtype, phis, w, price, num_global, rng)
    for j in rng.permutation(len(clients)):
        state.update(int(j))
    objective = [state.objective()]
    converged, sweeps = False, 0
    while sweeps < max_sweeps and not converged:
        sweeps += 1
        changed = False
        for j in rng.permutation(len(clients)):
            changed |= state.update(int(j))
            objective.append(state.objective())
        converged = not changed

    support = state.count.clone()
    if combine == "product":
        natural = _product(clients, state.assign, prior, support.numel())
    else:
        natural = geometry.natural(state.xbar)
    global_components = clients[0].with_natural(natural.to(dtype))
    if combine == "product":
        global_components.check("combine='product' (the product of posteriors is not a valid "
                                "distribution; use combine='average')")
    return FusionResult(
        components=global_components,
        assignments=[a.clone() for a in state.assign],
        support=support,
        objective=objective,
        iterations=sweeps,
        converged=converged,
        price=price,
        direction=direction,
        combine=combine,
    )


def _product(clients, assignments, prior: Components, num_global: int) -> Tensor:
    eta0 = prior.concat().double()
    total = torch.zeros(num_global, eta0.shape[-1], dtype=torch.float64)
    count = torch.zeros(num_global, dtype=torch.float64)
    for client, a in zip(clients, assignments):
        total.index_add_(0, a, client.concat().double())
        count.index_add_(0, a, torch.ones(len(a), dtype=torch.float64))
    return total - (count - 1).unsqueeze(-1) * eta0
