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

import json
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .. import io
from ..components import Components
from ..expfam import ExponentialFamily, family_from_spec
from ..extract import GuidePosterior
from ..fused import FusedPosterior

#: RecordDict keys of the wire format
ARRAYS_KEY = "arrays"
HEADER_KEY = "pyro_fusion"
METRICS_KEY = "metrics"
#: ConfigRecord keys inside :data:`HEADER_KEY`
HEADER_FIELD = "header"
ROUND_FIELD = "server-round"
#: MetricRecord key of a client's fusion weight (Flower's convention)
NUM_EXAMPLES = "num-examples"

_FLOAT_DTYPES = ("float32", "float64")


def encode(post) -> Tuple[ArrayRecord, str]:
    """
    A :class:`~pyro_fusion.extract.GuidePosterior` or
    :class:`~pyro_fusion.fused.FusedPosterior` as an ArrayRecord and its JSON header, in the
    layout of :func:`pyro_fusion.io.save_posterior` / :func:`~pyro_fusion.io.save_fused`.

    Example::

        >>> arrays, header = encode(extract(guide, components={"loc": 0}))
        >>> sorted(arrays)
        ['components/loc']
    """
    tensors = {f"simplex/{n}": v for n, (_, v) in post.simplex.items()}
    if isinstance(post, FusedPosterior):
        meta = {"kind": "fused_posterior", **io._site_metadata(post)}
        result = post.result
        if result is not None:
            meta["result"] = io._result_metadata(result)
            tensors.update(io._result_tensors(result))
        groups = io._site_groups(post, "global", None if result is None else result.components)
    elif isinstance(post, GuidePosterior):
        meta = {"kind": "guide_posterior", "weight": post.weight, **io._site_metadata(post)}
        groups = io._site_groups(post, "components", post.components)
    else:
        raise ValueError(f"expected a GuidePosterior or FusedPosterior, got {type(post).__name__}")
    arrays: Dict[str, Array] = {}
    specs: Dict[str, Dict[str, Any]] = {}
    for group, comps in groups.items():
        specs[group] = {}
        for name, f in comps.fields.items():
            arrays[f"{group}/{name}"] = _array(f.natural)
            specs[group][name] = f.family.spec()
    for name, t in tensors.items():
        arrays[f"extra/{name}"] = _array(torch.as_tensor(t))
    header = {"format": io.FORMAT, "version": io.VERSION, "groups": specs, "metadata": meta}
    return ArrayRecord(arrays), json.dumps(header)


def _array(t: torch.Tensor) -> Array:
    return Array(t.detach().contiguous().cpu().numpy())


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
    if not isinstance(header, dict) or header.get("format") != io.FORMAT or header.get("version") != io.VERSION:
        got = (header.get("format"), header.get("version")) if isinstance(header, dict) else header
        raise ValueError(f"{where}: unsupported header format/version {got}, expected "
                         f"{io.FORMAT}/{io.VERSION}")
    return header, got_round


def _tensor(array: Array, key: str, where: str, shape: Optional[Tuple[int, ...]], dtypes) -> torch.Tensor:
    """Decode one array; ``shape`` None accepts any vector."""
    if array.stype != "numpy.ndarray" or array.dtype not in dtypes:
        raise ValueError(f"{where}, array {key!r}: {array.stype} of {array.dtype}, expected "
                         f"numpy.ndarray of {' or '.join(dtypes)}")
    if shape is None and len(array.shape) == 1:
        shape = tuple(array.shape)
    if tuple(array.shape) != tuple(shape or ()) or shape is None:
        want = "a vector" if shape is None else tuple(shape)
        raise ValueError(f"{where}, array {key!r}: declared shape {tuple(array.shape)}, expected {want}")
    try:
        value = array.numpy()
    except ValueError as e:  # np.load refuses pickled or truncated buffers
        raise ValueError(f"{where}, array {key!r}: undecodable ({e})") from None
    if value.shape != tuple(shape) or str(value.dtype) != array.dtype:
        raise ValueError(f"{where}, array {key!r}: decodes to {value.dtype} {value.shape}, declared "
                         f"{array.dtype} {tuple(array.shape)}")
    tensor = torch.from_numpy(np.array(value))
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError(f"{where}, array {key!r}: contains NaN or inf")
    return tensor


def _field_family(sites: Dict[str, Any], name: str, group: str) -> ExponentialFamily:
    """The family a field must have: the site's family with the site's other dims in its event."""
    shape = list(sites["site_shapes"][name])
    if group != "shared":
        del shape[sites["component_dims"][name]]
    spec = sites["site_families"][name].spec()
    spec["event_shape"] = shape + list(spec["event_shape"])
    return family_from_spec(spec)


