"""A Flower strategy that fuses clients' mean-field guides of any width by KL-fusion."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from torch.distributions import Normal

from ..components import Components
from ..cost import KLGeometry, check_direction
from ..expfam import DiagNormal
from ..io import brief
from ..posterior import FusedPosterior, GuidePosterior
from . import wire

#: fuser signature: (client posteriors, their num-examples) -> global posterior (or a FusedModel holding it)
Fuser = Callable[[Sequence[GuidePosterior], Sequence[float]], Any]

#: the longest rejection reason kept in :attr:`KLFusion.history` and logged (characters)
MAX_REASON_CHARS = 500
#: how a fusion error names the client at fault, e.g. ``"client 3: ..."``
_CLIENT_AT_FAULT = re.compile(r"client (\d+)\b")


@dataclass(frozen=True)
class Rejection:
    """A reply left out of a round: the sending node and why."""

    node_id: int
    reason: str


@dataclass(frozen=True)
class RoundFusion:
    """
    What one round's fusion did.

    :ivar dict assignments: node id -> LongTensor mapping the node's local components to
        global ones.
    :ivar int width: number of global components (0 if the round fused nothing).
    :ivar Tensor support: number of clients matched to each global component.
    :ivar float objective: final value of the fusion objective.
    :ivar list rejections: the replies left out, with reasons.
    """

    assignments: Dict[int, torch.Tensor]
    width: int
    support: torch.Tensor
    objective: float
    rejections: List[Rejection]


class KLFusion(FedAvg):
    """
    Federated KL-fusion: each round the sampled clients train a Pyro model with a
    mean-field guide of any width; the server validates every reply, matches the clients'
    components (hidden units, mixture components, topics, ...) and fuses them into a global
    posterior of learned width, which is sent back for the next round.

    A reply that fails validation (see :func:`~pyro_fusion.flower.wire.read_reply`), comes
    from a node that was not sampled, repeats a node, does not describe the same model
    as the first accepted reply, or whose components would make KL costs or the price
    non-finite (:func:`check_magnitudes`) is rejected: it is logged, recorded in
    :attr:`rejections` with a reason of at most :data:`MAX_REASON_CHARS` characters, and the
    round goes on with the others. Any exception while decoding or validating one reply
    rejects that reply only; a fusion error that names one client (``"client j: ..."``)
    rejects that client's reply and fusion is retried without it; any other fusion error
    keeps the previous global posterior. :meth:`aggregate_train` never raises.

    Example::

        >>> strategy = KLFusion(max_width=256, max_num_examples=60000, prior_scale=1.0)
        >>> strategy.global_posterior is None  # until the first round is fused
        True

    In a ``ServerApp`` (the whole app: ``examples/flower_app.py``), ``strategy.start(grid,
    ArrayRecord(), num_rounds=3)`` runs the rounds; then ``strategy.history[3].width`` and
    ``strategy.history[3].assignments`` describe the last fusion. The clients say which sites
    hold their components (``components=`` of :func:`~pyro_fusion.flower.reply`).

    :param int max_width: the most components a reply may have.
    :param int max_num_examples: the largest ``num-examples`` a reply may claim.
    :param float prior_scale: if given (and ``fuse_kwargs`` has no ``prior``), the clients'
        prior ``Normal(0, prior_scale)`` on every component field, in the guides'
        unconstrained space (read by ``price="prior"`` and ``combine="product"``; the default
        price rule, ``"counterpart"``, needs no prior).
    :param dict fuse_kwargs: options of :meth:`FusedPosterior.from_posteriors
        <pyro_fusion.posterior.FusedPosterior.from_posteriors>`, the matching step of
        :func:`~pyro_fusion.fuse_posteriors` (``direction``, ``price``, ``num_global``,
        ``combine``, ``prior``, ``seed``, ...).
    :param fuser: replaces that step altogether (e.g. a layer-wise adapter); called as
        ``fuser(posteriors, num_examples)``, it returns a ``FusedPosterior`` or a
        :class:`~pyro_fusion.FusedModel` holding one (e.g. :func:`~pyro_fusion.fuse_posteriors`).
    :param kwargs: node sampling options of :class:`~flwr.serverapp.strategy.FedAvg`
        (``fraction_train``, ``min_train_nodes``, ``min_available_nodes``, ...).
    """

    def __init__(
        self,
        max_width: int,
        max_num_examples: int,
        *,
        prior_scale: Optional[float] = None,
        fuse_kwargs: Optional[Mapping[str, Any]] = None,
        fuser: Optional[Fuser] = None,
        **kwargs,
    ):
        for name, value in (("max_width", max_width), ("max_num_examples", max_num_examples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if prior_scale is not None and not prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {prior_scale}")
        if fuser is not None and (fuse_kwargs or prior_scale is not None):
            raise ValueError("pass either fuser or fuse_kwargs/prior_scale, not both")
        check_direction(dict(fuse_kwargs or {}).get("direction", "reverse"))
        super().__init__(weighted_by_key=wire.NUM_EXAMPLES, arrayrecord_key=wire.ARRAYS_KEY, **kwargs)
        self.max_width = max_width
        self.max_num_examples = max_num_examples
        self.prior_scale = prior_scale
        self.fuse_kwargs = dict(fuse_kwargs or {})
        self.fuser = fuser
        #: the current global posterior (None before the first fusion)
        self.global_posterior: Optional[FusedPosterior] = None
        #: round -> :class:`RoundFusion`
        self.history: Dict[int, RoundFusion] = {}
        self._header = ""
        self._sampled: Dict[int, set] = {}

    @property
    def assignments(self) -> Dict[int, Dict[int, torch.Tensor]]:
        """Round -> node id -> local-to-global assignment of that node's components."""
        return {r: h.assignments for r, h in self.history.items()}

    @property
    def rejections(self) -> Dict[int, List[Rejection]]:
        """Round -> replies rejected in that round."""
        return {r: h.rejections for r, h in self.history.items()}

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├──> KL-fusion: max width %d, max num-examples %d, prior scale %s, %s",
            self.max_width, self.max_num_examples, self.prior_scale,
            "custom fuser" if self.fuser else f"fuse options {self.fuse_kwargs}")
        super().summary()

    def _with_global(self, messages: Iterable[Message], server_round: int) -> List[Message]:
        messages = list(messages)
        record = wire.header_record(self._header, server_round)
        for message in messages:
            message.content[wire.HEADER_KEY] = record
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send them the global posterior (none in the first round)."""
        messages = self._with_global(super().configure_train(server_round, arrays, config, grid), server_round)
        self._sampled[server_round] = {m.metadata.dst_node_id for m in messages}
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send them the global posterior to evaluate."""
        return self._with_global(super().configure_evaluate(server_round, arrays, config, grid), server_round)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """
        Validate every reply, fuse the accepted ones and return the global posterior's
        arrays with the round's diagnostics (``global-width``, ``support``, ``objective``,
        ``num-accepted``, ``num-rejected`` and the clients' metrics averaged by
        ``num-examples``).
        """
        expected = self._sampled.get(server_round, set())
        accepted: Dict[int, GuidePosterior] = {}
        contents: Dict[int, RecordDict] = {}
        rejections: List[Rejection] = []
        for message in replies:
            node = message.metadata.src_node_id
            try:
                post = self._read(message, node, server_round, expected, accepted)
            except Exception as e:  # noqa: BLE001 - whatever one reply does, it is rejected alone
                _reject(rejections, node, e)
                continue
            accepted[node] = post
            contents[node] = message.content
        fused = self._fuse_accepted(accepted, rejections) if accepted else None
        log(INFO, "aggregate_train: %d replies accepted, %d rejected", len(accepted), len(rejections))
        metrics = MetricRecord({"num-accepted": len(accepted), "num-rejected": len(rejections)})
        if fused is None:
            self.history[server_round] = RoundFusion({}, 0, torch.zeros(0, dtype=torch.long), float("nan"), rejections)
            return None, metrics
        weights = [p.weight for p in accepted.values()]
        arrays, self._header = wire.encode(fused)
        self.global_posterior = fused
        result = fused.result
        if result is not None:
            assignments = dict(zip(accepted, result.assignments))
            support, objective = result.support, float(result.objective[-1])
        else:
            assignments, support, objective = {}, torch.zeros(0, dtype=torch.long), float("nan")
        self.history[server_round] = RoundFusion(assignments, fused.num_global, support, objective, rejections)
        client_metrics = self.train_metrics_aggr_fn([contents[n] for n in accepted], wire.NUM_EXAMPLES)
        metrics = MetricRecord({
            **{k: v for k, v in client_metrics.items() if k != wire.NUM_EXAMPLES},
            **metrics,
            "num-examples": int(sum(weights)),
            "global-width": fused.num_global,
            "support": [int(s) for s in support],
            "objective": objective,
        })
        return arrays, metrics

    def _read(self, message: Message, node: int, server_round: int, expected: set,
              accepted: Dict[int, GuidePosterior]) -> GuidePosterior:
        where = f"node {node}"
        if message.has_error():
            raise ValueError(f"{where}: the client failed: {message.error.reason}")
        if node not in expected:
            raise ValueError(f"{where}: not among the nodes sampled for round {server_round}")
        if node in accepted:
            raise ValueError(f"{where}: a second reply in round {server_round}")
        post = wire.read_reply(message.content, where, server_round, self.max_width, self.max_num_examples)
        if accepted:
            _check_same_model(post, next(iter(accepted.values())), where)
        directions = ("reverse", "forward") if self.fuser is not None else (self.fuse_kwargs.get("direction", "reverse"),)
        for group in (post.components, post.shared):
            for direction in directions if group is not None else ():
                check_magnitudes(group, direction, where)
        return post

    def _fuse_accepted(self, accepted: Dict[int, GuidePosterior], rejections: List[Rejection]) -> Optional[FusedPosterior]:
        """Fuse the accepted replies (in place: a reply fusion blames is removed and rejected)."""
        while accepted:
            nodes = list(accepted)
            posts = [accepted[n] for n in nodes]
            try:
                return self._fuse(posts, [p.weight for p in posts])
            except Exception as e:  # noqa: BLE001 - a fusion error never aborts the round
                at_fault = _CLIENT_AT_FAULT.match(str(e)) if isinstance(e, ValueError) else None
                if at_fault is None or int(at_fault.group(1)) >= len(nodes):
                    log(WARNING, "aggregate_train: fusion failed, keeping the previous global posterior: %s",
                        brief(f"{type(e).__name__}: {e}", MAX_REASON_CHARS))
                    return None
                node = nodes[int(at_fault.group(1))]
                _reject(rejections, node, ValueError(f"node {node}: fusion refused its reply: {e}"))
                del accepted[node]
        return None

    def _fuse(self, posts: List[GuidePosterior], weights: List[float]) -> FusedPosterior:
        if self.fuser is not None:  # a FusedPosterior, or a FusedModel holding one
            fused = self.fuser(posts, weights)
            return getattr(fused, "posterior", fused)
        kwargs = dict(self.fuse_kwargs)
        if self.prior_scale is not None and "prior" not in kwargs and posts[0].components is not None:
            kwargs["prior"] = zero_mean_prior(posts[0].components, self.prior_scale)
        return FusedPosterior.from_posteriors(posts, weights, **kwargs)


