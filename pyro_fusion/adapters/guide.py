"""
The adapter of any mean-field guide (:class:`~pyro.infer.autoguide.AutoNormal`,
``AutoDiagonalNormal``, ``AutoDelta``, ``AutoGuideList`` or hand-written) and its front door,
:func:`fuse_posteriors`.

- read: :func:`~pyro_fusion.readout.extract` with the ``components=``/``simplex=`` layout
  (clients that were read already, :class:`~pyro_fusion.posterior.GuidePosterior` s, pass as they are);
- match: :meth:`FusedPosterior.from_posteriors <pyro_fusion.posterior.FusedPosterior.from_posteriors>`;
- write: :meth:`FusedPosterior.to_guide <pyro_fusion.posterior.FusedPosterior.to_guide>` on the
  ``model=`` given (a hand-written guide is filled by
  :meth:`FusedPosterior.write_params <pyro_fusion.posterior.FusedPosterior.write_params>`).
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

from ..posterior import FusedPosterior, GuidePosterior, component_indexed_sites
from ..readout import extract
from .base import FusedModel, FuseSettings, FusionAdapter, Layout, front_door

__all__ = ["GuideAdapter", "fuse_posteriors"]

ModelArgs = Union[None, Sequence[Any], Callable[[int], Sequence[Any]]]


class GuideAdapter(FusionAdapter):
    """
    Fusion of trained mean-field guides (see the module docstring).

    :param dict components: component site -> the dimension that indexes components (as
        :func:`~pyro_fusion.extract`); not needed for clients already read.
    :param dict simplex: simplex site -> the dimensions indexed by components.
    :param list exclude: sites to leave out.
    :param float point_scale: scale to read point estimates with.
    :param tuple guide_args: arguments of hand-written guides when they are read.
    :param model: the global model to write the fused guide for (None: no guide).
    :param model_args: its arguments, or a function ``num_global -> arguments`` (the model
        must be sized to the global components).
    :param float simplex_concentration: see :meth:`FusedPosterior.from_posteriors
        <pyro_fusion.posterior.FusedPosterior.from_posteriors>`.
    :param prior: one prior :class:`~pyro_fusion.components.Components` (read by the
        ``"prior"`` price rule; needed by ``combine="product"``).
    :param engine_options: ``combine``, ``max_sweeps``, ``dtype`` of :func:`~pyro_fusion.fuse`.
    """

    family = "guide"

    def __init__(
        self,
        *,
        components: Optional[Mapping[str, int]] = None,
        simplex: Optional[Mapping[str, Sequence[int]]] = None,
        exclude: Sequence[str] = (),
        point_scale: Optional[float] = None,
        guide_args: Sequence[Any] = (),
        model: Optional[Callable] = None,
        model_args: ModelArgs = None,
        simplex_concentration: float = 1e-3,
        prior=None,
        **engine_options,
    ):
        super().__init__(**engine_options)
        if model_args is not None and model is None:
            raise ValueError("model_args= needs model=")
        self.components = dict(components or {})
        self.simplex = {k: tuple(v) for k, v in (simplex or {}).items()}
        self.exclude = tuple(exclude)
        self.point_scale = point_scale
        self.guide_args = tuple(guide_args)
        self.model = model
        self.model_args = model_args
        self.simplex_concentration = simplex_concentration
        self.prior = prior

    def read(self, local_models: Sequence[Any]) -> List[GuidePosterior]:
        """Read the trained guides. A site whose size follows each client's number of components
        (mixture weights not named in ``simplex=``) is read again as a simplex indexed by component
        (rebuilt after matching), when all clients are trained guides."""
        posteriors = self._read(local_models, self.simplex)
        if all(not isinstance(local, GuidePosterior) for local in local_models):
            indexed = component_indexed_sites(posteriors)
            if indexed:
                posteriors = self._read(local_models, {**self.simplex, **indexed})
        return posteriors

    def _read(self, local_models: Sequence[Any], simplex: Mapping[str, Sequence[int]]) -> List[GuidePosterior]:
        posteriors = []
        for j, local in enumerate(local_models):
            if isinstance(local, GuidePosterior):
                posteriors.append(local)
                continue
            if not callable(local):
                raise ValueError(f"client {j}: expected a trained guide or a GuidePosterior, got {type(local).__name__}")
            try:
                posteriors.append(extract(
                    local, *self.guide_args, components=self.components, simplex=simplex,
                    exclude=self.exclude, point_scale=self.point_scale,
                ))
            except ValueError as e:
                raise ValueError(f"client {j}: {e}") from None
        return posteriors

    def layout(self, local_model: Any) -> Layout:
        if isinstance(local_model, GuidePosterior):
            simplex = {name: axes for name, (axes, _) in local_model.simplex.items()}
            return Layout(dict(local_model.component_dims), simplex)
        return Layout(dict(self.components), dict(self.simplex))

    def match(self, local: List[GuidePosterior], weights, settings: FuseSettings) -> FusedPosterior:
        extra = {} if self.prior is None else {"prior": self.prior}
        return FusedPosterior.from_posteriors(
            local, weights, simplex_concentration=self.simplex_concentration, direction=settings.direction,
            num_global=settings.single("num_global"), price=settings.single("price"),
            seed=settings.seed, **extra, **self.engine_options,
        )

    def write(self, fused: FusedPosterior, local: List[GuidePosterior], settings: FuseSettings) -> FusedModel:
        guide = None
        if self.model is not None:
            args = self.model_args(fused.num_global) if callable(self.model_args) else (self.model_args or ())
            guide = fused.to_guide(self.model, *args)
        assignments = None if fused.result is None else fused.result.assignments
        return FusedModel(fused, fused.result, model=self.model, guide=guide, assignments=assignments)


fuse_posteriors = front_door(
    GuideAdapter,
    "fuse_posteriors",
    """
Fuse the clients' trained mean-field guides (or their :func:`~pyro_fusion.extract` ed
:class:`~pyro_fusion.posterior.GuidePosterior` s) into one global posterior, and with
``model=`` into a ready guide of the global model.

Example::

    >>> # posts: per client, extract(guide, data, K, components={"loc": 0}) of its trained guide
    >>> fused = fuse_posteriors(posts, model=model, model_args=lambda k: (torch.zeros(k, 2), k))
    >>> fused.num_global, fused.result.support.tolist()
    (4, [2, 2, 2, 1])
    >>> guide = fused.guide  # a FusedAutoNormal sized to fused.num_global components
    >>> loc_posterior = fused.posterior.site_distribution("loc")

:param list local_models: per client, a trained guide or a ``GuidePosterior``.
:param weights: client weights; default each posterior's ``weight`` if all have one,
    else uniform.
:param str direction: KL direction (see :func:`~pyro_fusion.fuse`).
:param int num_global: a fixed number of global components (default learned).
:param price: price of a global component: a number, a rule name of
    :func:`~pyro_fusion.fuse` or a :class:`~pyro_fusion.price.Price`; default
    :func:`~pyro_fusion.price.counterpart_price`.
:param int seed: seed of the matching.
:param bool progress: show progress bars (accepted for the common signature; reading and
    matching guides is quick).
:param family_options: :class:`GuideAdapter` options (``components``, ``simplex``,
    ``exclude``, ``point_scale``, ``guide_args``, ``model``, ``model_args``,
    ``simplex_concentration``, ``prior``, ``combine``, ``max_sweeps``, ``dtype``).
:rtype: FusedModel
""",
)
