"""Flower records <-> posteriors: the wire format of :mod:`pyro_fusion.flower`.

A posterior travels as the same plain tensors and JSON header as a pyro_fusion file
(:mod:`pyro_fusion.io`): an :class:`~flwr.app.ArrayRecord` with one array per
``"<group>/<field>"`` (natural parameters ``[L, dim]``, ``L`` components) and per
``"extra/<name>"`` (simplex values, fusion diagnostics), and a
:class:`~flwr.app.ConfigRecord` holding the JSON header (format and version, family and
event shape per field, component dimension, shape, family and guide kind per site) and the
server round. A client's training reply adds a :class:`~flwr.app.MetricRecord` whose
``"num-examples"`` is its fusion weight.

Arrays are numpy ``.npy`` buffers read with ``allow_pickle=False``; nothing is unpickled.
Every decoded record is validated before use and a bad one raises :class:`ValueError`
naming the sender and what is wrong; nothing is ever coerced into shape.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..posterior import FusedPosterior, GuidePosterior, decode_posterior, encode_posterior

#: RecordDict keys of the wire format
ARRAYS_KEY = "arrays"
HEADER_KEY = "pyro_fusion"
METRICS_KEY = "metrics"
#: ConfigRecord keys inside :data:`HEADER_KEY`
HEADER_FIELD = "header"
ROUND_FIELD = "server-round"
#: MetricRecord key of a client's fusion weight (Flower's convention)
NUM_EXAMPLES = "num-examples"

_DTYPES = ("float32", "float64", "int64")


def encode(post) -> Tuple[ArrayRecord, str]:
    """
    A :class:`~pyro_fusion.posterior.GuidePosterior` or
    :class:`~pyro_fusion.posterior.FusedPosterior` as an ArrayRecord and its JSON header
    (:func:`pyro_fusion.posterior.encode_posterior`, the file format).

    Example::

        >>> arrays, header = encode(extract(guide, components={"loc": 0}))
        >>> sorted(arrays)
        ['components/loc']
    """
    tensors, header = encode_posterior(post)
    arrays = {key: Array(t.numpy()) for key, t in tensors.items()}
    return ArrayRecord(arrays), json.dumps(header)


def header_record(header: str, server_round: int) -> ConfigRecord:
    """The ConfigRecord carrying a JSON header and the round it belongs to."""
    return ConfigRecord({HEADER_FIELD: header, ROUND_FIELD: int(server_round)})


def reply_content(
    post: GuidePosterior, server_round: int, num_examples: int, metrics: Optional[Mapping[str, float]] = None
) -> RecordDict:
    """
    The content of a client's training reply: its posterior, the header for
    ``server_round`` and a MetricRecord with ``num-examples`` and ``metrics``.

    :param GuidePosterior post: the client's extracted guide.
    :param int server_round: the round being answered.
    :param int num_examples: the client's number of training examples (its fusion weight).
    :param dict metrics: further scalar metrics (e.g. the final training loss).
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
    arrays, header = encode(post)
    record = MetricRecord({**dict(metrics or {}), NUM_EXAMPLES: num_examples})
    return RecordDict({ARRAYS_KEY: arrays, HEADER_KEY: header_record(header, server_round), METRICS_KEY: record})


def _header(content: RecordDict, where: str, server_round: Optional[int]) -> Tuple[Dict[str, Any], int]:
    if HEADER_KEY not in content.config_records:
        raise ValueError(f"{where}: no {HEADER_KEY!r} ConfigRecord")
    record = content.config_records[HEADER_KEY]
    if set(record) != {HEADER_FIELD, ROUND_FIELD}:
        raise ValueError(f"{where}: {HEADER_KEY!r} has keys {sorted(record)}, expected "
                         f"{sorted([HEADER_FIELD, ROUND_FIELD])}")
    got_round = record[ROUND_FIELD]
    if isinstance(got_round, bool) or not isinstance(got_round, int):
        raise ValueError(f"{where}: server round must be an int, got {got_round!r}")
    if server_round is not None and got_round != server_round:
        raise ValueError(f"{where}: reply is for round {got_round}, this is round {server_round}")
    try:
        header = json.loads(record[HEADER_FIELD])
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: header is not JSON ({e})") from None
    return header, got_round


