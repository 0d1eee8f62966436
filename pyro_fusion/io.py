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
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .components import Components
from .deprecation import moved
from .expfam import family_from_spec

FORMAT = "pyro_fusion"
VERSION = 1


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


def read_file(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    The tensors and header of a pyro_fusion safetensors file.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: naming ``path`` if it is not such a file (e.g. a pickle).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(FORMAT)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"{path}: not a pyro_fusion safetensors file ({e}); pickles are never loaded"
        ) from None
    if raw is None:
        raise ValueError(f"{path}: safetensors file without pyro_fusion metadata")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata is not JSON ({e})") from None
    _check_version(header, path)
    return tensors, header


def _check_version(header: Any, where: str) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        got = (header.get("format"), header.get("version")) if isinstance(header, dict) else header
        raise ValueError(f"{where}: unsupported format/version {got}, expected {FORMAT}/{VERSION}")


def load_groups(path: str) -> Tuple[Dict[str, Components], Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    Load a file written by :func:`save_groups`.

    :returns: ``(groups, extra tensors, metadata)``.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: naming ``path`` if it is not such a file (e.g. a pickle).
    """
    tensors, header = read_file(path)
    try:
        groups = {}
        for group, specs in header["groups"].items():
            groups[group] = Components(
                {name: (family_from_spec(spec), tensors[f"{group}/{name}"]) for name, spec in specs.items()}
            )
            groups[group].check(f"{path}, group {group!r}")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{path}: malformed pyro_fusion file: {e}") from None
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


def load_components(path: str) -> Components:
    """Load components saved by :func:`save_components`."""
    groups, _, _ = load_groups(path)
    if "components" not in groups:
        raise ValueError(f"{path}: holds no 'components' group (groups: {sorted(groups)})")
    return groups["components"]


#: the fields of a :class:`~pyro_fusion.fusion.FusionResult` a result record holds
RESULT_FIELDS = (
    "components", "assignments", "support", "objective", "iterations", "converged", "price", "direction", "combine"
)


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


def _read_result(path: str, components: Components, extra, meta) -> Dict[str, Any]:
    try:
        assignments = [extra[f"assignment/{j}"] for j in range(meta["num_clients"])]
        return dict(
            components=components,
            assignments=assignments,
            support=extra["support"],
            objective=extra["objective"].tolist(),
            iterations=int(meta["iterations"]),
            converged=bool(meta["converged"]),
            price=meta["price"],
            direction=meta["direction"],
            combine=meta["combine"],
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed fusion result, missing {e}") from None


def save_result(result: Any, path: str) -> None:
    """Save a :class:`~pyro_fusion.fusion.FusionResult` or its record (see :meth:`FusionResult.save
    <pyro_fusion.fusion.FusionResult.save>`)."""
    record = result_record(result)
    meta = {"kind": "fusion_result", **_result_metadata(record)}
    save_groups(path, {"global": record["components"]}, meta, _result_tensors(record))


def load_result_record(path: str) -> Dict[str, Any]:
    """The record of a :class:`~pyro_fusion.fusion.FusionResult` saved by :func:`save_result`
    (``FusionResult(**record)`` rebuilds it; :meth:`FusionResult.load
    <pyro_fusion.fusion.FusionResult.load>` does)."""
    groups, extra, meta = load_groups(path)
    if meta.get("kind") != "fusion_result" or "global" not in groups:
        raise ValueError(f"{path}: not a saved fusion result")
    return _read_result(path, groups["global"], extra, meta)


_FLOATS = (torch.float32, torch.float64)


#: the site layout every posterior record holds
SITE_FIELDS = ("component_dims", "simplex", "site_shapes", "sources", "site_families")
POSTERIOR_KINDS = ("guide_posterior", "fused_posterior")


def _site_metadata(record: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "component_dims": record["component_dims"],
        "simplex_axes": {n: list(axes) for n, (axes, _) in record["simplex"].items()},
        "site_shapes": {n: list(s) for n, s in record["site_shapes"].items()},
        "sources": record["sources"],
        "site_families": {n: f.spec() for n, f in record["site_families"].items()},
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
    return encode_groups(groups, meta, tensors)


def decode_record(
    tensors: Mapping[str, torch.Tensor],
    header: Mapping[str, Any],
    where: str,
    kind: Optional[str] = None,
    max_width: Optional[int] = None,
) -> Dict[str, Any]:
    """
    Validate and decode what :func:`encode_record` produced, e.g. a file or message from
    another party, into a posterior record. Checks the format and version, the kind, that the declared fields are
    exactly those the sites need with the families the sites imply, the set of tensors,
    each tensor's dtype and shape (at most ``max_width`` components), finite values,
    natural parameters inside their family's domain, nonnegative simplex values and global
    indices in range. Nothing is coerced.

    :param dict tensors: the tensors, keyed as by :func:`encode_groups`.
    :param dict header: the header.
    :param str where: how errors name the source (a path, ``"node 17"``, ...).
    :param str kind: ``"guide_posterior"`` or ``"fused_posterior"``; None accepts either.
    :param int max_width: the largest number of components accepted.
    :raises ValueError: naming ``where`` and the first problem found.
    """
    _check_version(header, where)
    try:
        meta = header["metadata"]
        got_kind = meta.get("kind")
        if got_kind not in POSTERIOR_KINDS or (kind is not None and got_kind != kind):
            raise ValueError(f"holds a {got_kind!r}, expected a {kind or 'posterior'!r}")
        sites = _read_sites(meta)
        specs = header["groups"]
        result_meta = meta.get("result")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{where}: malformed header: {e}") from None
    names = set(sites["site_shapes"])
    if set(sites["sources"]) != names or set(sites["site_families"]) != names:
        raise ValueError(f"{where}: sources/families do not cover the sites {sorted(names)}")
    comp_sites = set(sites["component_dims"])
    simplex_axes = sites.pop("simplex_axes")
    shared_sites = names - comp_sites - set(simplex_axes)
    comp_group = "global" if got_kind == "fused_posterior" else "components"
    wanted = {g: s for g, s in (("shared", shared_sites), (comp_group, comp_sites)) if s}
    declared = {g: set(f) for g, f in specs.items()} if isinstance(specs, dict) else specs
    if declared != wanted:
        raise ValueError(f"{where}: header declares fields {_sorted(declared)}, the sites need {_sorted(wanted)}")
    widths = {sites["site_shapes"][n][d] for n, d in sites["component_dims"].items()
              if 0 <= d < len(sites["site_shapes"][n])}
    if len(widths) != (1 if comp_sites else 0):
        raise ValueError(f"{where}: component sites disagree on the number of components {sorted(widths)}")
    width = widths.pop() if widths else 1
    if comp_sites and not 1 <= width <= (max_width or width):
        raise ValueError(f"{where}: {width} components, allowed 1..{max_width}")

    expected: Dict[str, Tuple[Optional[Tuple[int, ...]], Tuple[torch.dtype, ...]]] = {}
    families: Dict[str, Dict[str, Any]] = {}
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
            expected[f"{group}/{name}"] = ((1 if group == "shared" else width, family.dim), _FLOATS)
    for name in simplex_axes:
        expected[f"extra/simplex/{name}"] = (tuple(sites["site_shapes"][name]), _FLOATS)
    if result_meta is not None:
        num_clients = result_meta.get("num_clients") if isinstance(result_meta, dict) else None
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"{where}: malformed fusion result metadata")
        for j in range(num_clients):
            expected[f"extra/assignment/{j}"] = (None, (torch.int64,))
        expected["extra/support"] = ((width,), (torch.int64,))
        expected["extra/objective"] = (None, (torch.float64,))
    if set(tensors) != set(expected):
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"{where}: unexpected tensors (missing {missing}, unexpected {unexpected})")
    for key, (shape, dtypes) in expected.items():
        t = tensors[key]
        if t.dtype not in dtypes:
            raise ValueError(f"{where}, tensor {key!r}: dtype {t.dtype}, expected one of {list(dtypes)}")
        if (shape is None and t.dim() != 1) or (shape is not None and tuple(t.shape) != tuple(shape)):
            raise ValueError(f"{where}, tensor {key!r}: shape {tuple(t.shape)}, expected {shape or 'a vector'}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{where}, tensor {key!r}: contains NaN or inf")
    groups = {}
    for group, fields in families.items():
        groups[group] = Components({n: (fam, tensors[f"{group}/{n}"]) for n, fam in fields.items()})
        groups[group].check(f"{where}, group {group!r}")
    for name, axes in simplex_axes.items():
        value = tensors[f"extra/simplex/{name}"]
        if (value < 0).any():
            raise ValueError(f"{where}, simplex site {name!r}: negative probabilities")
        sites.setdefault("simplex", {})[name] = (axes, value)
    sites.setdefault("simplex", {})
    for j in range(result_meta["num_clients"] if result_meta is not None else 0):
        a = tensors[f"extra/assignment/{j}"]
        if ((a < 0) | (a >= width)).any():
            raise ValueError(f"{where}, assignment of client {j}: global indices outside 0..{width - 1}")
    if got_kind == "guide_posterior":
        weight = meta.get("weight")
        if weight is not None and not (isinstance(weight, (int, float)) and weight > 0):
            raise ValueError(f"{where}: weight must be a positive number, got {weight!r}")
        return dict(
            kind=got_kind, components=groups.get("components"), shared=groups.get("shared"), weight=weight, **sites
        )
    result = None
    if result_meta is not None:
        extra = {k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")}
        result = _read_result(where, groups["global"], extra, result_meta)
    return dict(kind=got_kind, result=result, shared=groups.get("shared"), **sites)


def _read_sites(meta: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "component_dims": {n: int(d) for n, d in meta["component_dims"].items()},
        "simplex_axes": {n: tuple(int(a) for a in axes) for n, axes in meta["simplex_axes"].items()},
        "site_shapes": {n: torch.Size(s) for n, s in meta["site_shapes"].items()},
        "sources": dict(meta["sources"]),
        "site_families": {n: family_from_spec(s) for n, s in meta["site_families"].items()},
    }


def _field_family(sites: Mapping[str, Any], name: str, group: str):
    """The family a field must have: the site's family with the site's other dims in its event."""
    shape = list(sites["site_shapes"][name])
    if group != "shared":
        del shape[sites["component_dims"][name]]
    spec = sites["site_families"][name].spec()
    spec["event_shape"] = shape + list(spec["event_shape"])
    return family_from_spec(spec)


def _sorted(groups) -> Any:
    return {g: sorted(s) for g, s in sorted(groups.items())} if isinstance(groups, dict) else groups


def save_record(record: Mapping[str, Any], path: str) -> None:
    """Save a posterior record as one safetensors file: plain tensors + JSON, readable without
    the model (see :func:`encode_record`)."""
    tensors, header = encode_record(record)
    save_file(tensors, path, metadata={FORMAT: json.dumps(header)})


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