def _reject(rejections: List[Rejection], node: int, error: Exception) -> None:
    """Record and log a rejection: the reason names the node and is at most :data:`MAX_REASON_CHARS` long."""
    reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    if not reason.startswith(f"node {node}"):
        reason = f"node {node}: {reason}"
    reason = brief(reason, MAX_REASON_CHARS)
    rejections.append(Rejection(node, reason))
    log(WARNING, "aggregate_train: rejected the reply of node %s: %s", node, reason)


def check_magnitudes(components: Components, direction: str, where: str) -> None:
    """
    Raise :class:`ValueError` naming ``where`` and the field unless the KL cost terms of
    ``components`` fit their dtype with room to spare. In the averaging space of
    ``direction`` (:class:`~pyro_fusion.cost.KLGeometry`), with ``max`` the largest number of
    the components' dtype and ``F`` their number of fields, each field's coordinates ``x``
    and gradients ``y`` must have norms below ``sqrt(max / F) * 2**-12`` and its potentials
    ``Phi(x)`` and offsets ``c`` magnitudes below ``max / F * 2**-24``. Then every cost
    ``Phi(x_l) + c_g - <x_l, y_g>`` between two sets of components that pass, and any sum of
    up to ``2**20`` of them, is finite: one reply cannot make the costs or the price NaN
    (float32 natural parameters of 1e30 did, and changed a round's width from 4 to 9).

    Example::

        >>> check_magnitudes(posts[0].components, "reverse", "node 17")  # in KLFusion, per reply

    :param Components components: one reply's components.
    :param str direction: the KL direction of the fusion.
    :param str where: how to name the sender.
    """
    big = torch.finfo(components.dtype).max
    norm_limit = math.sqrt(big / len(components.fields)) * 2.0**-12
    term_limit = big / len(components.fields) * 2.0**-24
    for name, f in components.fields.items():
        geometry = KLGeometry({name: f.family}, direction)
        with torch.no_grad():
            x = geometry.coordinates(f.natural.double())
            y, c, phi = geometry.dual(x)
            norms = torch.stack([x.norm(dim=-1).max(), y.norm(dim=-1).max()])
            terms = torch.stack([phi.abs().max(), c.abs().max()])
        worst = float(torch.maximum(norms.max() / norm_limit, terms.max() / term_limit))
        if not worst < 1:
            raise ValueError(
                f"{where}, field {name!r}: its KL cost terms are {worst:.3g} times what {components.dtype} "
                f"cost matrices can hold next to other replies ({direction} KL); its parameters are too extreme"
            )


