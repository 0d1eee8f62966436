"""Exchange files: plain tensors in safetensors plus JSON metadata. Nothing is ever unpickled.

A file holds named groups of :class:`~pyro_fusion.components.Components` (tensor keys
``"<group>/<field>"``) and one JSON metadata string describing the families, so it can be
read without the model that produced it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .components import Components
from .expfam import family_from_spec

FORMAT = "pyro_fusion"
VERSION = 1


def save_groups(
    path: str, groups: Mapping[str, Components], metadata: Mapping[str, Any] = None,
    tensors: Mapping[str, torch.Tensor] = None,
) -> None:
    """
    Save groups of components (and optional extra tensors) as one safetensors file.

    :param str path: file to write.
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
    header = {"format": FORMAT, "version": VERSION, "groups": fields, "metadata": dict(metadata or {})}
    save_file(out, path, metadata={FORMAT: json.dumps(header)})


def load_groups(path: str) -> Tuple[Dict[str, Components], Dict[str, torch.Tensor], Dict[str, Any]]:
    """
    Load a file written by :func:`save_groups`.

    :returns: ``(groups, extra tensors, metadata)``.
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
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"unsupported format/version {header.get('format')}/{header.get('version')}")
        groups = {}
        for group, specs in header["groups"].items():
            groups[group] = Components(
                {name: (family_from_spec(spec), tensors[f"{group}/{name}"]) for name, spec in specs.items()}
            )
            groups[group].check(f"{path}, group {group!r}")
    except (KeyError, TypeError, json.JSONDecodeError, ValueError) as e:
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


def _result_tensors(result) -> Dict[str, torch.Tensor]:
    tensors = {f"assignment/{j}": a for j, a in enumerate(result.assignments)}
    tensors["support"] = result.support
    tensors["objective"] = torch.tensor(result.objective, dtype=torch.float64)
    return tensors


def _result_metadata(result) -> Dict[str, Any]:
    return {
        "direction": result.direction,
        "combine": result.combine,
        "price": result.price,
        "iterations": result.iterations,
        "converged": result.converged,
        "num_clients": len(result.assignments),
    }


def _read_result(path: str, components: Components, extra, meta):
    from .fusion import FusionResult

    try:
        assignments = [extra[f"assignment/{j}"] for j in range(meta["num_clients"])]
        return FusionResult(
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


def save_result(result, path: str) -> None:
    """Save a :class:`~pyro_fusion.fusion.FusionResult` (see :meth:`FusionResult.save`)."""
    meta = {"kind": "fusion_result", **_result_metadata(result)}
    save_groups(path, {"global": result.components}, meta, _result_tensors(result))


def load_result(path: str):
    """Load a :class:`~pyro_fusion.fusion.FusionResult` saved by :func:`save_result`."""
    groups, extra, meta = load_groups(path)
    if meta.get("kind") != "fusion_result" or "global" not in groups:
        raise ValueError(f"{path}: not a saved fusion result")
    return _read_result(path, groups["global"], extra, meta)


def _site_metadata(post) -> Dict[str, Any]:
    return {
        "component_dims": post.component_dims,
        "simplex_axes": {n: list(axes) for n, (axes, _) in post.simplex.items()},
        "site_shapes": {n: list(s) for n, s in post.site_shapes.items()},
        "sources": post.sources,
        "site_families": {n: f.spec() for n, f in post.site_families.items()},
    }


def _read_sites(path: str, extra, meta) -> Dict[str, Any]:
    try:
        return {
            "component_dims": {n: int(d) for n, d in meta["component_dims"].items()},
            "simplex": {
                n: (tuple(axes), extra[f"simplex/{n}"]) for n, axes in meta["simplex_axes"].items()
            },
            "site_shapes": {n: torch.Size(s) for n, s in meta["site_shapes"].items()},
            "sources": dict(meta["sources"]),
            "site_families": {n: family_from_spec(s) for n, s in meta["site_families"].items()},
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed site metadata: {e}") from None


def _site_groups(post, components_key: str, components) -> Dict[str, Components]:
    groups = {}
    if components is not None:
        groups[components_key] = components
    if post.shared is not None:
        groups["shared"] = post.shared
    return groups


def save_posterior(post, path: str) -> None:
    """
    Save one client's :class:`~pyro_fusion.extract.GuidePosterior` for exchange: plain
    tensors + JSON, readable without the model; see :func:`load_posterior`.
    """
    meta = {"kind": "guide_posterior", "weight": post.weight, **_site_metadata(post)}
    tensors = {f"simplex/{n}": v for n, (_, v) in post.simplex.items()}
    save_groups(path, _site_groups(post, "components", post.components), meta, tensors)


def load_posterior(path: str):
    """Load a :class:`~pyro_fusion.extract.GuidePosterior` saved by :func:`save_posterior`."""
    from .extract import GuidePosterior

    groups, extra, meta = load_groups(path)
    if meta.get("kind") != "guide_posterior":
        raise ValueError(f"{path}: not a saved client posterior (kind {meta.get('kind')!r})")
    return GuidePosterior(
        components=groups.get("components"),
        shared=groups.get("shared"),
        weight=meta.get("weight"),
        **_read_sites(path, extra, meta),
    )


def save_fused(fused, path: str) -> None:
    """Save a :class:`~pyro_fusion.fused.FusedPosterior`; see :func:`load_fused`."""
    result = fused.result
    meta = {"kind": "fused_posterior", **_site_metadata(fused)}
    tensors = {f"simplex/{n}": v for n, (_, v) in fused.simplex.items()}
    if result is not None:
        meta["result"] = _result_metadata(result)
        tensors.update(_result_tensors(result))
    save_groups(path, _site_groups(fused, "global", None if result is None else result.components), meta, tensors)


def load_fused(path: str):
    """Load a :class:`~pyro_fusion.fused.FusedPosterior` saved by :func:`save_fused`."""
    from .fused import FusedPosterior

    groups, extra, meta = load_groups(path)
    if meta.get("kind") != "fused_posterior":
        raise ValueError(f"{path}: not a saved fused posterior (kind {meta.get('kind')!r})")
    result = None
    if "result" in meta:
        if "global" not in groups:
            raise ValueError(f"{path}: fused posterior without global components")
        result = _read_result(path, groups["global"], extra, meta["result"])
    return FusedPosterior(result=result, shared=groups.get("shared"), **_read_sites(path, extra, meta))
