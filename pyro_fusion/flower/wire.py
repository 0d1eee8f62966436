"""Flower records <-> posteriors: the wire format of :mod:`pyro_fusion.flower`.

A posterior travels as the same plain tensors and JSON header as a pyro_fusion file
(:mod:`pyro_fusion.io`): an :class:`~flwr.app.ArrayRecord` with one array per
``"<group>/<field>"`` (natural parameters ``[L, dim]``, ``L`` components) and per
``"extra/<name>"`` (simplex values, fusion diagnostics), and a
:class:`~flwr.app.ConfigRecord` holding the JSON header (format and version, family and
event shape per field, component dimension, shape, family and guide kind per site) and the
server round. A client's training reply adds a :class:`~flwr.app.MetricRecord` whose
``"num-examples"`` is its fusion weight.

Arrays are numpy ``.npy`` buffers; nothing is unpickled. Their ``.npy`` headers are read
without ``np.load`` and an array is decoded only if its declared dtype and shape agree with
its header and its number of bytes (a header claiming ``(1e13,)`` costs nothing), and only
once the set of arrays matches what the JSON header declares. Every decoded record is
validated before use and a bad one raises :class:`ValueError` naming the sender and what is
wrong (at most :data:`pyro_fusion.io.MAX_MESSAGE_CHARS` long); nothing is ever coerced into
shape.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..io import brief, parse_header
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

        >>> arrays, header = encode(extract(guide, data, 3, components={"loc": 0}))
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


def message_round(content: RecordDict, where: str) -> int:
    """The server round a message's :data:`HEADER_KEY` ConfigRecord names (an int, not coerced)."""
    record = content.config_records.get(HEADER_KEY)
    if record is None:
        raise ValueError(f"{where}: no {HEADER_KEY!r} ConfigRecord: not sent by a KLFusion strategy or client")
    if set(record) != {HEADER_FIELD, ROUND_FIELD}:
        raise ValueError(f"{where}: {HEADER_KEY!r} has keys {brief(str(sorted(record)), 200)}, expected "
                         f"{sorted([HEADER_FIELD, ROUND_FIELD])}")
    got_round = record[ROUND_FIELD]
    if isinstance(got_round, bool) or not isinstance(got_round, int) or got_round < 0:
        raise ValueError(f"{where}: server round must be a nonnegative int, got {brief(repr(got_round), 60)}")
    return got_round


def _header(content: RecordDict, where: str, server_round: Optional[int]) -> Tuple[Dict[str, Any], int]:
    got_round = message_round(content, where)
    if server_round is not None and got_round != server_round:
        raise ValueError(f"{where}: reply is for round {got_round}, this is round {server_round}")
    return parse_header(content.config_records[HEADER_KEY][HEADER_FIELD], where), got_round


def _tensor(array: Array, key: str, where: str) -> torch.Tensor:
    """
    Decode one array without ``np.load``: its ``.npy`` header is read first (no pickle, at
    most numpy's 10,000 header bytes), and the data is taken only if the declared and encoded
    dtype and shape agree and the bytes that follow are exactly that many elements.
    """
    if array.stype != "numpy.ndarray" or array.dtype not in _DTYPES:
        raise ValueError(f"{where}, array {key!r}: {brief(str(array.stype), 40)} of "
                         f"{brief(str(array.dtype), 40)}, expected numpy.ndarray of {' or '.join(_DTYPES)}")
    declared = tuple(array.shape)
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in declared):
        raise ValueError(f"{where}, array {key!r}: declared shape {brief(str(declared), 80)} is not a shape")
    data = array.data
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, fortran_order, dtype = read[version](stream)
    except Exception as e:  # a bad magic string, version or header: never reaches np.load
        raise ValueError(f"{where}, array {key!r}: undecodable .npy header ({brief(str(e), 120)})") from None
    if dtype.hasobject:
        raise ValueError(f"{where}, array {key!r}: holds Python objects (a pickle); never unpickled")
    if tuple(shape) != declared or str(dtype) != array.dtype:
        raise ValueError(f"{where}, array {key!r}: decodes to {brief(str(dtype), 40)} {brief(str(shape), 80)}, "
                         f"declared {array.dtype} {declared}")
    count = math.prod(shape)
    if len(data) - stream.tell() != count * dtype.itemsize:
        raise ValueError(f"{where}, array {key!r}: {len(data) - stream.tell()} bytes of data for shape "
                         f"{declared} of {array.dtype} ({count * dtype.itemsize} bytes)")
    value = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return torch.from_numpy(value.reshape(shape, order="F" if fortran_order else "C").copy())


class _LazyTensors(Mapping):
    """The arrays of an ArrayRecord as tensors, each decoded (once) when first read, so that
    :func:`~pyro_fusion.posterior.decode_posterior` compares the set of keys with the header
    before any array is decoded."""

    def __init__(self, arrays: ArrayRecord, where: str):
        self.arrays, self.where, self.decoded = arrays, where, {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.decoded:
            self.decoded[key] = _tensor(self.arrays[key], key, self.where)
        return self.decoded[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def _decode(content: RecordDict, kind: str, where: str, server_round: Optional[int], max_width: Optional[int]):
    header, _ = _header(content, where, server_round)
    if ARRAYS_KEY not in content.array_records:
        raise ValueError(f"{where}: no {ARRAYS_KEY!r} ArrayRecord")
    return decode_posterior(_LazyTensors(content.array_records[ARRAYS_KEY], where), header, where, kind, max_width)


def _check_metrics(record: MetricRecord, where: str, max_num_examples: int) -> None:
    """``num-examples`` an int in ``(0, max_num_examples]`` and every other metric a finite
    number (the strategy averages them: a list beside a number would fail the average)."""
    n = record.get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= max_num_examples:
        raise ValueError(f"{where}: {NUM_EXAMPLES} must be an int in (0, {max_num_examples}], got {brief(repr(n), 60)}")
    for name, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: metric {brief(repr(name), 60)} must be a finite number, "
                             f"got {brief(repr(value), 60)}")


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
    int in ``(0, max_num_examples]``, which becomes the posterior's weight, and every other
    metric a finite number. The work is bounded by what the reply holds (see the module
    docstring and :func:`pyro_fusion.io.parse_header`).

    :param RecordDict content: the reply's content.
    :param str where: how to name the sender in errors (e.g. ``"node 17"``).
    :raises ValueError: naming ``where`` and the first problem found.
    """
    if set(content) != {ARRAYS_KEY, HEADER_KEY, METRICS_KEY}:
        raise ValueError(f"{where}: records {brief(str(sorted(content)), 200)}, expected "
                         f"{sorted([ARRAYS_KEY, HEADER_KEY, METRICS_KEY])}")
    if METRICS_KEY not in content.metric_records:
        raise ValueError(f"{where}: {METRICS_KEY!r} is not a MetricRecord")
    metrics = content.metric_records[METRICS_KEY]
    _check_metrics(metrics, where, max_num_examples)
    post = _decode(content, "guide_posterior", where, server_round, max_width)
    return dataclasses.replace(post, weight=float(metrics[NUM_EXAMPLES]))


def read_global(content: RecordDict, where: str = "server", max_width: Optional[int] = None) -> Optional[FusedPosterior]:
    """
    The fused global posterior a server message carries, validated like a reply, or None
    before the first fusion (an empty header).

    :param RecordDict content: a train or evaluate message's content from the strategy.
    """
    message_round(content, where)
    if content.config_records[HEADER_KEY][HEADER_FIELD] == "":
        return None
    return _decode(content, "fused_posterior", where, None, max_width)
