"""Helpers for the handlers of a Flower ``ClientApp`` that trains a Pyro guide for :class:`KLFusion`."""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional

import pyro
from flwr.app import Message
from pyro.infer.autoguide.initialization import init_to_feasible

from ..posterior import FusedPosterior
from ..priors import FusedPrior
from ..readout import extract
from ..writeback import init_to_fused
from . import wire


class GlobalRound(NamedTuple):
    """
    What a client receives at the start of a round (see :func:`receive_global`).

    :ivar int server_round: the round.
    :ivar FusedPosterior fused: the global posterior, None before the first fusion.
    """

    server_round: int
    fused: Optional[FusedPosterior]

    def init_loc_fn(self, fallback: Callable = init_to_feasible) -> Callable:
        """An autoguide ``init_loc_fn`` warm-starting at the global posterior (``fallback``
        in the first round): the local model must then have :attr:`FusedPosterior.num_global`
        components."""
        return fallback if self.fused is None else init_to_fused(self.fused, fallback)

    def prior(self, model: Callable) -> Callable:
        """``model`` with the global posterior as the prior of its fused sites
        (:class:`~pyro_fusion.FusedPrior`); ``model`` itself in the first round."""
        return model if self.fused is None else FusedPrior(self.fused)(model)


def receive_global(message: Message, max_width: Optional[int] = None) -> GlobalRound:
    """
    Start a round: clear the Pyro param store (a simulation runs several clients in one
    process) and decode and validate the global posterior the strategy sent.

    Example::

        >>> from flwr.clientapp import ClientApp
        >>> app = ClientApp()
        >>> @app.train()  # the whole app: examples/flower_app.py
        ... def train(msg, context):
        ...     start = receive_global(msg)
        ...     width = own_width if start.fused is None else start.fused.num_global
        ...     model = BayesianMLP(784, (width,), 10)
        ...     guide = AutoNormal(model, init_loc_fn=start.init_loc_fn())
        ...     train_svi(start.prior(model), guide, x, y)
        ...     return reply(msg, guide, num_examples=len(x), components=UNITS)

    :param Message message: a train or evaluate message from :class:`KLFusion`.
    :param int max_width: the most global components accepted.
    :raises ValueError: if the message is malformed (the param store is then left as it was).
    """
    if message.content.config_records.get(wire.HEADER_KEY) is None:
        raise ValueError(f"message has no {wire.HEADER_KEY!r} ConfigRecord: not sent by KLFusion")
    server_round = wire.message_round(message.content, "server")
    fused = wire.read_global(message.content, "server", max_width)
    pyro.clear_param_store()
    return GlobalRound(server_round, fused)


def reply(
    message: Message,
    guide: Callable,
    *args,
    num_examples: int,
    metrics: Optional[Mapping[str, float]] = None,
    **extract_kwargs,
) -> Message:
    """
    The training reply to ``message``: the trained guide read by
    :func:`~pyro_fusion.extract` (``args`` and ``extract_kwargs`` such as ``components=``
    go there), the client's ``num_examples`` and further ``metrics``.

    :param Message message: the train message being answered.
    :param guide: the trained mean-field guide.
    :param int num_examples: the number of local training examples (the fusion weight).
    :param dict metrics: scalar metrics to report (averaged by the server).
    """
    server_round = wire.message_round(message.content, "train message")
    post = extract(guide, *args, weight=num_examples, **extract_kwargs)
    return Message(wire.reply_content(post, server_round, num_examples, metrics), reply_to=message)
