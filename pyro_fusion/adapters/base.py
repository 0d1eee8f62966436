"""
The adapter protocol: how a model family plugs into fusion.

Every family provides three verbs (:class:`FusionAdapter`):

- :meth:`~FusionAdapter.read`: the clients' trained local models as the common posterior
  objects (a :class:`~pyro_fusion.posterior.GuidePosterior`, or
  :class:`~pyro_fusion.components.Components` plus the family's extras);
- :meth:`~FusionAdapter.layout`: the component layout it fuses over (:class:`Layout`);
- :meth:`~FusionAdapter.write`: the fused posterior written back into a model of the fused
  size (:class:`FusedModel`).

:meth:`FusionAdapter.fuse` runs them in order around the matching step (:meth:`~FusionAdapter.match`,
by default :func:`~pyro_fusion.fusion.fuse` on the read components). The front doors
(:func:`~pyro_fusion.fuse_posteriors`, :func:`~pyro_fusion.fuse_gmms`,
:func:`~pyro_fusion.fuse_hmms`, :func:`~pyro_fusion.fuse_lda`, :func:`~pyro_fusion.fuse_mlps`)
share one signature, ``(local_models, weights=None, *, direction, num_global=None, price=None,
seed=0, progress=False, **family_options)``: the family options configure the adapter, the
rest is :class:`FuseSettings`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch

from ..cost import check_direction
from ..deprecation import warn
from ..fusion import FusionResult, fuse
from ..price import Price

__all__ = ["ENGINE_OPTIONS", "FuseSettings", "FusedModel", "FusionAdapter", "Layout", "Price", "front_door"]

#: options of :func:`~pyro_fusion.fusion.fuse` every adapter passes through unchanged
ENGINE_OPTIONS = ("combine", "max_sweeps", "dtype")


@dataclass(frozen=True)
class Layout:
    """
    The component layout a family fuses over: which latent sites hold the exchangeable
    components (and along which dimension), which are simplexes indexed by components (rebuilt
    after matching), and in which matching stage each component site is (neural networks are
    matched layer by layer; every other family has one stage, 0).

    Example::

        >>> Layout({"locs": 0, "scales": 0}, simplex={"weights": (0,)}).extract_kwargs()
        {'components': {'locs': 0, 'scales': 0}, 'simplex': {'weights': [0]}}

    :param dict components: site -> the dimension of its value that indexes components.
    :param dict simplex: site -> the dimensions of its value indexed by components.
    :param dict stages: component site -> its matching stage (default 0).
    """

    components: Mapping[str, int]
    simplex: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)
    stages: Mapping[str, int] = field(default_factory=dict)

    def extract_kwargs(self) -> Dict[str, Any]:
        """The ``components=``/``simplex=`` arguments of :func:`~pyro_fusion.extract` (and of
        :func:`pyro_fusion.flower.reply`) for this layout."""
        return {"components": dict(self.components), "simplex": {k: list(v) for k, v in self.simplex.items()}}


PriceSetting = Union[None, float, str, Price, Sequence[Union[None, float, str, Price]]]


@dataclass(frozen=True)
class FuseSettings:
    """
    The settings every front door shares, validated once (:meth:`FusionAdapter.fuse`).

    :param str direction: ``"reverse"`` or ``"forward"`` (see :func:`~pyro_fusion.fuse`).
    :param num_global: a fixed number of global components (one per stage for networks), or None.
    :param price: see :class:`~pyro_fusion.price.Price`.
    :param int seed: seed of the matching.
    :param bool progress: show progress bars.
    """

    direction: str
    num_global: Union[None, int, Sequence[Optional[int]]] = None
    price: PriceSetting = None
    seed: int = 0
    progress: bool = False

    def __post_init__(self):
        check_direction(self.direction)
        for value in self.num_global if isinstance(self.num_global, (list, tuple)) else [self.num_global]:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"num_global must be a positive int (or None), got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a nonnegative int, got {self.seed!r}")

    def per_stage(self, name: str, num_stages: int) -> list:
        """``num_global`` or ``price`` (``name``) as one value per stage."""
        value = getattr(self, name)
        values = list(value) if isinstance(value, (list, tuple)) else [value] * num_stages
        if len(values) != num_stages:
            raise ValueError(f"{name} needs one value per stage ({num_stages}), got {len(values)}")
        return values

    def single(self, name: str):
        """``num_global`` or ``price`` (``name``) where the family has one stage."""
        value = getattr(self, name)
        if isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: one value per stage is for layer-wise families, got {value!r}")
        return value


@dataclass
class FusedModel:
    """
    What every front door returns: the fused model of the fused size, its posterior and the
    matching.

    ====================  ======================  ==========================  ==================  ==============
    front door            ``model``               ``guide`` / ``params``      ``posterior``       ``result``
    ====================  ======================  ==========================  ==================  ==============
    ``fuse_posteriors``   ``model=`` option       ``FusedAutoNormal`` if      ``FusedPosterior``  FusionResult
                                                  ``model=`` is given
    ``fuse_gmms``         ``gmm_model`` sized     ``FusedAutoNormal``         ``FusedPosterior``  FusionResult
    ``fuse_hmms``         ``gaussian_hmm_model``  ``params``: ``HMMParams``   site -> Normal      FusionResult
    ``fuse_lda``          ``LDA``                 its guide                   site -> topics      FusionResult
    ``fuse_mlps``         ``BayesianMLP``         AutoNormal / AutoDelta      site -> Normal      one per layer
    ====================  ======================  ==========================  ==================  ==============

    :ivar posterior: the fused posterior (see the table).
    :ivar result: the :class:`~pyro_fusion.fusion.FusionResult` (a list, one per layer, for
        networks).
    :ivar model: the fused model, sized to the global components.
    :ivar guide: a guide of ``model`` holding the fused posterior, or None.
    :ivar params: point parameters (HMM), or None.
    :ivar list assignments: per client, LongTensor over all its local components: the global
        index of each, ``-1`` for components left out (pruned HMM states); for networks one
        such list per hidden layer.
    """

    posterior: Any
    result: Union[FusionResult, List[FusionResult], None]
    model: Any = None
    guide: Any = None
    params: Any = None
    assignments: Optional[list] = None
    #: the return value of the front door before 0.2, for deprecated tuple unpacking
    legacy: Optional[tuple] = field(default=None, repr=False, compare=False)

    @property
    def num_global(self) -> Union[int, List[int]]:
        """Number of global components (one per hidden layer for networks)."""
        if isinstance(self.result, list):
            return [r.num_global for r in self.result]
        return 0 if self.result is None else self.result.num_global

    def __iter__(self):
        if self.legacy is None:
            raise TypeError("a FusedModel is not a tuple: use its attributes (.model, .result, ...)")
        warn("unpacking the result of a fuse_* function", "its attributes (.model, .guide, .posterior, .result)")
        return iter(self.legacy)

    # ----- deprecated attributes (kept for one release) ---------------------------------
    _RENAMED = {"num_states": "num_global", "results": "result"}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in {f.name for f in dataclasses.fields(self)}:
            raise AttributeError(name)
        if name in self._RENAMED:
            warn(f"FusedModel.{name}", f"FusedModel.{self._RENAMED[name]}")
            return getattr(self, self._RENAMED[name])
        if name == "states" and self.assignments is not None and not isinstance(self.result, list):
            warn("FusedModel.states", "FusedModel.assignments (states kept: assignments >= 0)")
            return [(a >= 0).nonzero().squeeze(-1) for a in self.assignments]
        posterior = self.__dict__.get("posterior")
        if posterior is not None and not isinstance(posterior, Mapping) and hasattr(posterior, name):
            warn(f"FusedModel.{name}", f"FusedModel.posterior.{name}")
            return getattr(posterior, name)
        raise AttributeError(f"'FusedModel' object has no attribute {name!r}")


class FusionAdapter(ABC):
    """
    Base class of the model-family adapters: configuration (the family options) in
    ``__init__``, the work in :meth:`fuse`. A new family subclasses it and provides
    :meth:`read`, :meth:`layout` and :meth:`write` (and :meth:`match` if it does not fuse one
    set of components).

    :param engine_options: passed to :func:`~pyro_fusion.fuse` (``combine``, ``max_sweeps``,
        ``dtype``; see :data:`ENGINE_OPTIONS`).
    """

    #: the family's name in messages
    family: str = "model"
    #: the KL direction when the caller passes none (listed in the README's table)
    direction: str = "reverse"

    def __init__(self, **engine_options):
        unknown = set(engine_options) - set(ENGINE_OPTIONS)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown options {sorted(unknown)}")
        self.engine_options = engine_options

    @abstractmethod
    def read(self, local_models: Sequence[Any]) -> List[Any]:
        """The clients' trained local models as posterior objects, one per client (errors name
        the client)."""

    @abstractmethod
    def layout(self, local_model: Any) -> Layout:
        """The component layout of one local model."""

    @abstractmethod
    def write(self, fused: Any, local: List[Any], settings: FuseSettings) -> FusedModel:
        """The fused posterior (what :meth:`match` returned) in a model of the fused size."""

    def match(self, local: List[Any], weights, settings: FuseSettings) -> Any:
        """Match and average the clients' read posteriors (default: :func:`~pyro_fusion.fuse`
        on their :class:`~pyro_fusion.components.Components`)."""
        return fuse(
            local, weights, direction=settings.direction, num_global=settings.single("num_global"),
            price=settings.single("price"), seed=settings.seed,
            **self.engine_options,
        )

    @classmethod
    def old_arguments(cls, weights, price: PriceSetting, family_options: Dict[str, Any]) -> Tuple[Any, PriceSetting]:
        """Map a front door's arguments of before 0.2 to the current ones, with a warning
        (default: none to map); may move entries of ``family_options``. Returns ``(weights, price)``."""
        return weights, price

    def fuse(
        self,
        local_models: Sequence[Any],
        weights: Union[Sequence[float], torch.Tensor, None] = None,
        *,
        direction: Optional[str] = None,
        num_global: Union[None, int, Sequence[Optional[int]]] = None,
        price: PriceSetting = None,
        seed: int = 0,
        progress: bool = False,
    ) -> FusedModel:
        """
        Read, match and write: the fused model of ``local_models``.

        :param list local_models: the clients' trained models.
        :param weights: positive client weights (e.g. data sizes), uniform by default.
        :param str direction: KL direction (default the family's, :attr:`direction`).
        :param num_global: a fixed number of global components; default learned.
        :param price: see :class:`~pyro_fusion.price.Price`.
        :param int seed: seed of the matching.
        :param bool progress: show progress bars.
        """
        local_models = list(local_models)
        if not local_models:
            raise ValueError(f"fusing {self.family}s needs at least one client model")
        settings = FuseSettings(direction or self.direction, num_global, price, seed, progress)
        local = self.read(local_models)
        return self.write(self.match(local, weights, settings), local, settings)


def front_door(adapter: Type[FusionAdapter], name: str, doc: str) -> Callable[..., FusedModel]:
    """
    The front door of a family: ``name(local_models, weights=None, *, direction=<the family's>,
    num_global=None, price=None, seed=0, progress=False, **family_options)``, which configures
    ``adapter(**family_options)`` and runs :meth:`FusionAdapter.fuse`. Every front door is made
    here, so they cannot drift apart.

    :param type adapter: the family's :class:`FusionAdapter` subclass.
    :param str name: the function's name.
    :param str doc: its docstring.
    """

    def fuse_family(
        local_models: Sequence[Any],
        weights: Union[Sequence[float], torch.Tensor, None] = None,
        *,
        direction: str = adapter.direction,
        num_global: Union[None, int, Sequence[Optional[int]]] = None,
        price: PriceSetting = None,
        seed: int = 0,
        progress: bool = False,
        **family_options,
    ) -> FusedModel:
        weights, price = adapter.old_arguments(weights, price, family_options)
        return adapter(**family_options).fuse(
            local_models, weights, direction=direction, num_global=num_global, price=price, seed=seed,
            progress=progress,
        )

    fuse_family.__name__ = fuse_family.__qualname__ = name
    fuse_family.__doc__ = doc
    fuse_family.__module__ = adapter.__module__
    return fuse_family
