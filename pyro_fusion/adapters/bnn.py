"""
Fusion of Bayesian multilayer perceptrons (:class:`~pyro_fusion.models.bnn.BayesianMLP`)
trained by separate clients, layer by layer (see the user guide, docs/guide/method,
"Neural networks, layer by layer").

Inputs and output classes are aligned across clients, hidden units are not. A hidden unit
``u`` of layer ``k`` is one component whose fields are its incoming weight row
``W_k[u, :]`` (``"weight"``), its bias ``b_k[u]`` (``"bias"``) and, in the last hidden layer,
its outgoing weight column ``W_out[:, u]`` (``"out"``), so they are permuted together.
Layer 1 is matched first; each client's layer-``k+1`` incoming rows are then re-indexed
through its layer-``k`` assignment into the global layer-``k`` units, where entries for global
units the client lacks are the prior ``Normal(0, prior_scale)`` (value 0 for point
estimates); then layer ``k+1`` is matched, and so on. Connections between two global units
that no client matched to both has are set to mean 0 with a small scale (``absent_scale``).
The outgoing columns of the last hidden layer are matched with their units, and the fused
column of a global unit is its barycenter times the share ``W_g / W`` of the total client weight
matched to it (per class, with ``class_counts``), i.e. the weighted average over *all* clients
where a client lacking the unit contributes 0 (as its re-indexed output row would). So the fused logits are the weighted
average of the clients' logits when matched units compute the same feature (a log-linear
pool); without this, a unit held by one client would enter the logits with full weight and
a matched one with averaged weight, and a fused network of unmatched units would add up the
clients' logits (overconfident). The output biases, which every client has once, are fused
by a weighted KL barycenter (per class with ``class_counts``). The fused network has the learned widths and comes back as a new
:class:`~pyro_fusion.models.bnn.BayesianMLP` with a guide.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from ..barycenter import barycenter
from ..components import Components
from ..cost import KLGeometry
from ..fusion import FusionResult, client_weights, default_price, fuse
from ..models.bnn import BayesianMLP, delta_guide, normal_guide

__all__ = ["FusedMLP", "PRICE_RULES", "fuse_mlps", "naive_average"]

#: the default price rules of :func:`fuse_mlps`
PRICE_RULES = ("location", "prior")


class FusedMLP(NamedTuple):
    """
    What :func:`fuse_mlps` returns.

    :ivar BayesianMLP model: the fused network (learned hidden widths).
    :ivar guide: an :class:`~pyro.infer.autoguide.AutoNormal` holding the fused locs and
        scales, or an :class:`~pyro.infer.autoguide.AutoDelta` for point estimates.
    :ivar dict posterior: site name -> fused ``Normal`` (or ``Delta``) of the site's shape.
    :ivar list results: one :class:`~pyro_fusion.FusionResult` per hidden layer.
    """

    model: BayesianMLP
    guide: PyroModule
    posterior: Dict[str, dist.Distribution]
    results: List[FusionResult]


def _num_hidden(posterior: Dict[str, dist.Distribution], j: int) -> int:
    k = 0
    while f"hidden.{k}.weight" in posterior:
        k += 1
    expected = {f"hidden.{i}.{p}" for i in range(k) for p in ("weight", "bias")}
    expected |= {"output.weight", "output.bias"}
    if k == 0 or set(posterior) != expected:
        raise ValueError(
            f"client {j}: expected the sites of a BayesianMLP "
            f"(hidden.<k>.weight/bias, output.weight/bias), got {sorted(posterior)}"
        )
    return k


def _check_clients(posteriors: Sequence[Dict[str, dist.Distribution]]) -> int:
    if len(posteriors) == 0:
        raise ValueError("fuse_mlps needs at least one client")
    depth = _num_hidden(posteriors[0], 0)
    in_features = _shape(posteriors[0]["hidden.0.weight"])[1]
    classes = _shape(posteriors[0]["output.weight"])[0]
    for j, post in enumerate(posteriors):
        if _num_hidden(post, j) != depth:
            raise ValueError(
                f"client {j} has {_num_hidden(post, j)} hidden layers, client 0 has {depth}"
            )
        got = (_shape(post["hidden.0.weight"])[1], _shape(post["output.weight"])[0])
        if got != (in_features, classes):
            raise ValueError(
                f"client {j}: {got[0]} inputs and {got[1]} classes, client 0 has "
                f"{in_features} and {classes}"
            )
        if _shape(post["output.bias"]) != (classes,):
            raise ValueError(
                f"client {j}: output.bias has shape {tuple(_shape(post['output.bias']))}, "
                f"expected ({classes},)"
            )
        for k in range(depth):
            w, b = post[f"hidden.{k}.weight"], post[f"hidden.{k}.bias"]
            nxt = post[f"hidden.{k + 1}.weight" if k + 1 < depth else "output.weight"]
            if _shape(b) != _shape(w)[:1] or _shape(nxt)[1] != _shape(w)[0]:
                raise ValueError(f"client {j}: layer {k} sizes are inconsistent")
    return depth


def _shape(d: dist.Distribution) -> torch.Size:
    return d.batch_shape + d.event_shape


def _reindex(value: Tensor, assignment: Tensor, num_global: int, fill: float) -> Tensor:
    """Columns of ``value`` ``[n, n_prev]`` moved to ``assignment`` in ``[n, num_global]``."""
    out = value.new_full((value.shape[0], num_global), fill)
    out[:, assignment] = value
    return out


def _connections(
    previous: List[Tensor], current: List[Tensor], num_prev: int, num_global: int
) -> Tensor:
    """Mask ``[num_global, num_prev]``: True where some client has both units of the connection."""
    seen = torch.zeros(num_global, num_prev, dtype=torch.bool)
    for rows, cols in zip(current, previous):
        seen[rows.unsqueeze(-1), cols] = True
    return seen


def _client_share(assignments: List[Tensor], weights: Tensor, num_global: int) -> Tensor:
    """``[num_global]``: the fraction of the total client weight matched to each global unit."""
    fractions = weights / weights.sum()
    per_unit = torch.cat([w_j.expand(len(a)) for w_j, a in zip(fractions, assignments)])
    return per_unit.new_zeros(num_global).index_add_(0, torch.cat(assignments), per_unit)


def _classwise_columns(
    columns: List[Components],
    assignments: List[Tensor],
    class_weights: Tensor,
    num_global: int,
    direction: str,
) -> tuple:
    """
    Fused output columns ``(loc, scale)``, each ``[num_global, C]``, with per-class client
    weights ``class_weights [J, C]``: for class ``c`` the KL barycenter of the matched clients'
    entries weighted by their ``class_weights[:, c]`` (computed per coordinate in the
    direction's averaging space), times the share of the class's total weight they hold.
    Entries whose share is 0 are ``(0, nan)``.
    """
    geometry = KLGeometry(columns[0].families, direction)
    family = columns[0]["out"].family
    num_classes = family.num_coords
    fractions = class_weights / class_weights.sum(0)
    total = torch.zeros(num_global, family.dim, dtype=torch.float64)
    share = torch.zeros(num_global, num_classes, dtype=torch.float64)
    for w_j, column, a in zip(fractions, columns, assignments):
        x = geometry.coordinates(column.concat().double()).reshape(len(a), num_classes, -1)
        total.index_add_(0, a, (x * w_j.unsqueeze(-1)).reshape(len(a), -1))
        share.index_add_(0, a, w_j.expand(len(a), -1))
    seen = share > 0
    mean = total.reshape(num_global, num_classes, -1) / share.clamp(min=1e-300).unsqueeze(-1)
    # entries nobody matched to the unit holds: any valid point, masked out below
    reference = geometry.coordinates(columns[0].concat().double())[:1].reshape(1, num_classes, -1)
    mean = torch.where(seen.unsqueeze(-1), mean, reference)
    fused = columns[0].with_natural(geometry.natural(mean.reshape(num_global, -1)))
    loc, scale = _loc_scale(fused.distributions()["out"])
    dtype = columns[0].dtype
    loc, scale = (loc * share).to(dtype), torch.where(seen, scale * share, float("nan")).to(dtype)
    return loc, scale


def _output_weights(
    weights: Union[Sequence[float], Tensor, None],
    class_counts: Union[Sequence[Sequence[float]], Tensor],
    num_clients: int,
    num_classes: int,
) -> Tensor:
    """``[J, C]`` client weights per output class: ``class_counts`` where a class was seen,
    else the client weights."""
    w = client_weights(weights, num_clients).unsqueeze(-1).expand(-1, num_classes)
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.shape != (num_clients, num_classes):
        raise ValueError(
            f"class_counts must be [clients, classes] = [{num_clients}, {num_classes}], "
            f"got {list(counts.shape)}"
        )
    for j in range(num_clients):
        if not (torch.isfinite(counts[j]).all() and (counts[j] >= 0).all()):
            raise ValueError(f"client {j}: class_counts must be finite and nonnegative")
    seen = counts.sum(0) > 0
    return torch.where(seen, counts, w)


def _location_price(
    unit_fields: List[Dict[str, tuple]],
    weights: Union[Sequence[float], Tensor, None],
    point_scale: Optional[float],
) -> float:
    """The ``"location"`` price rule of :func:`fuse_mlps` from each client's ``(loc, scale)``."""
    w = client_weights(weights, len(unit_fields))
    worth = []
    for w_j, parts in zip(w, unit_fields):
        d = sum(
            ((loc / (scale if point_scale is None else point_scale)) ** 2)
            .reshape(len(loc), -1)
            .sum(-1)
            .double()
            for loc, scale in parts.values()
        )
        worth.append(w_j * d / 2)
    return float(torch.cat(worth).median())


def _loc_scale(d: dist.Distribution):
    return d.mean.detach(), d.stddev.detach()


def fuse_mlps(
    posteriors: Sequence[Dict[str, dist.Distribution]],
    weights: Union[Sequence[float], Tensor, None] = None,
    *,
    prior_scale: float = 1.0,
    point_scale: Optional[float] = None,
    direction: str = "reverse",
    combine: str = "average",
    price: Union[float, Sequence[float], None] = None,
    price_rule: str = "location",
    price_scale: float = 1.0,
    num_global: Union[int, Sequence[int], None] = None,
    absent_scale: float = 1e-3,
    class_counts: Union[Sequence[Sequence[float]], Tensor, None] = None,
    seed: int = 0,
) -> FusedMLP:
    """
    Fuses the mean-field posteriors of several clients' Bayesian MLPs into one network.

    KL-fusion weighs every weight by its posterior precision, so the guides' scales should be
    trained, not still on their way from ``init_scale``: Adam moves each unconstrained scale
    (about its log while small) by about ``lr`` per step, so a guide stopped after a few
    hundred steps from a small ``init_scale`` has nearly one scale for all its weights, set by
    its number of steps rather than its data, and the clients with the fewest steps count most
    (README, ``benchmarks/bnn_fusion.py --min-steps``; the point-estimate variant,
    ``point_scale``, ignores the scales).

    Example::

        >>> from pyro_fusion.models.bnn import BayesianMLP, normal_posterior, train_svi
        >>> from pyro.infer.autoguide import AutoNormal
        >>> x, y = torch.randn(40, 5), torch.randint(3, (40,))
        >>> posteriors = []
        >>> for j in range(2):
        ...     model = BayesianMLP(5, hidden=(4,), out_features=3)
        ...     guide = AutoNormal(model)
        ...     _ = train_svi(model, guide, x, y, num_epochs=1, batch_size=20, seed=j)
        ...     posteriors.append(normal_posterior(guide))
        >>> fused = fuse_mlps(posteriors, weights=[40, 40])
        >>> fused.model.widths[0] >= 4, fused.posterior["output.weight"].loc.shape[0]
        (True, 3)
        >>> skewed = fuse_mlps(posteriors, class_counts=[[30, 10, 0], [0, 10, 30]])
        >>> skewed.model.widths == fused.model.widths
        True

    :param list posteriors: per client, site name -> ``Normal(loc, scale)`` of the site's
        shape, e.g. :func:`~pyro_fusion.models.bnn.normal_posterior` of its AutoNormal guide.
        Clients may have different hidden widths but the same depth, inputs and classes.
    :param weights: positive client weights (e.g. data sizes), uniform by default.
    :param float prior_scale: the clients' prior scale, used for units a client lacks.
    :param float point_scale: if given, fuse the posterior *means* only, read as
        :class:`~pyro_fusion.expfam.PointMass` with this scale (the point-estimate variant);
        the result is a point estimate with an :class:`~pyro.infer.autoguide.AutoDelta` guide.
        With a default price (either rule) the result does not depend on ``point_scale``: the
        costs and the price both scale as ``1 / point_scale**2``.
    :param str direction: KL direction, see :func:`~pyro_fusion.fuse`.
    :param price: price of a global unit, one for all hidden layers or one per layer;
        by default set by ``price_rule``.
    :param str price_rule: the default price of a layer, the median over the clients' local
        units ``l`` of ``w_j D_l`` (client weights normalised to mean 1) with

        - ``"location"``: ``D_l = sum (loc / scale)**2 / 2`` over the unit's fields, i.e.
          ``KL(q_l || Normal(0, scale_l))``: how far the unit is from the prior's *location*,
          measured in its own scales (``point_scale`` for point estimates, where this is the
          same as ``"prior"``). A matched partner shares the unit's precision, so only its
          location is what the unit is worth beyond the prior.
        - ``"prior"``: ``D_l = KL(q_l || Normal(0, prior_scale))``
          (:func:`~pyro_fusion.default_price` with the prior as ``p0``). It also counts the
          information in the scales, ``log(prior_scale / scale)`` per weight. For trained MLPs,
          whose weights are small against ``prior_scale`` and confident, this term dominates
          and the price merges far more units (``benchmarks/bnn_fusion.py``, heterogeneous
          MNIST, 10 clients of 100 units: fused width 202 and test accuracy 0.868, against
          793 and 0.915 with ``"location"``).
    :param float price_scale: multiplies the default price (ignored when ``price`` is given);
        below 1 keeps more units (wider, closer to the clients' ensemble), above 1 merges more.
    :param str combine: how matched units are combined, see :func:`~pyro_fusion.fuse`:
        ``"average"`` (KL barycenter) or ``"product"`` (product of the clients' posteriors
        divided by the shared prior ``Normal(0, prior_scale)`` counted once).
    :param num_global: parametric mode: fused width, one for all layers or one per layer.
    :param float absent_scale: scale of the fused weights between two global units that no
        client matched to both has (their barycenter would be the prior; they are set to mean
        0 with this small scale, so the fused network is the union of the clients' connections
        rather than one with prior-noise weights), and of output weights to a class that none
        of the unit's clients saw (with ``class_counts``).
    :param class_counts: optional ``[clients, classes]`` numbers of training examples of
        each class (the clients' label histograms). The fused output weights to class ``c``
        are then the barycenter of the matched clients' weights to ``c`` weighted by their
        numbers of class-``c`` examples, times the share of *that class's* examples held by
        those clients (instead of client weights and shares of all examples): each class's
        logit is the average of the clients' logits for it weighted by how many of its
        examples they saw, so clients that never saw a class do not vote against it (the
        output bias of class ``c`` is likewise their barycenter weighted by those counts). Classes
        no client saw use ``weights``. Needs ``combine="average"``. (Heterogeneous MNIST:
        ``benchmarks/bnn_fusion.py``, row ``fused_class_counts``.) Clients trained under
        the label-shift likelihood (:class:`~pyro_fusion.models.bnn.BayesianMLP` with
        ``label_prior``) fuse about as well without them.
    :param int seed: seed of :func:`~pyro_fusion.fuse`.
    :rtype: FusedMLP
    """
    depth = _check_clients(posteriors)
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be positive, got {prior_scale}")
    if price_rule not in PRICE_RULES:
        raise ValueError(f"unknown price_rule {price_rule!r}; expected one of {PRICE_RULES}")
    if not price_scale > 0:
        raise ValueError(f"price_scale must be positive, got {price_scale}")
    prices = list(price) if isinstance(price, (list, tuple)) else [price] * depth
    widths = list(num_global) if isinstance(num_global, (list, tuple)) else [num_global] * depth
    if len(prices) != depth or len(widths) != depth:
        raise ValueError(f"price and num_global need one value per hidden layer ({depth})")
    point = point_scale is not None
    if class_counts is not None:
        if combine != "average":
            raise ValueError('class_counts needs combine="average"')
        num_classes = _shape(posteriors[0]["output.weight"])[0]
        output_weights = _output_weights(weights, class_counts, len(posteriors), num_classes)

    def field(loc: Tensor, scale: Tensor, event_dim: int) -> dist.Distribution:
        if point:
            return dist.Delta(loc, event_dim=event_dim)
        return dist.Normal(loc, scale)

    def units(parts: Dict[str, tuple]) -> Components:
        """Components from ``(loc, scale)`` per field, the first dim indexing units."""
        return Components.from_distributions(
            {name: field(loc, scale, loc.dim() - 1) for name, (loc, scale) in parts.items()},
            point_scale=point_scale,
        )

    fused: Dict[str, tuple] = {}
    results: List[FusionResult] = []
    assignments: Optional[List[Tensor]] = None
    num_prev = _shape(posteriors[0]["hidden.0.weight"])[1]
    for k in range(depth):
        last = k == depth - 1
        clients, unit_fields = [], []
        for j, post in enumerate(posteriors):
            w_loc, w_scale = _loc_scale(post[f"hidden.{k}.weight"])
            if assignments is not None:
                w_loc = _reindex(w_loc, assignments[j], num_prev, 0.0)
                w_scale = _reindex(w_scale, assignments[j], num_prev, prior_scale)
            parts = {"weight": (w_loc, w_scale), "bias": _loc_scale(post[f"hidden.{k}.bias"])}
            if last:
                out_loc, out_scale = _loc_scale(post["output.weight"])
                parts["out"] = (out_loc.T, out_scale.T)
            clients.append(units(parts))
            unit_fields.append(parts)
        prior = units(
            {
                name: (
                    torch.zeros((1,) + loc.shape[1:]),
                    torch.full((1,) + loc.shape[1:], prior_scale),
                )
                for name, (loc, _) in parts.items()
            }
        )
        layer_price = prices[k]
        if layer_price is None and widths[k] is None:
            if price_rule == "prior":
                layer_price = default_price(clients, weights, direction, prior)
            else:
                layer_price = _location_price(unit_fields, weights, point_scale)
            layer_price *= price_scale
        result = fuse(
            clients,
            weights,
            direction=direction,
            combine=combine,
            price=layer_price,
            num_global=widths[k],
            prior=prior,
            seed=seed,
        )
        results.append(result)
        global_fields = result.distributions()
        w_loc, w_scale = _loc_scale(global_fields["weight"])
        if assignments is not None:
            seen = _connections(assignments, result.assignments, num_prev, result.num_global)
            w_loc = w_loc.masked_fill(~seen, 0.0)
            w_scale = w_scale.masked_fill(~seen, absent_scale)
        fused[f"hidden.{k}.weight"] = (w_loc, w_scale)
        fused[f"hidden.{k}.bias"] = _loc_scale(global_fields["bias"])
        if last:
            if class_counts is None:
                share = _client_share(
                    result.assignments, client_weights(weights, len(posteriors)), result.num_global
                )
                out_loc, out_scale = _loc_scale(global_fields["out"])
                share = share.to(out_loc).unsqueeze(-1)
                out_loc, out_scale = out_loc * share, out_scale * share
            else:
                columns = [
                    Components({"out": (c["out"].family, c["out"].natural)}) for c in clients
                ]
                out_loc, out_scale = _classwise_columns(
                    columns, result.assignments, output_weights, result.num_global, direction
                )
                # a class none of the unit's clients saw: no connection (as for absent ones)
                out_scale = out_scale.nan_to_num(absent_scale)
            fused["output.weight"] = (out_loc.T, out_scale.T)
        assignments, num_prev = result.assignments, result.num_global

    bias_loc, bias_scale = (
        torch.stack(t) for t in zip(*(_loc_scale(p["output.bias"]) for p in posteriors))
    )
    if class_counts is None:
        bias_weights = None if weights is None else torch.as_tensor(weights, dtype=bias_loc.dtype)
        shared = barycenter(units({"bias": (bias_loc, bias_scale)}), bias_weights, direction)
        fused["output.bias"] = tuple(
            t.squeeze(0) for t in _loc_scale(shared.distributions()["bias"])
        )
    else:  # class c's bias from the clients that saw c, like its weights
        biases = [units({"out": (loc[None], scale[None])}) for loc, scale in zip(bias_loc, bias_scale)]
        one_unit = [torch.zeros(1, dtype=torch.long)] * len(posteriors)
        loc, scale = _classwise_columns(biases, one_unit, output_weights, 1, direction)
        fused["output.bias"] = (loc.squeeze(0), scale.squeeze(0))

    ref = posteriors[0]
    model = BayesianMLP(
        _shape(ref["hidden.0.weight"])[1],
        hidden=[r.num_global for r in results],
        out_features=_shape(ref["output.weight"])[0],
        prior_scale=prior_scale,
    )
    if point:
        values = {name: loc.contiguous() for name, (loc, _) in fused.items()}
        posterior = {name: dist.Delta(v, event_dim=v.dim()) for name, v in values.items()}
        guide = delta_guide(model, values)
    else:
        posterior = {
            name: dist.Normal(loc.contiguous(), scale.contiguous())
            for name, (loc, scale) in fused.items()
        }
        guide = normal_guide(model, posterior)
    return FusedMLP(model, guide, posterior, results)


def naive_average(
    posteriors: Sequence[Dict[str, dist.Normal]],
    weights: Union[Sequence[float], Tensor, None] = None,
) -> Dict[str, dist.Normal]:
    """
    The naive baseline: one round of federated averaging of the guide parameters, i.e. the
    elementwise weighted average of every site's loc and scale, ignoring that hidden units
    are not aligned across clients. All clients must have the same widths.

    :param list posteriors: per client, site name -> ``Normal(loc, scale)``.
    :param weights: positive client weights, uniform by default.
    :returns: site name -> averaged ``Normal``.
    """
    _check_clients(posteriors)
    shapes = {name: _shape(d) for name, d in posteriors[0].items()}
    for j, post in enumerate(posteriors):
        for name, d in post.items():
            if _shape(d) != shapes[name]:
                raise ValueError(
                    f"naive_average: client {j}, site {name!r} has shape {tuple(_shape(d))}, "
                    f"client 0 has {tuple(shapes[name])}"
                )
    w = (
        torch.ones(len(posteriors))
        if weights is None
        else torch.as_tensor(weights, dtype=torch.get_default_dtype())
    )
    if w.shape != (len(posteriors),) or not (w > 0).all():
        raise ValueError(f"naive_average: need {len(posteriors)} positive weights")
    w = w / w.sum()
    average = {}
    for name in shapes:
        locs = torch.stack([post[name].loc for post in posteriors])
        scales = torch.stack([post[name].scale for post in posteriors])
        shape = (-1,) + (1,) * len(shapes[name])
        average[name] = dist.Normal((w.view(shape) * locs).sum(0), (w.view(shape) * scales).sum(0))
    return average