def _tensor(array: Array, key: str, where: str) -> torch.Tensor:
    """Decode one array (``allow_pickle=False``); its declared and decoded dtype and shape must agree."""
    if array.stype != "numpy.ndarray" or array.dtype not in _DTYPES:
        raise ValueError(f"{where}, array {key!r}: {array.stype} of {array.dtype}, expected "
                         f"numpy.ndarray of {' or '.join(_DTYPES)}")
    try:
        value = array.numpy()
    except ValueError as e:  # np.load refuses pickled or truncated buffers
        raise ValueError(f"{where}, array {key!r}: undecodable ({e})") from None
    if value.shape != tuple(array.shape) or str(value.dtype) != array.dtype:
        raise ValueError(f"{where}, array {key!r}: decodes to {value.dtype} {value.shape}, declared "
                         f"{array.dtype} {tuple(array.shape)}")
    return torch.from_numpy(np.array(value))


def _decode(content: RecordDict, kind: str, where: str, server_round: Optional[int], max_width: Optional[int]):
    header, _ = _header(content, where, server_round)
    if ARRAYS_KEY not in content.array_records:
        raise ValueError(f"{where}: no {ARRAYS_KEY!r} ArrayRecord")
    arrays = content.array_records[ARRAYS_KEY]
    tensors = {key: _tensor(arrays[key], key, where) for key in sorted(arrays)}
    return decode_posterior(tensors, header, where, kind, max_width)


def read_reply(
    content: RecordDict,
    where: str,
    server_round: int,
    max_width: int,
    max_num_examples: int,
) -> GuidePosterior:
    """
    Decode and validate a client's training reply (see :func:`reply_content`).

    Checks: the expected records and keys, the header's format, version, kind and round,
    each array's declared and decoded shape against the one its site needs and
    ``max_width`` components at most, float dtypes, finite values, natural parameters in
    their family's domain (positive scales, concentrations, ...) and ``num-examples`` an
    int in ``(0, max_num_examples]``, which becomes the posterior's weight.

    :param RecordDict content: the reply's content.
    :param str where: how to name the sender in errors (e.g. ``"node 17"``).
    :raises ValueError: naming ``where`` and the first problem found.
    """
    if set(content) != {ARRAYS_KEY, HEADER_KEY, METRICS_KEY}:
        raise ValueError(f"{where}: records {sorted(content)}, expected "
                         f"{sorted([ARRAYS_KEY, HEADER_KEY, METRICS_KEY])}")
    if METRICS_KEY not in content.metric_records:
        raise ValueError(f"{where}: {METRICS_KEY!r} is not a MetricRecord")
    n = content.metric_records[METRICS_KEY].get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= max_num_examples:
        raise ValueError(f"{where}: {NUM_EXAMPLES} must be an int in (0, {max_num_examples}], got {n!r}")
    post = _decode(content, "guide_posterior", where, server_round, max_width)
    return dataclasses.replace(post, weight=float(n))


def read_global(content: RecordDict, where: str = "server", max_width: Optional[int] = None) -> Optional[FusedPosterior]:
    """
    The fused global posterior a server message carries, validated like a reply, or None
    before the first fusion (an empty header).

    :param RecordDict content: a train or evaluate message's content from the strategy.
    """
    if not _has_global(content):
        return None
    return _decode(content, "fused_posterior", where, None, max_width)


def _has_global(content: RecordDict) -> bool:
    record = content.config_records.get(HEADER_KEY)
    if record is None:
        raise ValueError(f"message has no {HEADER_KEY!r} ConfigRecord: not sent by a KLFusion strategy")
    return bool(record.get(HEADER_FIELD))
