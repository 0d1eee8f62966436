"""The exchange codec: plain tensors plus a JSON header, in safetensors files or Flower
messages. Nothing is ever unpickled.

A file holds named groups of :class:`~pyro_fusion.components.Components` (tensor keys
``"<group>/<field>"``) and one JSON metadata string describing the families, so it can be
read without the model that produced it.

The codec sits below the objects it encodes: it turns *records* (plain dicts of Components,
tensors and JSON values) into tensors and a header and back, and imports none of the
posterior or result classes. :class:`~pyro_fusion.posterior.GuidePosterior`,
:class:`~pyro_fusion.posterior.FusedPosterior` and :class:`~pyro_fusion.fusion.FusionResult`
convert themselves to and from records and call it in their ``save``/``load``.

Record kinds (key ``"kind"``):

- ``"guide_posterior"``: ``component_dims``, ``simplex`` (site -> ``(axes, value)``),
  ``site_shapes``, ``sources``, ``site_families``, ``components``, ``shared``, ``weight``;
- ``"fused_posterior"``: the same site layout, ``shared`` and ``result`` (a result record or None);
- a result record (:data:`RESULT_FIELDS`): the fields of a
  :class:`~pyro_fusion.fusion.FusionResult`.

Files and messages come from other parties, so reading them is bounded by what they really
hold and strict: the header is parsed only if it has at most :data:`MAX_HEADER_CHARS`
characters and :data:`MAX_JSON_DEPTH` levels of nesting, every JSON value must have its
type (``1.0``, ``true`` or ``0.7`` are not taken for ints), counts declared in the header are
checked against the tensors present before anything is built from them, and every error is
a :class:`ValueError` naming the file or sender, at most :data:`MAX_MESSAGE_CHARS` long.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .components import FLOAT_DTYPES, Components
from .cost import DIRECTIONS
from .deprecation import moved
from .expfam import family_from_spec
from .simplex import check_simplex

FORMAT = "pyro_fusion"
VERSION = 1
#: the keys of a header
HEADER_KEYS = ("format", "version", "groups", "metadata")
#: the longest JSON header read, in characters (a longer one is rejected unparsed)
MAX_HEADER_CHARS = 1_000_000
#: the deepest nesting of JSON arrays and objects a header may have
MAX_JSON_DEPTH = 32
#: the longest error message about a file or message, in characters (longer ones are cut)
MAX_MESSAGE_CHARS = 1000
#: the largest size of one dimension a header may declare
MAX_DIM = 2**53


# ----- bounded, strict reading of headers ------------------------------------------------------


def brief(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters (saying so), e.g. an error message that
    quotes what a file holds."""
    if len(text) <= limit:
        return text
    note = f" ... [cut, {len(text)} characters in all]"
    return text[: max(limit - len(note), 0)] + note


def _show(value: Any, limit: int = 60) -> str:
    """A short description of a value read from a file (containers are not printed)."""
    if isinstance(value, Mapping):
        return f"an object of {len(value)} keys"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} entries"
    return brief(repr(value), limit)


def _listing(items: Iterable[Any], limit: int = 5) -> str:
    """At most ``limit`` sorted items, and how many more there are."""
    items = sorted(items, key=str)
    shown = ", ".join(_show(i) for i in items[:limit])
    return f"[{shown}{f', ... {len(items) - limit} more' if len(items) > limit else ''}]"