def _decode(
    content: RecordDict, kind: str, where: str, server_round: Optional[int], max_width: Optional[int]
) -> Tuple[Dict[str, Components], Dict[str, torch.Tensor], Dict[str, Any], Dict[str, Any]]:
    header, _ = _header(content, where, server_round)
    if ARRAYS_KEY not in content.array_records:
        raise ValueError(f"{where}: no {ARRAYS_KEY!r} ArrayRecord")
    arrays = content.array_records[ARRAYS_KEY]
    try:
        meta = header["metadata"]
        if meta.get("kind") != kind:
            raise ValueError(f"holds a {meta.get('kind')!r}, expected a {kind!r}")
        sites = io._read_sites(where, {}, {**meta, "simplex_axes": {}})
        simplex_axes = {n: tuple(int(a) for a in axes) for n, axes in meta["simplex_axes"].items()}
        specs = header["groups"]
        groups_expected = {"shared"} | ({"global"} if kind == "fused_posterior" else {"components"})
        if not set(specs) <= groups_expected:
            raise ValueError(f"unexpected groups {sorted(set(specs) - groups_expected)}")
        result_meta = meta.get("result")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{where}: malformed header: {e}") from None
    names = set(sites["site_shapes"])
    if set(sites["sources"]) != names or set(sites["site_families"]) != names:
        raise ValueError(f"{where}: sources/families do not cover the sites {sorted(names)}")
    comp_sites = set(sites["component_dims"])
    shared_sites = names - comp_sites - set(simplex_axes)
    declared = {g: set(fields) for g, fields in specs.items()}
    wanted = {g: s for g, s in (("shared", shared_sites), ("components", comp_sites), ("global", comp_sites))
              if g in groups_expected and s}
    if declared != wanted:
        raise ValueError(f"{where}: header declares fields {_sorted(declared)}, the sites need {_sorted(wanted)}")
    widths = {sites["site_shapes"][n][d] for n, d in sites["component_dims"].items()
              if 0 <= d < len(sites["site_shapes"][n])}
    if len(widths) > 1 or (comp_sites and len(widths) != 1):
        raise ValueError(f"{where}: component sites disagree on the number of components {sorted(widths)}")
    width = widths.pop() if widths else 1
    if comp_sites and not 1 <= width <= (max_width or width):
        raise ValueError(f"{where}: {width} components, allowed 1..{max_width}")

    expected: Dict[str, Tuple[Optional[Tuple[int, ...]], Tuple[str, ...]]] = {}
    families: Dict[str, Dict[str, ExponentialFamily]] = {}
    for group, fields in specs.items():
        families[group] = {}
        for name, spec in fields.items():
            try:
                family = family_from_spec(spec)
                want = _field_family(sites, name, group)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}, field {group}/{name}: bad family spec {spec} ({e})") from None
            if family != want:
                raise ValueError(f"{where}, field {group}/{name}: declared {family!r}, its site needs {want!r}")
            families[group][name] = family
            rows = 1 if group == "shared" else width
            expected[f"{group}/{name}"] = ((rows, family.dim), _FLOAT_DTYPES)
    for name in simplex_axes:
        expected[f"extra/simplex/{name}"] = (tuple(sites["site_shapes"][name]), _FLOAT_DTYPES)
    if result_meta is not None:
        num_clients = result_meta.get("num_clients") if isinstance(result_meta, dict) else None
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"{where}: malformed fusion result metadata")
        for j in range(num_clients):
            expected[f"extra/assignment/{j}"] = (None, ("int64",))
        expected["extra/support"] = ((width,), ("int64",))
        expected["extra/objective"] = (None, ("float64",))
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ValueError(f"{where}: unexpected arrays (missing {missing}, unexpected {extra})")
    tensors = {key: _tensor(arrays[key], key, where, *expected[key]) for key in sorted(expected)}
    groups = {}
    for group, fields in families.items():
        groups[group] = Components({name: (fam, tensors[f"{group}/{name}"]) for name, fam in fields.items()})
        groups[group].check(f"{where}, group {group!r}")
    extra = {k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")}
    for name, value in extra.items():
        if name.startswith("simplex/") and (value < 0).any():
            raise ValueError(f"{where}, simplex site {name[len('simplex/'):]!r}: negative probabilities")
        if name.startswith("assignment/") and ((value < 0) | (value >= width)).any():
            raise ValueError(f"{where}, {name}: global indices outside 0..{width - 1}")
    sites["simplex"] = {n: (axes, extra[f"simplex/{n}"]) for n, axes in simplex_axes.items()}
    return groups, extra, meta, sites


def _sorted(groups: Dict[str, set]) -> Dict[str, list]:
    return {g: sorted(s) for g, s in sorted(groups.items())}


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
    groups, _, _, sites = _decode(content, "guide_posterior", where, server_round, max_width)
    return GuidePosterior(components=groups.get("components"), shared=groups.get("shared"), weight=float(n), **sites)


def read_global(content: RecordDict, where: str = "server", max_width: Optional[int] = None) -> Optional[FusedPosterior]:
    """
    The fused global posterior a server message carries, validated like a reply, or None
    before the first fusion (an empty header).

    :param RecordDict content: a train or evaluate message's content from the strategy.
    """
    if not _has_global(content):
        return None
    groups, extra, meta, sites = _decode(content, "fused_posterior", where, None, max_width)
    result = None
    if "result" in meta:
        if "global" not in groups:
            raise ValueError(f"{where}: fused posterior without global components")
        result = io._read_result(where, groups["global"], extra, meta["result"])
    return FusedPosterior(result=result, shared=groups.get("shared"), **sites)


def _has_global(content: RecordDict) -> bool:
    record = content.config_records.get(HEADER_KEY)
    if record is None:
        raise ValueError(f"message has no {HEADER_KEY!r} ConfigRecord: not sent by a KLFusion strategy")
    return bool(record.get(HEADER_FIELD))
