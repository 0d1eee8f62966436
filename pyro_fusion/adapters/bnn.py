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
column of a global unit is its barycenter times the share ``W_g / W`` of the total client
weight matched to it (per class, with ``class_counts``), i.e. the weighted average over *all*
clients where a client lacking the unit contributes 0 (as its re-indexed output row would).
So the fused logits are the weighted average of the clients' logits when matched units
compute the same feature (a log-linear pool); without this, a unit held by one client would
enter the logits with full weight and a matched one with averaged weight, and a fused network
of unmatched units would add up the clients' logits (overconfident). The output biases, which
every client has once, are fused by a weighted KL barycenter (per class with
``class_counts``). The fused network has the learned widths and comes back as a new
:class:`~pyro_fusion.models.bnn.BayesianMLP` with a guide.

The steps, each a function: :func:`layer_units` (one client's units of a layer, read out),
:func:`match_layer` (the layer's matching, with its price rule), :func:`fused_layer` (the
global layer's incoming weights and biases), :func:`output_columns` and :func:`output_bias`
(the output layer, weighted by client or per class), :func:`write_mlp` (the fused network
and its guide). :class:`MLPAdapter` runs them; :func:`fuse_mlps` is the front door.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor
from tqdm.auto import tqdm

from ..barycenter import barycenter
from ..components import Components, client_weights
from ..cost import KLGeometry
from ..deprecation import moved, warn
from ..expfam.base import base_distribution, check_positive_real
from ..fusion import FusionResult, fuse
from ..models.bnn import BayesianMLP, delta_guide, normal_guide, normal_posterior
from ..price import RULES, Price
from .base import FusedModel, FuseSettings, FusionAdapter, Layout, front_door

__all__ = [
    "MLPAdapter",
    "PRICE_RULES",
    "fuse_mlps",
    "fused_layer",
    "layer_units",
    "match_layer",
    "naive_average",
    "output_bias",
    "output_columns",
    "unit_components",
    "write_mlp",
]

#: the price rule :func:`fuse_mlps` computes itself (see :func:`match_layer`); the others are
#: :func:`~pyro_fusion.fuse`'s (:data:`pyro_fusion.price.RULES`)
PRICE_RULES = ("location",)

#: a layer's units: field (``"weight"``, ``"bias"``, ``"out"``) -> ``(loc, scale)``, first dim indexing units
Units = Dict[str, Tuple[Tensor, Tensor]]


def unit_components(units: Units, point_scale: Optional[float] = None) -> Components:
    """
    Units ``(loc, scale)`` per field as :class:`~pyro_fusion.components.Components`: diagonal
    Normals, or with ``point_scale`` point masses at the locs.

    :param dict units: field -> ``(loc, scale)``, the first dimension indexing units.
    :param float point_scale: read the locs as :class:`~pyro_fusion.expfam.PointMass` of this scale.
    """

    def field(loc: Tensor, scale: Tensor) -> dist.Distribution:
        if point_scale is not None:
            return dist.Delta(loc, event_dim=loc.dim() - 1)
        return dist.Normal(loc, scale)

    return Components.from_distributions(
        {name: field(loc, scale) for name, (loc, scale) in units.items()}, point_scale=point_scale
    )


def layer_units(
    posterior: Mapping[str, dist.Distribution],
    layer: int,
    prior_scale: float,
    assignment: Optional[Tensor] = None,
    num_previous: Optional[int] = None,
) -> Units:
    """
    Layer read-out: one client's hidden units of ``layer`` as ``(loc, scale)`` per field, the
    incoming rows (``"weight"``) re-indexed through the client's ``assignment`` of the previous
    layer into its ``num_previous`` global units (entries for global units it lacks: the prior,
    loc 0 and scale ``prior_scale``); with ``"out"``, the outgoing columns, when ``layer`` is the
    last hidden layer.

    Example::

        >>> post = {name: dist.Normal(torch.zeros(shape), 1.0) for name, shape in
        ...         BayesianMLP(3, (4,), 2).site_shapes().items()}
        >>> {name: tuple(loc.shape) for name, (loc, _) in layer_units(post, 0, 1.0).items()}
        {'weight': (4, 3), 'bias': (4,), 'out': (4, 2)}

    :param dict posterior: site name -> the client's distribution (e.g. ``Normal``).
    :param int layer: hidden layer index ``k``.
    :param float prior_scale: the clients' prior scale.
    :param Tensor assignment: the client's previous-layer assignment (None for layer 0).
    :param int num_previous: the number of global units of the previous layer.
    """
    w_loc, w_scale = _loc_scale(posterior[f"hidden.{layer}.weight"])
    if assignment is not None:
        w_loc = _reindex(w_loc, assignment, num_previous, 0.0)
        w_scale = _reindex(w_scale, assignment, num_previous, prior_scale)
    units = {"weight": (w_loc, w_scale), "bias": _loc_scale(posterior[f"hidden.{layer}.bias"])}
    if f"hidden.{layer + 1}.weight" not in posterior:
        out_loc, out_scale = _loc_scale(posterior["output.weight"])
        units["out"] = (out_loc.T, out_scale.T)
    return units


def match_layer(
    units: Sequence[Units],
    weights: Union[Sequence[float], Tensor, None],
    *,
    price: Union[None, float, str, Price],
    num_global: Optional[int],
    prior_scale: float,
    point_scale: Optional[float],
    direction: str,
    seed: int,
    **engine_options,
) -> FusionResult:
    """
    Per-layer matching: :func:`~pyro_fusion.fuse` of the clients' units (from :func:`layer_units`)
    with the prior ``Normal(0, prior_scale)`` as prior component, at a price set by ``price``:
    a number, a rule of :func:`~pyro_fusion.fuse` (default ``"counterpart"``; ``"prior"``:
    ``KL(unit || Normal(0, prior_scale))``, which for trained networks is dominated by the
    information in the scales and merges far more units), or ``"location"``, the default before
    0.2: the median over the clients' local units ``l`` of ``w_j D_l`` (client weights
    normalised to mean 1) with ``D_l = sum (loc / scale)**2 / 2`` over the unit's fields, i.e.
    ``KL(q_l || Normal(0, scale_l))``: how far the unit is from the prior's *location*, in its
    own scales (``point_scale`` for point estimates). Any of these as a
    :class:`~pyro_fusion.price.Price` with a ``scale`` multiplies it.

    With a default price the result does not depend on ``point_scale``: the costs and the price
    both scale as ``1 / point_scale**2``.

    :param list units: per client, its units of the layer.
    :param weights: positive client weights, uniform by default.
    :param price: see above.
    :param int num_global: parametric mode: the layer's fused width (the price is then unused).
    :param float prior_scale: the clients' prior scale.
    :param float point_scale: fuse point estimates (see :func:`unit_components`).
    :param str direction: KL direction.
    :param int seed: seed of :func:`~pyro_fusion.fuse`.
    :param engine_options: ``combine``, ``max_sweeps``, ``dtype`` of :func:`~pyro_fusion.fuse`.
    """
    clients = [unit_components(u, point_scale) for u in units]
    prior = unit_components(
        {
            name: (torch.zeros((1,) + loc.shape[1:]), torch.full((1,) + loc.shape[1:], prior_scale))
            for name, (loc, _) in units[-1].items()
        },
        point_scale,
    )
    if isinstance(price, str) and price in PRICE_RULES:
        price = Price(price)
    if num_global is not None:
        price = None
    elif isinstance(price, Price) and price.rule in PRICE_RULES:
        price = _location_price(units, weights, point_scale) * price.scale
    return fuse(
        clients, weights, direction=direction, price=price, num_global=num_global, prior=prior, seed=seed,
        **engine_options,
    )


def fused_layer(
    result: FusionResult, previous: Optional[List[Tensor]], num_previous: int, absent_scale: float
) -> Units:
    """
    The global layer's incoming weights and biases ``(loc, scale)`` from its matching:
    connections between two global units that no client matched to both (``previous``: the
    clients' assignments of the previous layer) get loc 0 and scale ``absent_scale``.

    :param FusionResult result: the layer's matching (:func:`match_layer`).
    :param list previous: the previous layer's assignments (None for layer 0).
    :param int num_previous: the previous layer's number of global units.
    :param float absent_scale: scale of absent connections.
    :returns: ``{"weight": ..., "bias": ...}``.
    """
    global_fields = result.distributions()
    w_loc, w_scale = _loc_scale(global_fields["weight"])
    if previous is not None:
        seen = _connections(previous, result.assignments, num_previous, result.num_global)
        w_loc = w_loc.masked_fill(~seen, 0.0)
        w_scale = w_scale.masked_fill(~seen, absent_scale)
    return {"weight": (w_loc, w_scale), "bias": _loc_scale(global_fields["bias"])}


def output_columns(
    result: FusionResult,
    units: Sequence[Units],
    weights: Union[Sequence[float], Tensor, None],
    class_weights: Optional[Tensor],
    direction: str,
    absent_scale: float,
    point_scale: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """
    Output weighting: the fused outgoing columns ``(loc, scale)`` ``[num_global, C]`` of the last
    hidden layer. Without ``class_weights``, a global unit's column is its barycenter times the
    share of the total client weight matched to it; with ``class_weights`` ``[J, C]`` (e.g. from
    the clients' class counts), class ``c``'s entry is the barycenter of the matched clients'
    entries weighted by ``class_weights[:, c]``, times the share of that class's weight they
    hold (entries nobody matched to the unit holds: scale ``absent_scale``).

    :param FusionResult result: the last hidden layer's matching.
    :param list units: per client, its units of that layer (with ``"out"``).
    :param weights: client weights.
    :param Tensor class_weights: optional ``[J, C]`` per-class client weights.
    :param str direction: KL direction.
    :param float absent_scale: see above.
    :param float point_scale: as the units were read (:func:`unit_components`).
    """
    if class_weights is None:
        share = _client_share(result.assignments, client_weights(weights, len(units)), result.num_global)
        out_loc, out_scale = _loc_scale(result.distributions()["out"])
        share = share.to(out_loc).unsqueeze(-1)
        return out_loc * share, out_scale * share
    columns = [unit_components({"out": u["out"]}, point_scale) for u in units]
    class_weights = torch.as_tensor(class_weights, dtype=torch.float64)
    out_loc, out_scale = _classwise_columns(
        columns, result.assignments, class_weights, result.num_global, direction
    )
    # a class none of the unit's clients saw: no connection (as for absent ones)
    return out_loc, out_scale.nan_to_num(absent_scale)


def output_bias(
    posteriors: Sequence[Mapping[str, dist.Distribution]],
    weights: Union[Sequence[float], Tensor, None],
    class_weights: Optional[Tensor],
    direction: str,
    point_scale: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """
    The fused output bias ``(loc, scale)`` ``[C]``: the weighted KL barycenter of the clients'
    biases, or with ``class_weights`` ``[J, C]`` class ``c``'s from the clients that saw ``c``,
    like its weights (:func:`output_columns`).

    :param list posteriors: per client, site name -> distribution.
    :param weights: client weights.
    :param Tensor class_weights: optional ``[J, C]`` per-class client weights.
    :param str direction: KL direction.
    :param float point_scale: read point estimates (see :func:`unit_components`).
    """
    bias_loc, bias_scale = (torch.stack(t) for t in zip(*(_loc_scale(p["output.bias"]) for p in posteriors)))
    if class_weights is None:
        bias_weights = None if weights is None else torch.as_tensor(weights, dtype=bias_loc.dtype)
        shared = barycenter(unit_components({"bias": (bias_loc, bias_scale)}, point_scale), bias_weights, direction)
        return tuple(t.squeeze(0) for t in _loc_scale(shared.distributions()["bias"]))
    biases = [
        unit_components({"out": (loc[None], scale[None])}, point_scale) for loc, scale in zip(bias_loc, bias_scale)
    ]
    class_weights = torch.as_tensor(class_weights, dtype=torch.float64)
    one_unit = [torch.zeros(1, dtype=torch.long)] * len(posteriors)
    loc, scale = _classwise_columns(biases, one_unit, class_weights, 1, direction)
    return loc.squeeze(0), scale.squeeze(0)


def write_mlp(
    fused: Units, in_features: int, out_features: int, prior_scale: float, point: bool
) -> Tuple[BayesianMLP, PyroModule, Dict[str, dist.Distribution]]:
    """
    Write-back: the fused network of the fused widths, a guide holding the fused posterior
    (:func:`~pyro_fusion.models.bnn.normal_guide`, or :func:`~pyro_fusion.models.bnn.delta_guide`
    for point estimates) and the posterior, site name -> ``Normal`` (``Delta``).

    :param dict fused: site name -> fused ``(loc, scale)`` of the site's shape.
    :param int in_features: inputs.
    :param int out_features: classes.
    :param float prior_scale: the network's prior scale.
    :param bool point: write point estimates.
    """
    widths = []
    while f"hidden.{len(widths)}.bias" in fused:
        widths.append(len(fused[f"hidden.{len(widths)}.bias"][0]))
    model = BayesianMLP(in_features, hidden=widths, out_features=out_features, prior_scale=prior_scale)
    if point:
        values = {name: loc.contiguous() for name, (loc, _) in fused.items()}
        posterior = {name: dist.Delta(v, event_dim=v.dim()) for name, v in values.items()}
        return model, delta_guide(model, values), posterior
    posterior = {name: dist.Normal(loc.contiguous(), scale.contiguous()) for name, (loc, scale) in fused.items()}
    return model, normal_guide(model, posterior), posterior


class MLPAdapter(FusionAdapter):
    """
    Fusion of Bayesian MLPs, layer by layer (see the module docstring).

    KL-fusion weighs every weight by its posterior precision, so the guides' scales should be
    trained, not still on their way from ``init_scale`` (README, "Bayesian neural networks").

    :param float prior_scale: the clients' prior scale, used for units a client lacks.
    :param float point_scale: if given, fuse the posterior *means* only, read as
        :class:`~pyro_fusion.expfam.PointMass` with this scale (the point-estimate variant);
        the result is a point estimate with an :class:`~pyro.infer.autoguide.AutoDelta` guide.
    :param float absent_scale: scale of the fused weights between two global units that no
        client matched to both has (their barycenter would be the prior; they are set to mean
        0 with this small scale, so the fused network is the union of the clients' connections
        rather than one with prior-noise weights), and of output weights to a class that none
        of the unit's clients saw (with ``class_counts``).
    :param class_counts: optional ``[clients, classes]`` numbers of training examples of
        each class (the clients' label histograms): each class's logit becomes the average of
        the clients' logits for it weighted by how many of its examples they saw
        (:func:`output_columns`, :func:`output_bias`); classes no client saw use the client
        weights. Needs ``combine="average"``. Clients trained under the label-shift likelihood
        (:class:`~pyro_fusion.models.bnn.BayesianMLP` with ``label_prior``) fuse about as well
        without them.
    :param engine_options: ``combine`` (``"average"``, the KL barycenter, or ``"product"``: the
        product of the clients' posteriors divided by the shared prior counted once),
        ``max_sweeps``, ``dtype`` of :func:`~pyro_fusion.fuse`.
    """

    family = "MLP"
    def __init__(
        self,
        *,
        prior_scale: float = 1.0,
        point_scale: Optional[float] = None,
        absent_scale: float = 1e-3,
        class_counts: Union[Sequence[Sequence[float]], Tensor, None] = None,
        **engine_options,
    ):
        super().__init__(**engine_options)
        prior_scale = check_positive_real(prior_scale, "prior_scale")
        absent_scale = check_positive_real(absent_scale, "absent_scale")
        if point_scale is not None:
            point_scale = check_positive_real(point_scale, "point_scale")
        if class_counts is not None and engine_options.get("combine", "average") != "average":
            raise ValueError('class_counts needs combine="average"')
        self.prior_scale = prior_scale
        self.point_scale = point_scale
        self.absent_scale = absent_scale
        self.class_counts = class_counts

    @classmethod
    def old_arguments(cls, weights, price, family_options):
        """Before 0.2: ``price_rule=rule`` and ``price_scale=s``, now ``price=Price(rule, s)``
        (an explicit ``price=`` still wins over both)."""
        rule, scale = family_options.pop("price_rule", None), family_options.pop("price_scale", None)
        if rule is not None or scale is not None:
            new = f"price=Price({rule!r}, scale={1.0 if scale is None else scale})"
            warn("fuse_mlps(price_rule=..., price_scale=...)", new if price is None else "price= alone", stacklevel=4)
            if rule is not None and rule not in PRICE_RULES + RULES:
                raise ValueError(f"unknown price_rule {rule!r}; expected one of {PRICE_RULES + RULES}")
            if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
                raise ValueError(f"price_scale must be positive, got {scale}")
            if price is None:
                price = Price(rule, 1.0 if scale is None else scale)
        return weights, price

    def read(self, local_models: Sequence[Any]) -> List[Dict[str, dist.Distribution]]:
        """Per client, site name -> distribution: the dict itself, or
        :func:`~pyro_fusion.models.bnn.normal_posterior` of a trained AutoNormal guide."""
        posteriors = [m if isinstance(m, Mapping) else normal_posterior(m) for m in local_models]
        _check_clients(posteriors)
        return posteriors

    def layout(self, local_model: Any) -> Layout:
        """Hidden unit ``u`` of layer ``k``: ``hidden.k.weight`` and ``hidden.k.bias`` along dimension 0
        (and ``output.weight`` along dimension 1 for the last layer), in matching stage ``k``."""
        posterior = local_model if isinstance(local_model, Mapping) else normal_posterior(local_model)
        depth = _num_hidden(posterior, 0)
        components, stages = {"output.weight": 1}, {"output.weight": depth - 1}
        for k in range(depth):
            for part in ("weight", "bias"):
                components[f"hidden.{k}.{part}"] = 0
                stages[f"hidden.{k}.{part}"] = k
        return Layout(components, stages=stages)

    def match(self, local: List[Dict[str, dist.Distribution]], weights, settings: FuseSettings):
        depth = _num_hidden(local[0], 0)
        prices, widths = settings.per_stage("price", depth), settings.per_stage("num_global", depth)
        class_weights = None
        if self.class_counts is not None:
            num_classes = _shape(local[0]["output.weight"])[0]
            class_weights = _output_weights(weights, self.class_counts, len(local), num_classes)
        fused: Units = {}
        results: List[FusionResult] = []
        assignments: Optional[List[Tensor]] = None
        num_previous = _shape(local[0]["hidden.0.weight"])[1]
        for k in tqdm(range(depth), desc="MLP layers", disable=not settings.progress):
            units = [
                layer_units(post, k, self.prior_scale, None if assignments is None else assignments[j], num_previous)
                for j, post in enumerate(local)
            ]
            result = match_layer(
                units, weights, price=prices[k], num_global=widths[k], prior_scale=self.prior_scale,
                point_scale=self.point_scale, direction=settings.direction, seed=settings.seed, **self.engine_options,
            )
            results.append(result)
            for name, value in fused_layer(result, assignments, num_previous, self.absent_scale).items():
                fused[f"hidden.{k}.{name}"] = value
            if k == depth - 1:
                out_loc, out_scale = output_columns(
                    result, units, weights, class_weights, settings.direction, self.absent_scale, self.point_scale
                )
                fused["output.weight"] = (out_loc.T, out_scale.T)
            assignments, num_previous = result.assignments, result.num_global
        fused["output.bias"] = output_bias(local, weights, class_weights, settings.direction, self.point_scale)
        return fused, results

    def write(self, matched, local: List[Dict[str, dist.Distribution]], settings: FuseSettings) -> FusedModel:
        fused, results = matched
        ref = local[0]
        model, guide, posterior = write_mlp(
            fused, _shape(ref["hidden.0.weight"])[1], _shape(ref["output.weight"])[0], self.prior_scale,
            self.point_scale is not None,
        )
        return FusedModel(
            posterior, results, model=model, guide=guide, assignments=[r.assignments for r in results],
            legacy=(model, guide, posterior, results),
        )


fuse_mlps = front_door(
    MLPAdapter,
    "fuse_mlps",
    """
Fuses the mean-field posteriors of several clients' Bayesian MLPs into one network
(:class:`MLPAdapter`).

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
    >>> fuse_mlps(posteriors, price=Price("location", scale=1e6)).num_global  # a dear unit: merge
    [4]

:param list local_models: per client, site name -> ``Normal(loc, scale)`` of the site's
    shape (e.g. :func:`~pyro_fusion.models.bnn.normal_posterior` of its AutoNormal guide),
    or the trained AutoNormal guide. Clients may have different hidden widths but the same
    depth, inputs and classes.
:param weights: positive client weights (e.g. data sizes), uniform by default.
:param str direction: KL direction, see :func:`~pyro_fusion.fuse`.
:param num_global: parametric mode: fused width, one for all layers or one per layer.
:param price: price of a global unit, one for all hidden layers or one per layer: a number,
    a rule name of :func:`~pyro_fusion.fuse` (default ``"counterpart"``) or ``"location"``
    (:func:`match_layer`), or a :class:`~pyro_fusion.Price` of those with a ``scale`` (below 1
    keeps more units, above 1 merges more).
:param int seed: seed of :func:`~pyro_fusion.fuse`.
:param bool progress: show a progress bar over the layers.
:param family_options: :class:`MLPAdapter` options (``prior_scale``, ``point_scale``,
    ``absent_scale``, ``class_counts``, ``combine``, ``max_sweeps``, ``dtype``). Before 0.2,
    ``price_rule=rule`` and ``price_scale=s`` (now ``price=Price(rule, s)``).
:return: a :class:`~pyro_fusion.adapters.base.FusedModel`: the fused ``model`` (learned
    widths), its ``guide`` (AutoNormal with the fused locs and scales, or AutoDelta), the
    ``posterior`` (site name -> ``Normal`` or ``Delta``) and one ``result`` per hidden layer.
""",
)
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
    for j, post in enumerate(posteriors):
        for site, d in post.items():
            _check_site(d, f"client {j}, site {site!r}")
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


def _check_site(d: Any, where: str) -> None:
    """Raise :class:`ValueError` naming ``where`` unless ``d`` is a distribution with a finite
    mean and, if it has one, a positive finite scale (``validate_args=False`` lets torch build
    a Normal of NaN or negative scale)."""
    if not isinstance(d, dist.Distribution):
        raise ValueError(f"{where}: expected a distribution, got {type(d).__name__}")
    base = base_distribution(d)
    if not bool(torch.isfinite(base.mean).all()):
        raise ValueError(f"{where}: its mean has NaN or inf")
    scale = getattr(base, "scale", None)
    if scale is not None and not bool(((scale > 0) & torch.isfinite(scale)).all()):
        raise ValueError(f"{where}: its scale must be positive and finite")


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


#: names that changed (kept for one release)
__getattr__ = moved(__name__, {"FusedMLP": "pyro_fusion.adapters.base:FusedModel"})