def _briefly(function: Callable) -> Callable:
    """Cut the message of a :class:`ValueError` raised by ``function`` to :data:`MAX_MESSAGE_CHARS`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ValueError as e:
            if len(str(e)) <= MAX_MESSAGE_CHARS:
                raise
            raise ValueError(brief(str(e))) from None

    return wrapper


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"repeated key {_show(next(k for k in keys if keys.count(k) > 1))}")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {brief(text, 40)} is out of range")
    return value


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of JSON arrays and objects in ``value`` (0 for a scalar), found
    without recursion; the count stops once it exceeds ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_header(raw: Any, where: str) -> Dict[str, Any]:
    """
    Parse and check the JSON header of a file or message, bounding the work by its length:
    at most :data:`MAX_HEADER_CHARS` characters and :data:`MAX_JSON_DEPTH` levels, no
    repeated keys, finite numbers only, then :func:`check_header`.

    Example::

        >>> parse_header('{"format": "pyro_fusion", "version": 1, "groups": {}, "metadata": {}}', "x")["groups"]
        {}

    :param str raw: the header text.
    :param str where: how errors name the source (a path, ``"node 17"``, ...).
    :raises ValueError: naming ``where`` and the first problem.
    """
    if not isinstance(raw, str):
        raise ValueError(f"{where}: header is {_show(raw)}, expected a JSON string")
    if len(raw) > MAX_HEADER_CHARS:
        raise ValueError(f"{where}: header of {len(raw)} characters; at most {MAX_HEADER_CHARS} are read")
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant,
                            parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"{where}: header nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise ValueError(f"{where}: header is not JSON ({brief(str(e), 200)})") from None
    if json_depth(header) > MAX_JSON_DEPTH:
        raise ValueError(f"{where}: header nested deeper than {MAX_JSON_DEPTH} levels")
    check_header(header, where)
    return header


def check_header(header: Any, where: str) -> None:
    """
    Raise :class:`ValueError` naming ``where`` unless ``header`` is an object with exactly the
    keys :data:`HEADER_KEYS`, this format and version (the int 1: ``1.0`` or ``true`` are not
    taken for it), ``groups`` an object of groups, each an object of field -> family spec, and
    ``metadata`` an object.
    """
    if not isinstance(header, Mapping):
        raise ValueError(f"{where}: header is {_show(header)}, expected a JSON object")
    fmt, version = header.get("format"), header.get("version")
    if not (isinstance(fmt, str) and fmt == FORMAT and type(version) is int and version == VERSION):
        raise ValueError(f"{where}: unsupported format/version ({_show(fmt)}, {_show(version)}), "
                         f"expected {FORMAT}/{VERSION}")
    _exact_keys(header, HEADER_KEYS, (), "header", where)
    for group, fields in _object(header["groups"], "header 'groups'", where).items():
        if "/" in group:
            raise ValueError(f"{where}: group name {_show(group)} must not contain '/'")
        for name, spec in _object(fields, f"group {_show(group)}", where).items():
            _object(spec, f"field {_show(group)}/{_show(name)}", where)
    _object(header["metadata"], "header 'metadata'", where)


def _exact_keys(obj: Mapping, required: Sequence[str], optional: Sequence[str], what: str, where: str) -> None:
    missing = [k for k in required if k not in obj]
    unknown = [k for k in obj if k not in required and k not in optional]
    if missing or unknown:
        raise ValueError(f"{where}: {what} lacks the keys {missing} or has unknown keys {_listing(unknown)}")


def _object(value: Any, what: str, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {what} must be a JSON object, got {_show(value)}")
    return value


def _int(value: Any, what: str, where: str, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool or a float such as 0.7) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_DIM:
        raise ValueError(f"{where}: {what} must be an int in [{minimum}, 2**53], got {_show(value)}")
    return value


def _positive_number(value: Any, what: str, where: str) -> Any:
    """``value`` if it is a finite positive int or float (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: {what} must be a positive number (finite, not a bool), got {_show(value)}")
    return value


def _ints(value: Any, what: str, where: str) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: {what} must be an array of ints, got {_show(value)}")
    return tuple(_int(v, what, where) for v in value)


def _family(spec: Any, what: str, where: str):
    try:
        return family_from_spec(spec)
    except ValueError as e:
        raise ValueError(f"{where}, {what}: bad family spec ({brief(str(e), 200)})") from None


# ----- groups of components ----------------------------------------------------------------------


def encode_groups(
    groups: Mapping[str, Components],
    metadata: Mapping[str, Any] = None,
    tensors: Mapping[str, torch.Tensor] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    Groups of components (and extra tensors) as plain tensors keyed ``"<group>/<field>"``
    and ``"extra/<name>"``, plus the JSON-serialisable header describing them.

    :param dict groups: group name -> :class:`Components`.
    :param dict metadata: JSON-serialisable extra metadata.
    :param dict tensors: extra plain tensors, stored under ``"extra/<name>"``.
    """
    out: Dict[str, torch.Tensor] = {}
    fields: Dict[str, Dict[str, Any]] = {}
    for group, comps in groups.items():
        if "/" in group:
            raise ValueError(f"group name {group!r} must not contain '/'")
        fields[group] = {}
        for name, f in comps.fields.items():
            out[f"{group}/{name}"] = f.natural.detach().contiguous().cpu()
            fields[group][name] = f.family.spec()
    for name, t in (tensors or {}).items():
        out[f"extra/{name}"] = torch.as_tensor(t).detach().contiguous().cpu()
    return out, {"format": FORMAT, "version": VERSION, "groups": fields, "metadata": dict(metadata or {})}


def save_groups(
    path: str, groups: Mapping[str, Components], metadata: Mapping[str, Any] = None,
    tensors: Mapping[str, torch.Tensor] = None,
) -> None:
    """Save :func:`encode_groups` as one safetensors file (the header as its metadata)."""
    out, header = encode_groups(groups, metadata, tensors)
    save_file(out, path, metadata={FORMAT: json.dumps(header)})


@_briefly
def read_file(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    The tensors and header of a pyro_fusion safetensors file. The header is parsed and
    checked (:func:`parse_header`) before any tensor is read; safetensors itself checks that
    the declared tensor sizes match the bytes in the file.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: naming ``path`` if it is not such a file (e.g. a pickle).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(FORMAT)
            if raw is None:
                raise ValueError(f"{path}: safetensors file without pyro_fusion metadata")
            header = parse_header(raw, path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, TypeError, RuntimeError) as e:
        raise ValueError(
            f"{path}: not a pyro_fusion safetensors file ({brief(str(e), 200)}); pickles are never loaded"
        ) from None
    return tensors, header


#: the shape of a tensor of any length (a vector)
VECTOR = (None,)


def _check_tensor(t: Any, key: str, shape: Sequence[Optional[int]], dtypes: Sequence[torch.dtype], where: str) -> None:
    """Raise unless ``t`` is a tensor of one of ``dtypes`` and of ``shape`` (None entries:
    any size), finite if floating."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{where}, tensor {key!r}: a {type(t).__name__}, expected a tensor")
    if t.dtype not in dtypes:
        raise ValueError(f"{where}, tensor {key!r}: dtype {t.dtype}, expected one of {list(dtypes)}")
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        wanted = "a vector" if tuple(shape) == VECTOR else tuple("*" if d is None else d for d in shape)
        raise ValueError(f"{where}, tensor {key!r}: shape {tuple(t.shape)}, expected {wanted}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{where}, tensor {key!r}: contains NaN or inf")


def _check_keys(tensors: Mapping[str, Any], expected: Iterable[str], where: str) -> None:
    expected = set(expected)
    if set(tensors) != expected:
        missing, unexpected = expected - set(tensors), set(tensors) - expected
        raise ValueError(f"{where}: unexpected tensors (missing {_listing(missing)}, unexpected {_listing(unexpected)})")


def _read_groups(tensors: Mapping[str, torch.Tensor], header: Mapping[str, Any], where: str) -> Dict[str, Components]:
    """The validated groups of a checked header; every ``"<group>/<field>"`` tensor must be
    float32/float64 of shape ``[L, family.dim]``."""
    groups = {}
    for group, specs in header["groups"].items():
        fields = {}
        for name, spec in specs.items():
            family = _family(spec, f"field {group}/{name}", where)
            key = f"{group}/{name}"
            if key not in tensors:
                raise ValueError(f"{where}: missing tensor {key!r}")
            _check_tensor(tensors[key], key, (None, family.dim), FLOAT_DTYPES, where)
            fields[name] = (family, tensors[key])
        if not fields:
            raise ValueError(f"{where}: group {group!r} has no fields")
        try:
            groups[group] = Components(fields)
        except ValueError as e:
            raise ValueError(f"{where}, group {group!r}: {e}") from None
        groups[group].check(f"{where}, group {group!r}")
    return groups


@_briefly
def load_groups(path: str) -> Tuple[Dict[str, Components], Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    Load a file written by :func:`save_groups`: every tensor is a declared field
    (float32/float64, finite, in its family's domain) or an ``"extra/<name>"`` tensor.

    :returns: ``(groups, extra tensors, metadata)``.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: naming ``path`` if it is not such a file (e.g. a pickle).
    """
    tensors, header = read_file(path)
    fields = {f"{g}/{n}" for g, specs in header["groups"].items() for n in specs}
    unexpected = {k for k in tensors if k not in fields and not k.startswith("extra/")}
    if unexpected:
        raise ValueError(f"{path}: tensors {_listing(unexpected)} belong to no declared field")
    groups = _read_groups(tensors, header, path)
    extra = {k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")}
    return groups, extra, header["metadata"]


def save_components(components: Components, path: str, metadata: Mapping[str, Any] = None) -> None:
    """
    Save one client's components for exchange.

    Example::

        >>> from torch.distributions import Normal
        >>> comps = Components.from_distributions({"x": Normal(torch.zeros(3, 2), 1.0)})
        >>> save_components(comps, "/tmp/client0.safetensors")
        >>> len(load_components("/tmp/client0.safetensors"))
        3
    """
    save_groups(path, {"components": components}, metadata)


@_briefly
def load_components(path: str) -> Components:
    """Load and validate components saved by :func:`save_components` (see :func:`load_groups`)."""
    groups, _, _ = load_groups(path)
    if "components" not in groups:
        raise ValueError(f"{path}: holds no 'components' group (groups: {_listing(groups)})")
    return groups["components"]


#: the fields of a :class:`~pyro_fusion.fusion.FusionResult` a result record holds
RESULT_FIELDS = (
    "components", "assignments", "support", "objective", "iterations", "converged", "price", "direction", "combine"
)
#: the keys of a result's metadata
RESULT_KEYS = ("direction", "combine", "price", "iterations", "converged", "num_clients")
#: the values of ``combine`` (those of :func:`~pyro_fusion.fusion.fuse`, which this module does not import)
COMBINES = ("average", "product")


def result_record(result: Any) -> Dict[str, Any]:
    """The record of a :class:`~pyro_fusion.fusion.FusionResult` (or of a record: a copy)."""
    if isinstance(result, Mapping):
        return {name: result[name] for name in RESULT_FIELDS}
    return {name: getattr(result, name) for name in RESULT_FIELDS}


def _result_tensors(result: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    tensors = {f"assignment/{j}": a for j, a in enumerate(result["assignments"])}
    tensors["support"] = result["support"]
    tensors["objective"] = torch.tensor(result["objective"], dtype=torch.float64)
    return tensors


def _result_metadata(result: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "direction": result["direction"],
        "combine": result["combine"],
        "price": result["price"],
        "iterations": result["iterations"],
        "converged": result["converged"],
        "num_clients": len(result["assignments"]),
    }


def _result_meta(meta: Any, num_tensors: int, where: str) -> Mapping[str, Any]:
    """Checked result metadata; ``num_clients`` may not exceed the ``num_tensors`` present, so
    the tensors it implies are bounded by what was received."""
    meta = _object(meta, "result metadata", where)
    _exact_keys(meta, RESULT_KEYS, (), "result metadata", where)
    if meta["direction"] not in DIRECTIONS or meta["combine"] not in COMBINES:
        raise ValueError(f"{where}: result direction/combine ({_show(meta['direction'])}, "
                         f"{_show(meta['combine'])}), expected one of {DIRECTIONS} and of {COMBINES}")
    if meta["price"] is not None:
        _positive_number(meta["price"], "result price", where)
    _int(meta["iterations"], "result iterations", where)
    if not isinstance(meta["converged"], bool):
        raise ValueError(f"{where}: result converged must be true or false, got {_show(meta['converged'])}")
    num_clients = _int(meta["num_clients"], "result num_clients", where, minimum=1)
    if num_clients > num_tensors:
        raise ValueError(f"{where}: result declares {num_clients} clients but only {num_tensors} tensors are present")
    return meta


def _result_shapes(meta: Mapping[str, Any], width: int) -> Dict[str, Tuple[Tuple[Optional[int], ...], Tuple[torch.dtype, ...]]]:
    shapes = {f"extra/assignment/{j}": (VECTOR, (torch.int64,)) for j in range(meta["num_clients"])}
    shapes["extra/support"] = ((width,), (torch.int64,))
    shapes["extra/objective"] = (VECTOR, (torch.float64,))
    return shapes


def _read_result(where: str, components: Components, tensors: Mapping[str, torch.Tensor], meta) -> Dict[str, Any]:
    """A result record from checked metadata and tensors of the dtypes and shapes of
    :func:`_result_shapes`: each client maps its components to distinct globals in range,
    the support counts those clients and the objective is a nonempty finite vector."""
    width = len(components)
    assignments = []
    for j in range(meta["num_clients"]):
        a = tensors[f"extra/assignment/{j}"]
        if a.numel() == 0 or ((a < 0) | (a >= width)).any():
            raise ValueError(f"{where}, assignment of client {j}: global indices must lie in 0..{width - 1}")
        if torch.unique(a).numel() != a.numel():
            raise ValueError(f"{where}, assignment of client {j}: two components share a global one")
        assignments.append(a)
    support = tensors["extra/support"]
    if not torch.equal(support, torch.bincount(torch.cat(assignments), minlength=width)):
        raise ValueError(f"{where}: support does not count the clients matched to each global component")
    objective = tensors["extra/objective"]
    if objective.numel() == 0:
        raise ValueError(f"{where}: empty objective")
    return dict(
        components=components,
        assignments=assignments,
        support=support,
        objective=objective.tolist(),
        iterations=meta["iterations"],
        converged=meta["converged"],
        price=meta["price"],
        direction=meta["direction"],
        combine=meta["combine"],
    )


def save_result(result: Any, path: str) -> None:
    """Save a :class:`~pyro_fusion.fusion.FusionResult` or its record (see :meth:`FusionResult.save
    <pyro_fusion.fusion.FusionResult.save>`)."""
    record = result_record(result)
    meta = {"kind": "fusion_result", **_result_metadata(record)}
    save_groups(path, {"global": record["components"]}, meta, _result_tensors(record))


@_briefly
def load_result_record(path: str) -> Dict[str, Any]:
    """The record of a :class:`~pyro_fusion.fusion.FusionResult` saved by :func:`save_result`
    (``FusionResult(**record)`` rebuilds it; :meth:`FusionResult.load
    <pyro_fusion.fusion.FusionResult.load>` does), validated: every tensor's dtype and shape,
    finite values in their families' domains, assignments and support (see :func:`_read_result`)."""
    tensors, header = read_file(path)
    meta = header["metadata"]
    if meta.get("kind") != "fusion_result" or set(header["groups"]) != {"global"}:
        raise ValueError(f"{path}: not a saved fusion result")
    result_meta = _result_meta({k: v for k, v in meta.items() if k != "kind"}, len(tensors), path)
    shapes = _result_shapes(result_meta, 0)
    _check_keys(tensors, [f"global/{n}" for n in header["groups"]["global"]] + list(shapes), path)
    components = _read_groups(tensors, header, path)["global"]
    for key, (shape, dtypes) in _result_shapes(result_meta, len(components)).items():
        _check_tensor(tensors[key], key, shape, dtypes, path)
    return _read_result(path, components, tensors, result_meta)


#: the site layout every posterior record holds
SITE_FIELDS = ("component_dims", "simplex", "site_shapes", "sources", "site_families", "supports")
POSTERIOR_KINDS = ("guide_posterior", "fused_posterior")
#: the guide kinds a site may come from (see :class:`~pyro_fusion.readout.SiteEstimate`)
SOURCES = ("autonormal", "delta", "distribution", "transformed")
#: the metadata keys of a site layout (and ``"supports"``, absent from files of 0.1)
SITE_KEYS = ("component_dims", "simplex_axes", "site_shapes", "sources", "site_families")


def _site_metadata(record: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "component_dims": record["component_dims"],
        "simplex_axes": {n: list(axes) for n, (axes, _) in record["simplex"].items()},
        "site_shapes": {n: list(s) for n, s in record["site_shapes"].items()},
        "sources": record["sources"],
        "site_families": {n: f.spec() for n, f in record["site_families"].items()},
        "supports": dict(record["supports"]),
    }


def encode_record(record: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    A posterior record (kind ``"guide_posterior"`` or ``"fused_posterior"``, see the module
    docstring) as plain tensors and a JSON-serialisable header: the one exchange format of
    files and of :mod:`pyro_fusion.flower` messages. Inverse of :func:`decode_record`.
    """
    kind = record.get("kind")
    tensors = {f"simplex/{n}": v for n, (_, v) in record["simplex"].items()}
    groups = {} if record["shared"] is None else {"shared": record["shared"]}
    if kind == "fused_posterior":
        meta = {"kind": kind, **_site_metadata(record)}
        if record["result"] is not None:
            result = result_record(record["result"])
            meta["result"] = _result_metadata(result)
            tensors.update(_result_tensors(result))
            groups["global"] = result["components"]
    elif kind == "guide_posterior":
        meta = {"kind": kind, "weight": record["weight"], **_site_metadata(record)}
        if record["components"] is not None:
            groups["components"] = record["components"]
    else:
        raise ValueError(f"expected a record of kind {' or '.join(POSTERIOR_KINDS)}, got {kind!r}")
    return encode_groups(groups, meta, tensors)


@_briefly
def decode_record(
    tensors: Mapping[str, torch.Tensor],
    header: Mapping[str, Any],
    where: str,
    kind: Optional[str] = None,
    max_width: Optional[int] = None,
) -> Dict[str, Any]:
    """
    Validate and decode what :func:`encode_record` produced, e.g. a file or message from
    another party, into a posterior record. Checks the header (:func:`check_header`), the
    kind, that the metadata has exactly the keys of its kind with values of the right JSON
    types (``component_dims: 0.7`` is an error, not 0), that the declared fields are exactly
    those the sites need with the families the sites imply, the set of tensors (the number
    of clients of a fusion result may not exceed the tensors present), each tensor's dtype
    and shape (at most ``max_width`` components), finite values, natural parameters inside
    their family's domain, simplex values on the simplex, and assignments and support of a
    fusion result. Nothing is coerced; error messages are at most
    :data:`MAX_MESSAGE_CHARS` long.

    :param dict tensors: the tensors, keyed as by :func:`encode_groups`.
    :param dict header: the header.
    :param str where: how errors name the source (a path, ``"node 17"``, ...).
    :param str kind: ``"guide_posterior"`` or ``"fused_posterior"``; None accepts either.
    :param int max_width: the largest number of components accepted.
    :raises ValueError: naming ``where`` and the first problem found.
    """
    check_header(header, where)
    meta = header["metadata"]
    got_kind = meta.get("kind")
    if got_kind not in POSTERIOR_KINDS or (kind is not None and got_kind != kind):
        raise ValueError(f"{where}: malformed header: holds a {_show(got_kind)}, expected a {kind or 'posterior'!r}")
    if got_kind == "guide_posterior":
        _exact_keys(meta, ("kind", "weight") + SITE_KEYS, ("supports",), "metadata", where)
    else:
        _exact_keys(meta, ("kind",) + SITE_KEYS, ("supports", "result"), "metadata", where)
    sites = _read_sites(meta, where)
    specs = header["groups"]
    names = set(sites["site_shapes"])
    comp_sites = set(sites["component_dims"])
    simplex_axes = sites.pop("simplex_axes")
    shared_sites = names - comp_sites - set(simplex_axes)
    comp_group = "global" if got_kind == "fused_posterior" else "components"
    wanted = {g: s for g, s in (("shared", shared_sites), (comp_group, comp_sites)) if s}
    declared = {g: set(f) for g, f in specs.items()}
    if declared != wanted:
        raise ValueError(f"{where}: header declares fields {_sorted(declared)}, the sites need {_sorted(wanted)}")
    widths = {sites["site_shapes"][n][d] for n, d in sites["component_dims"].items()}
    if len(widths) > 1:
        raise ValueError(f"{where}: component sites disagree on the number of components {_listing(widths)}")
    width = widths.pop() if widths else 1
    if comp_sites and not 1 <= width <= (max_width or width):
        raise ValueError(f"{where}: {width} components, allowed 1..{max_width}")

    expected: Dict[str, Tuple[Tuple[Optional[int], ...], Tuple[torch.dtype, ...]]] = {}
    families: Dict[str, Dict[str, Any]] = {}
    for group, fields in specs.items():
        families[group] = {}
        for name, spec in fields.items():
            family = _family(spec, f"field {group}/{name}", where)
            want = _field_family(sites, name, group, where)
            if family != want:
                raise ValueError(f"{where}, field {group}/{name}: declared {family!r}, its site needs {want!r}")
            families[group][name] = family
            expected[f"{group}/{name}"] = ((1 if group == "shared" else width, family.dim), FLOAT_DTYPES)
    for name in simplex_axes:
        expected[f"extra/simplex/{name}"] = (tuple(sites["site_shapes"][name]), FLOAT_DTYPES)
    result_meta = None
    if "result" in meta:
        if got_kind != "fused_posterior" or not comp_sites:
            raise ValueError(f"{where}: a fusion result without component sites")
        result_meta = _result_meta(meta["result"], len(tensors), where)
        expected.update(_result_shapes(result_meta, width))
    elif got_kind == "fused_posterior" and comp_sites:
        raise ValueError(f"{where}: component sites without a fusion result")
    _check_keys(tensors, expected, where)
    for key, (shape, dtypes) in expected.items():
        _check_tensor(tensors[key], key, shape, dtypes, where)
    groups = {}
    for group, fields in families.items():
        groups[group] = Components({n: (fam, tensors[f"{group}/{n}"]) for n, fam in fields.items()})
        groups[group].check(f"{where}, group {group!r}")
    simplex = {}
    for name, axes in simplex_axes.items():
        simplex[name] = (axes, check_simplex(tensors[f"extra/simplex/{name}"], f"{where}, simplex site {name!r}"))
    sites["simplex"] = simplex
    if got_kind == "guide_posterior":
        weight = meta["weight"]
        if weight is not None:
            _positive_number(weight, "weight", where)
        return dict(
            kind=got_kind, components=groups.get("components"), shared=groups.get("shared"), weight=weight, **sites
        )
    result = None if result_meta is None else _read_result(where, groups["global"], tensors, result_meta)
    return dict(kind=got_kind, result=result, shared=groups.get("shared"), **sites)


def _read_sites(meta: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """The site layout of checked metadata: every map covers the right sites with values of
    the right JSON types (ints are ints, not floats or bools; dims inside their site's shape)."""
    maps = {key: _object(meta[key], key, where) for key in SITE_KEYS}
    names = set(maps["site_shapes"])
    if set(maps["sources"]) != names or set(maps["site_families"]) != names:
        raise ValueError(f"{where}: sources/families do not cover the sites {_listing(names)}")
    strays = (set(maps["component_dims"]) | set(maps["simplex_axes"])) - names
    both = set(maps["component_dims"]) & set(maps["simplex_axes"])
    if strays or both:
        raise ValueError(f"{where}: component_dims/simplex_axes name sites {_listing(strays | both)} "
                         "that have no shape or are listed in both")
    shapes = {n: torch.Size(_ints(s, f"site_shapes[{_show(n)}]", where)) for n, s in maps["site_shapes"].items()}
    dims = {}
    for n, d in maps["component_dims"].items():
        dims[n] = _int(d, f"component_dims[{_show(n)}]", where)
        if dims[n] >= len(shapes[n]):
            raise ValueError(f"{where}: component_dims[{_show(n)}] is {d}, its site has {len(shapes[n])} dims")
    axes = {}
    for n, a in maps["simplex_axes"].items():
        axes[n] = _ints(a, f"simplex_axes[{_show(n)}]", where)
        if not axes[n] or len(set(axes[n])) != len(axes[n]) or max(axes[n]) >= len(shapes[n]):
            raise ValueError(f"{where}: simplex_axes[{_show(n)}] must be distinct dims of its "
                             f"{len(shapes[n])}-dim site, got {list(axes[n])}")
    for n, source in maps["sources"].items():
        if not isinstance(source, str) or source not in SOURCES:
            raise ValueError(f"{where}: sources[{_show(n)}] is {_show(source)}, expected one of {SOURCES}")
    supports = _object(meta.get("supports", {}), "supports", where)
    for n, support in supports.items():
        if n not in names or not isinstance(support, str):
            raise ValueError(f"{where}: supports[{_show(n)}] is {_show(support)}, expected a site's support name")
    return {
        "component_dims": dims,
        "simplex_axes": axes,
        "site_shapes": shapes,
        "sources": dict(maps["sources"]),
        "site_families": {n: _family(s, f"site {_show(n)}", where) for n, s in maps["site_families"].items()},
        "supports": dict(supports),
    }


def _field_family(sites: Mapping[str, Any], name: str, group: str, where: str):
    """The family a field must have: the site's family with the site's other dims in its event."""
    if name not in sites["site_shapes"]:
        raise ValueError(f"{where}, field {group}/{name}: no such site")
    shape = list(sites["site_shapes"][name])
    if group != "shared":
        del shape[sites["component_dims"][name]]
    spec = sites["site_families"][name].spec()
    spec["event_shape"] = shape + list(spec["event_shape"])
    return _family(spec, f"field {group}/{name}", where)


def _sorted(groups: Mapping[str, Iterable[str]]) -> str:
    return "{" + ", ".join(f"{_show(g)}: {_listing(s)}" for g, s in sorted(groups.items())) + "}"


def save_record(record: Mapping[str, Any], path: str) -> None:
    """Save a posterior record as one safetensors file: plain tensors + JSON, readable without
    the model (see :func:`encode_record`)."""
    tensors, header = encode_record(record)
    save_file(tensors, path, metadata={FORMAT: json.dumps(header)})


@_briefly
def load_record(path: str, kind: Optional[str] = None, max_width: Optional[int] = None) -> Dict[str, Any]:
    """Load and validate a file written by :func:`save_record` (see :func:`decode_record`)."""
    tensors, header = read_file(path)
    return decode_record(tensors, header, path, kind, max_width)


#: object-level names that moved next to their classes (kept for one release)
__getattr__ = moved(
    __name__,
    {
        "encode_posterior": "pyro_fusion.posterior:encode_posterior",
        "decode_posterior": "pyro_fusion.posterior:decode_posterior",
        "save_posterior": "pyro_fusion.posterior:save_posterior",
        "load_posterior": "pyro_fusion.posterior:load_posterior",
        "load_result": "pyro_fusion.fusion:FusionResult.load",
    },
)
