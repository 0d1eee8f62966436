"""
The price of a global component: what decides how many global components nonparametric
fusion finds.

Fusion matches each local component to the global component it is cheapest to match, unless
every global component costs more than the price, in which case the local component opens
a new one (:func:`~pyro_fusion.fuse`). The rules here set that price from the clients' own
posteriors, in the units of the costs it is compared with (client weight times KL in the
fusion's direction):

- ``"counterpart"`` (the default, :func:`counterpart_price`): between the typical cost of a
  component's counterpart in another client and that of a component there that is certainly
  different;
- ``"closest-pair"`` (:func:`closest_pair_price`, the default before 0.2): the typical cost
  between a client's two closest components;
- ``"prior"`` (:func:`prior_price`, needs ``prior=``): the typical cost of a local component
  to the clients' shared prior;
- ``"spread"`` (:func:`~pyro_fusion.fusion.spread_price`, which runs the engine): a multiple
  of the typical cost of a matched component to its global one, found by fusing.

``price=`` of :func:`~pyro_fusion.fuse` and of every front door takes a positive number, one
of these names, or a :class:`Price` (a rule times a scale);
:func:`~pyro_fusion.fusion.price_of` says what a setting gives on given clients. The user guide's page "Choosing the price" shows what each
rule gives on the benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .components import Components, check_clients, check_prior, client_weights
from .cost import KLGeometry, check_direction, kl_cost_matrix

__all__ = [
    "COST_FLOOR",
    "COUNTERPART_SAMPLE",
    "COUNTERPART_MULTIPLE",
    "COUNTERPART_WEIGHT",
    "RULES",
    "SPREAD_MULTIPLE",
    "Price",
    "closest_pair_price",
    "counterpart_costs",
    "counterpart_price",
    "prior_price",
]

#: costs below this (nats) carry no information about spreads: identical components (e.g. several
#: components a client left at the prior) are left out of the rules' medians, and no rule prices
#: a new component below it
COST_FLOOR = 1e-3
#: ``multiple`` of :func:`counterpart_price`
COUNTERPART_MULTIPLE = 1.5
#: ``weight`` of :func:`counterpart_price`
COUNTERPART_WEIGHT = 0.75
#: default ``max_anchors``, ``max_others`` and ``max_rows`` of :func:`counterpart_price`: the
#: clients whose components are measured, the clients each is compared with, the components measured
COUNTERPART_SAMPLE = (16, 64, 1024)
#: default ``multiple`` of :func:`spread_price`
SPREAD_MULTIPLE = 40.0
#: the rules ``price=`` understands by name; the first is the default
RULES = ("counterpart", "closest-pair", "prior", "spread")


@dataclass(frozen=True)
class Price:
    """
    The price of a new global component as one setting: a price ``rule`` times ``scale``.

    ``price=`` of :func:`~pyro_fusion.fuse` and of every front door takes a positive number,
    a rule name (:data:`RULES`, or a family's own rule such as ``"location"`` of
    :func:`~pyro_fusion.fuse_mlps`), one value per matching stage (network layers), or a
    ``Price``; ``None`` is the default rule.

    Example::

        >>> fuse_posteriors(posts, price=Price("spread")).num_global  # a rule by name
        4
        >>> Price("counterpart", scale=2.0)  # the default rule, doubled: merges more
        Price(rule='counterpart', scale=2.0)

    :param str rule: a rule name; None: the default rule (the family's, where it has one).
    :param float scale: multiplies the rule's price; above 1 merges more, below 1 keeps more.
    """

    rule: Optional[str] = None
    scale: float = 1.0

    def __post_init__(self):
        if self.rule is not None and not isinstance(self.rule, str):
            raise ValueError(f"Price: rule must be a rule name or None, got {self.rule!r}")
        number = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
        if not (number and 0 < self.scale < math.inf):
            raise ValueError(f"Price: scale must be a positive number, got {self.scale!r}")


def as_price(price) -> Union[float, Price]:
    """``price=`` checked: a positive finite number (as float) or a :class:`Price` of a rule in
    :data:`RULES` (None and rule names become one)."""
    if price is None:
        return Price()
    if isinstance(price, str):
        price = Price(price)
    if isinstance(price, Price):
        if price.rule is not None and price.rule not in RULES:
            raise ValueError(f"unknown price rule {price.rule!r}; expected a positive number or one of {RULES}")
        return price
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 < price < math.inf:
        raise ValueError(f"price must be positive and finite (nats), a rule name {RULES} or a Price, got {price!r}")
    return float(price)


def _median_above_floor(costs: Tensor) -> Optional[float]:
    costs = costs[costs >= COST_FLOOR]
    return float(costs.median()) if costs.numel() else None


def counterpart_costs(
    clients: Sequence[Components],
    weights: Union[Sequence[float], Tensor, None] = None,
    direction: str = "reverse",
    *,
    max_anchors: int = COUNTERPART_SAMPLE[0],
    max_others: int = COUNTERPART_SAMPLE[1],
    max_rows: int = COUNTERPART_SAMPLE[2],
    seed: int = 0,
) -> Tuple[Tensor, Tensor]:
    """
    For each component of (up to ``max_anchors``, drawn at random) anchor clients: the cost
    ``w_j KL`` to its nearest component among (up to ``max_others``, drawn at random) other
    clients, its *counterpart*, and to the runner-up component of the counterpart's own
    client, which is certainly a different component (a client's components are distinct).
    An anchor client with more than ``max_rows / anchors`` components contributes that many,
    drawn at random.

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[0.0], [10.0]]), 1.0)})
        >>> b = Components.from_distributions({"x": Normal(torch.tensor([[1.0], [12.0]]), 1.0)})
        >>> first, second = counterpart_costs([a, b])
        >>> first.tolist(), second.tolist()
        ([0.5, 2.0, 0.5, 2.0], [72.0, 40.5, 40.5, 72.0])

    :param list clients: the clients' :class:`Components` (at least two).
    :param weights: client weights (normalised to mean 1), default uniform.
    :param str direction: the KL direction of the cost.
    :param int max_anchors: clients whose components are measured.
    :param int max_others: other clients each anchor is compared with.
    :param int max_rows: anchor components measured in all, at most.
    :param int seed: seed of those draws.
    :returns: ``(counterpart costs, runner-up costs)`` (float64); the second has one entry per
        anchor component whose counterpart's client has at least two components.
    """
    check_direction(direction)
    if len(clients) < 2:
        raise ValueError("counterpart costs need at least two clients")
    check_clients(clients)
    w = client_weights(weights, len(clients))
    return _counterpart_costs(clients, w, direction, max_anchors, max_others, max_rows, seed)


def _counterpart_costs(clients, w: Tensor, direction: str, max_anchors: int, max_others: int, max_rows: int, seed: int):
    """:func:`counterpart_costs` of checked clients (at least two) with normalised weights ``w``."""
    num_clients = len(clients)
    geometry = KLGeometry(clients[0].families, direction)
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randperm(num_clients, generator=generator)[:max_anchors].tolist()
    per_anchor = max(1, max_rows // len(anchors))
    rows, others = [], []  # per anchor: its measured components, the clients it is compared with
    for j in anchors:
        others.append([k for k in torch.randperm(num_clients, generator=generator).tolist() if k != j][:max_others])
        x = clients[j].concat().double()
        if len(x) > per_anchor:
            x = x[torch.randperm(len(x), generator=generator)[:per_anchor]]
        rows.append(x)
    # one frame for every cost (KL is invariant under the translation; it only helps rounding)
    shifts = geometry.centre(torch.cat(rows))
    xs = [geometry.coordinates(geometry.translate(x, shifts)) for x in rows]
    phis = [geometry.potential(x) for x in xs]
    # per anchor, per compared client: the smallest and second smallest cost of each row
    best = [torch.full((2, len(x), len(o)), math.inf, dtype=torch.float64) for x, o in zip(xs, others)]
    users: dict = {}
    for a, ks in enumerate(others):
        for position, k in enumerate(ks):
            users.setdefault(k, []).append((a, position))
    for k, uses in users.items():  # each compared client's dual terms once
        y, c, _ = geometry.dual(geometry.coordinates(geometry.translate(clients[k].concat().double(), shifts)))
        for a, position in uses:
            cost = KLGeometry.cost(xs[a], phis[a], y, c)
            low = cost.topk(min(2, cost.shape[1]), dim=1, largest=False).values
            best[a][: low.shape[1], :, position] = low.T
    first, second = [], []
    for a, j in enumerate(anchors):
        nearest, client = best[a][0].min(1)
        first.append(w[j] * nearest)
        second.append(w[j] * best[a][1].gather(1, client[:, None]).squeeze(1))
    second = torch.cat(second)
    return torch.cat(first), second[torch.isfinite(second)]


def counterpart_price(
    clients: Sequence[Components],
    weights: Union[Sequence[float], Tensor, None] = None,
    direction: str = "reverse",
    *,
    multiple: float = COUNTERPART_MULTIPLE,
    weight: float = COUNTERPART_WEIGHT,
    max_anchors: int = COUNTERPART_SAMPLE[0],
    max_others: int = COUNTERPART_SAMPLE[1],
    max_rows: int = COUNTERPART_SAMPLE[2],
    seed: int = 0,
) -> float:
    """
    The default price: ``multiple * m1 ** (1 - weight) * m2 ** weight``, where ``m1`` is the
    median cost of a local component to its counterpart (its nearest component in another
    client) and ``m2`` the median cost to the runner-up in the counterpart's client
    (:func:`counterpart_costs`).

    The model behind it: a component that several clients hold appears in each as a version
    that differs from the others by the between-client variation of that component, and
    different components differ by more. ``m1`` measures the first, ``m2`` the second, both
    in the units of the costs fusion compares with the price. A local component opens a new
    global component when it is farther from every global one than a point between them, on a
    log scale ``weight`` of the way from ``m1`` to ``m2``. Like the ratio test for matching
    image features (Lowe, 2004), comparing the best match with the runner-up makes the rule
    invariant to how sharp the posteriors are (both costs grow together with the clients'
    data), and it needs no prior. Where versions of a component are not closer than
    different components (``m1`` about ``m2``: topics, hidden units), the price is about
    ``multiple`` times the typical nearest-neighbour cost.

    ``multiple=1.5`` and ``weight=0.75`` were chosen on the Gaussian-mixture simulation
    (seeds 0-9), the LDA, mocap and MNIST-network benchmarks, and reported on seeds they were
    not chosen on (user guide, "Choosing the price"). Costs below :data:`COST_FLOOR`
    (identical components) are left out of the medians.

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[0.0], [10.0]]), 1.0)})
        >>> b = Components.from_distributions({"x": Normal(torch.tensor([[1.0], [12.0]]), 1.0)})
        >>> counterpart_price([a, b])  # 1.5 * m1 ** 0.25 * m2 ** 0.75 with m1 = 0.5, m2 = 40.5
        20.25
        >>> from pyro_fusion import fuse
        >>> fuse([a, b]).num_global  # the default rule: the counterparts merge
        2

    :param list clients: the clients' :class:`Components` (with one client there is nothing to
        match and the price plays no role: 1.0 is returned).
    :param weights: client weights (normalised to mean 1), default uniform.
    :param str direction: the KL direction of the cost.
    :param float multiple: the price in units of the interpolated cost.
    :param float weight: where between ``m1`` (0) and ``m2`` (1) the price lies, on a log scale.
    :param int max_anchors: clients whose components are measured (drawn at random).
    :param int max_others: other clients each anchor is compared with (drawn at random); the
        work is at most ``max_anchors * max_others`` client-pair cost matrices.
    :param int max_rows: anchor components measured in all, at most (drawn at random within
        anchors that hold more than their share): the work is at most ``max_rows`` rows
        against ``max_others`` clients' components.
    :param int seed: seed of those draws.
    """
    if not 0 < multiple < math.inf:
        raise ValueError(f"counterpart_price: multiple must be positive and finite, got {multiple}")
    if not 0 <= weight <= 1:
        raise ValueError(f"counterpart_price: weight must be in [0, 1], got {weight}")
    check_direction(direction)
    check_clients(clients)
    w = client_weights(weights, len(clients))
    return _counterpart_price(clients, w, direction, multiple, weight, (max_anchors, max_others, max_rows), seed)


def _counterpart_price(clients, w: Tensor, direction: str, multiple: float, weight: float, sample, seed: int) -> float:
    """:func:`counterpart_price` of checked clients with normalised weights ``w``;
    ``sample = (max_anchors, max_others, max_rows)``."""
    if len(clients) < 2:
        return 1.0
    first, second = _counterpart_costs(clients, w, direction, *sample, seed)
    m1 = _median_above_floor(first)
    if m1 is None:
        return COST_FLOOR
    m2 = _median_above_floor(second)
    m2 = m1 if m2 is None else max(m2, m1)
    return max(multiple * m1 ** (1 - weight) * m2**weight, COST_FLOOR)


def closest_pair_price(
    clients: Sequence[Components],
    weights: Union[Sequence[float], Tensor, None] = None,
    direction: str = "reverse",
) -> float:
    """
    The median, over clients with at least two components, of the smallest cost ``w_j KL``
    between two components of the same client (the default rule before 0.2; pairs closer
    than :data:`COST_FLOOR`, identical components, are left out): a local
    component opens a new global one when it is farther from every global one than a typical
    client's two closest components. It depends on how far apart *different* components
    happen to be, so it merges close components whenever most clients hold only far-apart
    ones, and keeps versions of one component apart where they differ by more than a
    client's two closest components (LDA topics, network units).

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[0.0], [3.0]]), 1.0)})
        >>> closest_pair_price([a, a])
        4.5

    :param list clients: the clients' :class:`Components`.
    :param weights: client weights (normalised to mean 1), default uniform.
    :param str direction: the KL direction of the cost.
    """
    check_direction(direction)
    check_clients(clients)
    return _closest_pair_price(clients, client_weights(weights, len(clients)), direction)


def _closest_pair_price(clients, w: Tensor, direction: str) -> float:
    """:func:`closest_pair_price` of checked clients with normalised weights ``w``."""
    minima = []
    for j, client in enumerate(clients):
        if len(client) < 2:
            continue
        cost = kl_cost_matrix(client, client, direction).double()
        cost.fill_diagonal_(0.0)
        cost = cost[cost * w[j] >= COST_FLOOR]  # a component and its twins tell nothing
        if cost.numel():
            minima.append(w[j] * cost.min())
    if not minima:
        if all(len(client) < 2 for client in clients):
            raise ValueError("closest-pair price: no client has two components; pass price=... or another rule")
        return COST_FLOOR
    return float(torch.stack(minima).median())


def prior_price(
    clients: Sequence[Components],
    prior: Components,
    weights: Union[Sequence[float], Tensor, None] = None,
) -> float:
    """
    The median over local components of ``w_j KL(q_jl || p0)``: what a component is worth
    beyond the clients' shared prior ``p0``. Sharp posteriors lie far from the prior, but their
    versions lie far from each other too, so this under-merges them (LDA topics: user guide).

    Example::

        >>> from torch.distributions import Normal
        >>> a = Components.from_distributions({"x": Normal(torch.tensor([[1.0], [2.0], [3.0]]), 1.0)})
        >>> p0 = Components.from_distributions({"x": Normal(torch.tensor([[0.0]]), 1.0)})
        >>> prior_price([a], p0)  # KLs 0.5, 2, 4.5
        2.0

    :param list clients: the clients' :class:`Components`.
    :param Components prior: one component with the clients' fields.
    :param weights: client weights (normalised to mean 1), default uniform.
    """
    check_clients(clients)
    check_prior(prior, clients[0])
    return _prior_price(clients, prior, client_weights(weights, len(clients)))


def _prior_price(clients, prior: Components, w: Tensor) -> float:
    """:func:`prior_price` of checked clients and prior with normalised weights ``w``."""
    values = []
    for j, client in enumerate(clients):
        kl = sum(
            f.family.kl(f.natural.double(), prior[name].natural.double())
            for name, f in client.fields.items()
        )
        values.append(w[j] * kl)
    median = _median_above_floor(torch.cat(values))
    return COST_FLOOR if median is None else median
