"""The posterior objects that guides are read into, fused as, and exchanged as.

- :class:`SiteLayout`: where the sites of a posterior live (component, simplex and shared sites).
- :class:`GuidePosterior`: one client's posterior, as read by :func:`~pyro_fusion.readout.extract`.
- :class:`FusedPosterior`: the global posterior; :meth:`~FusedPosterior.to_guide` and
  :meth:`~FusedPosterior.write_params` write it back (:mod:`pyro_fusion.writeback`).
- :meth:`FusedPosterior.from_posteriors`: match and average the per-component fields with
  :func:`~pyro_fusion.fusion.fuse`, average the shared fields with
  :func:`~pyro_fusion.barycenter.barycenter`, rebuild simplex-indexed sites.

Both posteriors convert to and from plain records (:meth:`GuidePosterior.to_record`,
:func:`posterior_from_record`), which the codec :mod:`pyro_fusion.io` turns into tensors and
a JSON header for files and Flower messages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.distributions import Distribution

from . import io, writeback
from .barycenter import barycenter
from .components import Components
from .expfam import DiagNormal, ExponentialFamily, PointMass, family_from_spec
from .components import client_weights
from .fusion import FusionResult, fuse
from .simplex import rebuild_simplex
from .supports import support_name


@dataclass
class SiteLayout:
    """
    Where the sites of a (client or fused) posterior live.

    :ivar dict component_dims: component site -> its component dimension (nonnegative).
    :ivar dict simplex: simplex-indexed site -> ``(axes indexed by component, value)``.
    :ivar dict site_shapes: site -> shape of its (unconstrained) parameters; for simplex
        sites, of its (constrained) value.
    :ivar dict sources: site -> ``"autonormal"``, ``"delta"``, ``"distribution"`` or
        ``"transformed"`` (see :class:`~pyro_fusion.readout.SiteEstimate`).
    :ivar dict site_families: site -> family of its guide distribution (batch over the shape).
    :ivar dict supports: site -> :func:`~pyro_fusion.supports.support_name` of its support
        (empty for posteriors saved before supports were recorded).
    """

    component_dims: Dict[str, int]
    simplex: Dict[str, Tuple[Tuple[int, ...], Tensor]]
    site_shapes: Dict[str, torch.Size]
    sources: Dict[str, str]
    site_families: Dict[str, ExponentialFamily]
    supports: Dict[str, str] = field(default_factory=dict)

    def check_support(self, name: str, support) -> None:
        """
        Raise :class:`ValueError` naming the site unless a model's ``support`` for site
        ``name`` is the one the clients' site had (when recorded): values fused in the
        unconstrained space of one support mean something else under another.

        :param str name: the site.
        :param Constraint support: the model site's support.
        """
        saved = self.supports.get(name)
        if saved is not None and saved != support_name(support):
            raise ValueError(
                f"site {name!r}: the model's support is {support_name(support)}, the clients' site had "
                f"{saved}; the fused values live in the unconstrained space of {saved}"
            )

    #: the record kind of a subclass (see :mod:`pyro_fusion.io`)
    kind: ClassVar[str] = ""

    def _site_record(self) -> Dict[str, Any]:
        return {"kind": self.kind, **{name: getattr(self, name) for name in io.SITE_FIELDS}}

    def save(self, path: str) -> None:
        """Save as plain tensors + JSON (safetensors; never a pickle), readable without the
        model; see :func:`save_posterior`."""
        save_posterior(self, path)

    @classmethod
    def load(cls, path: str) -> "SiteLayout":
        """Load and validate a file written by :meth:`save` (see :func:`decode_posterior`)."""
        return load_posterior(path, kind=cls.kind)


@dataclass
class GuidePosterior(SiteLayout):
    """
    One client's posterior as read by :func:`~pyro_fusion.readout.extract`.

    :ivar Components components: the per-component fields (one per component site).
    :ivar Components shared: the shared fields (one component).
    :ivar float weight: the client's weight (e.g. its number of data points) or None.
    """

    components: Optional[Components] = None
    shared: Optional[Components] = None
    weight: Optional[float] = None

    kind: ClassVar[str] = "guide_posterior"

    @property
    def num_components(self) -> int:
        return 0 if self.components is None else len(self.components)

    def to_record(self) -> Dict[str, Any]:
        """The plain record :mod:`pyro_fusion.io` encodes (kind ``"guide_posterior"``)."""
        return dict(components=self.components, shared=self.shared, weight=self.weight, **self._site_record())


@dataclass
class FusedPosterior(SiteLayout):
    """
    The global posterior: fused component sites, shared sites and simplex sites
    (simplex values are the rebuilt global ones, site shapes those of the global model).

    :ivar FusionResult result: matching and fused components (None without component sites).
    :ivar Components shared: fused shared sites (one component), or None.
    """

    result: Optional[FusionResult] = None
    shared: Optional[Components] = None

    kind: ClassVar[str] = "fused_posterior"

    @property
    def num_global(self) -> int:
        """Number of global components."""
        return 0 if self.result is None else self.result.num_global

    def site_field(self, name: str) -> Tuple[ExponentialFamily, Tensor]:
        """
        ``(family, natural)`` of a site in the global model: the family of the clients' guide
        distribution and natural parameters of shape ``site_shapes[name] + (family.dim,)``.
        """
        family = self.site_families[name]
        shape = tuple(self.site_shapes[name])
        if name in self.component_dims:
            dim = self.component_dims[name]
            moved = (shape[dim],) + shape[:dim] + shape[dim + 1 :]
            natural = self.result.components[name].natural.reshape(moved + (family.dim,))
            return family, natural.movedim(0, dim)
        if self.shared is not None and name in self.shared.fields:
            return family, self.shared[name].natural.reshape(shape + (family.dim,))
        raise KeyError(f"site {name!r} has no fused natural parameters (simplex sites: {list(self.simplex)})")

    def loc_scale(self, name: str) -> Tuple[Tensor, Tensor]:
        """Unconstrained ``(loc, scale)`` of a site read from AutoNormal, AutoDiagonalNormal or AutoDelta."""
        family, natural = self.site_field(name)
        if isinstance(family, DiagNormal):
            return family.loc_scale(natural)
        if isinstance(family, PointMass):
            value = family.value(natural)
            return value, torch.full_like(value, family.scale)
        raise ValueError(f"site {name!r} came from a hand-written guide's {family.name} distribution")

    def site_distribution(self, name: str) -> Distribution:
        """The fused distribution of a site, in the space the clients' guides used
        (unconstrained for autoguides), with batch shape ``site_shapes[name]``."""
        family, natural = self.site_field(name)
        return family.distribution(natural)

    def to_guide(self, model: Callable, *args, init_scale: float = 0.1, **kwargs) -> "writeback.FusedAutoNormal":
        """
        A ready :class:`~pyro_fusion.writeback.FusedAutoNormal` for ``model(*args, **kwargs)``
        (sized to :attr:`num_global` components) whose locs and scales are the fused values;
        see :func:`~pyro_fusion.writeback.fused_guide`.
        """
        return writeback.fused_guide(self, model, *args, init_scale=init_scale, **kwargs)

    def write_params(self, guide: Callable, *args, **kwargs) -> Dict[str, Dict[str, str]]:
        """
        Fill a hand-written guide's parameters with the fused values (every site checked
        before any is written); see :func:`~pyro_fusion.writeback.write_params`.

        Example::

            >>> fused.posterior.write_params(handwritten_guide, torch.zeros(4, 2), K=fused.num_global)
            {'loc': {'loc': 'loc_loc', 'scale': 'loc_scale'}}
        """
        return writeback.write_params(self, guide, *args, **kwargs)

    def to_record(self) -> Dict[str, Any]:
        """The plain record :mod:`pyro_fusion.io` encodes (kind ``"fused_posterior"``)."""
        result = None if self.result is None else io.result_record(self.result)
        return dict(result=result, shared=self.shared, **self._site_record())

    @classmethod
    def from_posteriors(
        cls,
        posteriors: Sequence[GuidePosterior],
        weights: Optional[Sequence[float]] = None,
        *,
        simplex_concentration: float = 1e-3,
        **fuse_kwargs,
    ) -> "FusedPosterior":
        """
        Fuse clients' extracted guides into one global posterior: the matching step of
        :func:`~pyro_fusion.fuse_posteriors` (which returns it as ``.posterior`` of a
        :class:`~pyro_fusion.adapters.base.FusedModel`).

        Example::

            >>> fused = FusedPosterior.from_posteriors(posts, direction="reverse")
            >>> fused.num_global, [a.tolist() for a in fused.result.assignments]
            (4, [[0, 1, 2, 3], [0, 1, 2]])
            >>> guide = fused.to_guide(model, torch.zeros(4, 2), K=fused.num_global)

        :param list posteriors: one :class:`GuidePosterior` per client.
        :param weights: client weights; default each posterior's ``weight`` if all have one,
            else uniform.
        :param float simplex_concentration: pseudo-count of simplex entries no client saw, in
            units of one (average-weight) client's probability mass (see
            :func:`~pyro_fusion.simplex.rebuild_simplex`).
        :param fuse_kwargs: passed to :func:`~pyro_fusion.fusion.fuse` (``direction``,
            ``num_global``, ``price``, ``prior``, ``combine``, ``seed``, ...).
        """
        posteriors = list(posteriors)
        if not posteriors:
            raise ValueError("fusing posteriors needs at least one client")
        for name, axes in component_indexed_sites(posteriors).items():
            sizes = [tuple(_value_shape(p, name)[a] for a in axes) for p in posteriors]
            raise ValueError(
                f"site {name!r} has one entry per component along dimension(s) {list(axes)} (clients' sizes "
                f"{sizes}, their numbers of components {[p.num_components for p in posteriors]}): a simplex "
                f"indexed by component is rebuilt after matching, not averaged; read it with "
                f"extract(..., simplex={{{name!r}: {list(axes)}}}) (or fuse the trained guides themselves: "
                f"fuse_posteriors does this), or leave it out with exclude=[{name!r}]"
            )
        ref = posteriors[0]
        for j, p in enumerate(posteriors):
            if set(p.simplex) != set(ref.simplex):
                raise ValueError(f"client {j}: simplex sites {sorted(p.simplex)} differ from client 0's")
            for attr in ("component_dims", "sources", "site_families", "supports"):
                # simplex sites are rebuilt in the global index space: their sizes follow the client's
                mine, theirs = ({k: v for k, v in getattr(q, attr).items() if k not in ref.simplex} for q in (p, ref))
                if mine != theirs:
                    raise ValueError(f"client {j}: {attr} {mine} differ from client 0's {theirs}")
            for name, shape in p.site_shapes.items():
                if name in ref.component_dims or name in ref.simplex:
                    continue
                if shape != ref.site_shapes[name]:
                    raise ValueError(
                        f"client {j}, site {name!r}: shape {tuple(shape)} differs from client 0's "
                        f"{tuple(ref.site_shapes[name])}"
                    )
        if weights is None and all(p.weight is not None for p in posteriors):
            weights = [p.weight for p in posteriors]
        w = client_weights(weights, len(posteriors))

        result = None
        if ref.components is not None:
            result = fuse([p.components for p in posteriors], w, **fuse_kwargs)
        elif ref.simplex:
            raise ValueError("simplex-indexed sites need component sites to be matched")
        shared = None
        if ref.shared is not None:
            stacked = Components(
                {
                    n: (f.family, torch.cat([p.shared[n].natural for p in posteriors]))
                    for n, f in ref.shared.fields.items()
                }
            )
            for j, p in enumerate(posteriors):
                p.shared.check(f"client {j}")
            shared = barycenter(stacked, w, direction=fuse_kwargs.get("direction", "reverse"))
        simplex = {}
        for name, (axes, _) in ref.simplex.items():
            values = [p.simplex[name][1] for p in posteriors]
            simplex[name] = (
                axes, rebuild_simplex(values, axes, result.assignments, w, result.num_global, simplex_concentration)
            )
        shapes = {}
        for name, shape in ref.site_shapes.items():
            shape = list(shape)
            if name in ref.component_dims:
                shape[ref.component_dims[name]] = result.num_global
            elif name in simplex:
                shape = simplex[name][1].shape
            shapes[name] = torch.Size(shape)
        families = dict(ref.site_families)
        for name, (_, value) in simplex.items():
            event = len(families[name].event_shape)  # a rebuilt simplex has the global size
            if event:
                families[name] = family_from_spec({**families[name].spec(), "event_shape": list(value.shape[-event:])})
        return cls(
            component_dims=dict(ref.component_dims),
            simplex=simplex,
            site_shapes=shapes,
            sources=dict(ref.sources),
            site_families=families,
            supports=dict(ref.supports),
            result=result,
            shared=shared,
        )


def component_indexed_sites(posteriors: Sequence[GuidePosterior]) -> Dict[str, Tuple[int, ...]]:
    """
    Shared sites (neither component nor simplex sites) that are indexed by component: their shapes
    differ across clients, and along these dimensions each client's size is its number of components
    (mixture weights read without ``simplex=``). Such a site cannot be averaged; it is rebuilt after
    matching when read with ``simplex={name: dims}``.

    Example::

        >>> from pyro_fusion import extract
        >>> def guide(K):
        ...     with pyro.plate("components", K):
        ...         pyro.sample("loc", dist.Normal(torch.zeros(K), 1.0))
        ...     pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
        >>> posts = [extract(guide, K, components={"loc": 0}) for K in (2, 3)]
        >>> component_indexed_sites(posts)
        {'weights': (0,)}

    :param list posteriors: the clients' posteriors.
    :returns: site -> the dimensions indexed by component.
    """
    found = {}
    sizes = [p.num_components for p in posteriors]
    if not all(p.components is not None for p in posteriors) or len(set(sizes)) < 2:
        return found  # equal numbers of components: shapes cannot tell a component axis apart
    for name in posteriors[0].site_shapes:
        if name in posteriors[0].component_dims or name in posteriors[0].simplex:
            continue
        shapes = [_value_shape(p, name) for p in posteriors]  # batch + event dimensions
        if any(s is None or len(s) != len(shapes[0]) for s in shapes) or len(set(shapes)) < 2:
            continue
        axes = tuple(a for a in range(len(shapes[0])) if all(s[a] == k for s, k in zip(shapes, sizes)))
        if axes:
            found[name] = axes
    return found


def _value_shape(post: GuidePosterior, name: str) -> Optional[Tuple[int, ...]]:
    if name not in post.site_shapes or name not in post.site_families:
        return None
    return tuple(post.site_shapes[name]) + tuple(post.site_families[name].event_shape)


Posterior = Union[GuidePosterior, FusedPosterior]


def posterior_from_record(record: Mapping[str, Any]) -> Posterior:
    """The :class:`GuidePosterior` or :class:`FusedPosterior` of a record (see :mod:`pyro_fusion.io`)."""
    fields = {k: v for k, v in record.items() if k != "kind"}
    if record["kind"] == "guide_posterior":
        return GuidePosterior(**fields)
    if fields["result"] is not None:
        fields["result"] = FusionResult(**fields["result"])
    return FusedPosterior(**fields)


def encode_posterior(post: Posterior) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """
    A :class:`GuidePosterior` or :class:`FusedPosterior` (or the
    :class:`~pyro_fusion.adapters.base.FusedModel` holding it) as plain tensors and a
    JSON-serialisable header (:func:`pyro_fusion.io.encode_record`): the one exchange format
    of files and of :mod:`pyro_fusion.flower` messages. Inverse of :func:`decode_posterior`.
    """
    post = getattr(post, "posterior", post)
    if not isinstance(post, (GuidePosterior, FusedPosterior)):
        raise ValueError(f"expected a GuidePosterior or FusedPosterior, got {type(post).__name__}")
    return io.encode_record(post.to_record())


def decode_posterior(
    tensors: Mapping[str, Tensor],
    header: Mapping[str, Any],
    where: str,
    kind: Optional[str] = None,
    max_width: Optional[int] = None,
) -> Posterior:
    """
    Validate and decode what :func:`encode_posterior` produced, e.g. a file or message from
    another party (every check of :func:`pyro_fusion.io.decode_record`; nothing is coerced).

    :param dict tensors: the tensors, keyed as by :func:`pyro_fusion.io.encode_groups`.
    :param dict header: the header.
    :param str where: how errors name the source (a path, ``"node 17"``, ...).
    :param str kind: ``"guide_posterior"`` or ``"fused_posterior"``; None accepts either.
    :param int max_width: the largest number of components accepted.
    :raises ValueError: naming ``where`` and the first problem found.
    """
    return posterior_from_record(io.decode_record(tensors, header, where, kind, max_width))


def save_posterior(post: Posterior, path: str) -> None:
    """
    Save a client's :class:`GuidePosterior` or a :class:`FusedPosterior` (or the
    :class:`~pyro_fusion.adapters.base.FusedModel` holding it): plain tensors + JSON, readable
    without the model (see :func:`encode_posterior`).
    """
    post = getattr(post, "posterior", post)
    if not isinstance(post, (GuidePosterior, FusedPosterior)):
        raise ValueError(f"expected a GuidePosterior or FusedPosterior, got {type(post).__name__}")
    io.save_record(post.to_record(), path)


def load_posterior(path: str, kind: str = "guide_posterior", max_width: Optional[int] = None) -> Posterior:
    """Load and validate a file written by :func:`save_posterior` (see :func:`decode_posterior`)."""
    return posterior_from_record(io.load_record(path, kind, max_width))