def _check_same_model(post: GuidePosterior, ref: GuidePosterior, where: str) -> None:
    """Raise unless ``post`` describes the same model as ``ref`` (up to the number of components)."""
    for attr in ("component_dims", "sources", "site_families", "supports"):
        if getattr(post, attr) != getattr(ref, attr):
            raise ValueError(f"{where}: {attr} {getattr(post, attr)} differ from the other replies' "
                             f"{getattr(ref, attr)}")
    if set(post.simplex) != set(ref.simplex):
        raise ValueError(f"{where}: simplex sites {sorted(post.simplex)} differ from {sorted(ref.simplex)}")
    for name, shape in post.site_shapes.items():
        other = list(ref.site_shapes[name])
        if name in post.component_dims:
            other[post.component_dims[name]] = shape[post.component_dims[name]]
        if name not in post.simplex and list(shape) != other:
            raise ValueError(f"{where}, site {name!r}: shape {tuple(shape)}, other replies have {tuple(other)}")


def zero_mean_prior(components: Components, scale: float) -> Components:
    """
    One prior component ``Normal(0, scale)`` on every field of ``components`` (all
    :class:`~pyro_fusion.expfam.DiagNormal`), e.g. the ``Normal(0, 1)`` weight prior of a
    Bayesian network, in the guides' unconstrained space.

    :raises ValueError: naming a field of another family.
    """
    fields = {}
    for name, f in components.fields.items():
        if not isinstance(f.family, DiagNormal):
            raise ValueError(f"field {name!r}: prior_scale needs DiagNormal fields, got {f.family!r}; "
                             f"pass fuse_kwargs={{'prior': ...}} instead")
        loc = torch.zeros((1,) + tuple(f.family.event_shape), dtype=f.natural.dtype)
        fields[name] = (f.family, f.family.natural_from_distribution(Normal(loc, scale)).reshape(1, -1))
    return Components(fields)
