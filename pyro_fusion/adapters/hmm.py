"""
HMM adapter: fuse Gaussian HMMs trained separately (one per client) into one global HMM.

A hidden state is a component with two fields read from the client's
:class:`~pyro.infer.autoguide.AutoNormal` guide of
:func:`~pyro_fusion.models.hmm.gaussian_hmm_model`:

- ``loc``: the guide's Normal over the state's emission mean (``[D]``);
- ``log_scale``: the guide's Normal over the state's log emission scale (``[D]``), i.e. the
  ``scale`` site in AutoNormal's unconstrained space, where KL fusion is exact
  (see the user guide, docs/guide/method, "Exponential families and bijections").

Transition rows live on a simplex indexed by the states themselves, so they are not
matched; they are rebuilt after matching (docs/guide/method, "Sites indexed by component on
a simplex"): each client's expected transition counts ``xi_j[k, k']`` (and expected
initial-state counts) are scattered into the global state space through its assignment and
summed over clients; entries that no client saw (no client has both states) get the prior's
Dirichlet concentration instead; rows are then normalised. Fusing identical clients therefore
returns the clients' own count-based transition matrix exactly when every entry is seen.

Fusion is one-shot. :func:`refine_hmm` then runs rounds of federated EM from the fused HMM:
each client computes expected sufficient statistics of its own sequences under the global
HMM (:func:`hmm_statistics`: per-state sums, no frames) and the server re-estimates the HMM
from their sum (:func:`em_update`).
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.distributions import Normal
from tqdm.auto import tqdm

from ..components import Components
from ..deprecation import moved, rename_kwargs, warn
from ..fusion import FusionResult, fuse, price_of
from ..models.hmm import FittedHMM, HMMParams, HMMPrior, forward_backward, gaussian_hmm_model
from ..simplex import rebuild_simplex
from .base import FusedModel, FuseSettings, FusionAdapter, Layout, front_door

__all__ = [
    "HMMAdapter",
    "HMMReadout",
    "HMMStatistics",
    "em_update",
    "fuse_hmms",
    "hmm_components",
    "hmm_statistics",
    "refine_hmm",
]


def _check_counts(fit: FittedHMM, j: int) -> None:
    """Raise :class:`ValueError` naming client ``j`` and the count unless its expected counts
    are finite, nonnegative and sized to its ``K`` states (``[K]``, ``[K]``, ``[K, K]``)."""
    if not isinstance(fit, FittedHMM):
        raise ValueError(f"client {j}: expected a FittedHMM, got {type(fit).__name__}")
    k = fit.unconstrained["loc"].loc.shape[0]
    for name, shape in (("occupancy", (k,)), ("initial_counts", (k,)), ("transition_counts", (k, k))):
        counts = getattr(fit, name)
        if not isinstance(counts, torch.Tensor) or tuple(counts.shape) != shape:
            got = tuple(counts.shape) if isinstance(counts, torch.Tensor) else type(counts).__name__
            raise ValueError(f"client {j}: {name} must have shape {shape} for its {k} states, got {got}")
        if not bool((torch.isfinite(counts) & (counts >= 0)).all()):
            raise ValueError(f"client {j}: {name} must be finite and nonnegative (expected numbers of frames)")


def hmm_components(fit: FittedHMM, states: Optional[torch.Tensor] = None) -> Components:
    """
    One client's HMM states as :class:`~pyro_fusion.Components` (fields ``loc`` and
    ``log_scale``, diagonal Normals of event shape ``[D]``).

    Example::

        >>> from pyro_fusion.models.hmm import fit_gaussian_hmm
        >>> x = torch.cat([torch.randn(40, 2), torch.randn(40, 2) + 5])
        >>> fit = fit_gaussian_hmm([x], num_states=3, num_steps=30)
        >>> states = hmm_components(fit, fit.occupied(min_occupancy=5.0))
        >>> sorted(states.families)
        ['loc', 'log_scale']

    :param FittedHMM fit: a trained client model.
    :param Tensor states: LongTensor of the states to keep (default: all).
    :rtype: Components
    """
    if states is None:
        states = torch.arange(len(fit.occupancy))
    loc, scale = fit.unconstrained["loc"], fit.unconstrained["scale"]
    return Components.from_distributions(
        {
            "loc": Normal(loc.loc[states], loc.scale[states]),
            "log_scale": Normal(scale.loc[states], scale.scale[states]),
        }
    )


class HMMReadout(NamedTuple):
    """
    One client's HMM as :meth:`HMMAdapter.read` reads it: the states it keeps and what fusion
    needs of them.

    :ivar Components components: the kept states (:func:`hmm_components`).
    :ivar Tensor states: LongTensor of the kept local states.
    :ivar Tensor initial_counts: ``[S]`` expected first states, over the kept states.
    :ivar Tensor transition_counts: ``[S, S]`` expected transitions between kept states.
    :ivar int num_states: the client's number of states, kept or not.
    """

    components: Components
    states: torch.Tensor
    initial_counts: torch.Tensor
    transition_counts: torch.Tensor
    num_states: int


class HMMAdapter(FusionAdapter):
    """
    Fusion of Gaussian HMMs (:class:`~pyro_fusion.models.hmm.FittedHMM`, see the module docstring).

    States whose expected occupancy is below ``min_occupancy`` frames are pruned first
    (a generous ``num_states`` leaves some states nearly empty; they carry only the prior).
    The remaining states are matched by :func:`~pyro_fusion.fuse`; the initial distribution
    and transition matrix are rebuilt from the clients' expected counts by
    :func:`~pyro_fusion.simplex.rebuild_simplex`.

    Its default direction, ``"forward"``, minimises ``sum KL(local || global)`` with
    moment-matched globals: a global state covers the spread of its clients' states (the
    same behaviour differs between subjects by far more than one client's posterior
    uncertainty), whereas reverse-KL barycenters are as narrow as one client's posterior and
    match few states.

    The assignment problem is non-convex and the result depends on the order in which
    clients are matched, so fusion runs from ``restarts`` client orders (seeds ``seed``,
    ``seed + 1``, ...) and keeps the result with the lowest objective (the price is computed
    once, so the restarts compare).

    :param HMMPrior prior: the prior every client used (its concentrations fill unseen entries).
    :param float min_occupancy: pruning threshold, in expected frames.
    :param int restarts: number of fusion runs (random client orders).
    :param engine_options: ``combine``, ``max_sweeps``, ``dtype`` of :func:`~pyro_fusion.fuse`.
    """

    family = "HMM"
    direction = "forward"

    def __init__(
        self, *, prior: Optional[HMMPrior] = None, min_occupancy: float = 1.0, restarts: int = 10, **engine_options
    ):
        super().__init__(**engine_options)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"fuse_hmms: restarts must be >= 1, got {restarts}")
        if isinstance(min_occupancy, bool) or not isinstance(min_occupancy, (int, float)) or not min_occupancy >= 0:
            raise ValueError(f"fuse_hmms: min_occupancy must be a nonnegative number, got {min_occupancy!r}")
        if prior is not None and not isinstance(prior, HMMPrior):
            raise ValueError(f"fuse_hmms: prior must be an HMMPrior, got {type(prior).__name__}")
        self.prior = HMMPrior() if prior is None else prior
        self.min_occupancy = min_occupancy
        self.restarts = restarts

    @classmethod
    def old_arguments(cls, weights, price, family_options):
        """Before 0.2 the prior was the second positional argument: ``fuse_hmms(fits, prior)``."""
        if isinstance(weights, HMMPrior):
            warn("fuse_hmms(fits, prior)", "fuse_hmms(fits, prior=prior)", stacklevel=4)
            family_options.setdefault("prior", weights)
            weights = None
        return weights, price

    def read(self, local_models: Sequence[FittedHMM]) -> List[HMMReadout]:
        out = []
        for j, fit in enumerate(local_models):
            _check_counts(fit, j)
            kept = fit.occupied(self.min_occupancy)
            if kept.numel() == 0:
                raise ValueError(f"client {j}: no state has expected occupancy >= {self.min_occupancy} frames")
            out.append(HMMReadout(
                hmm_components(fit, kept), kept, fit.initial_counts[kept], fit.transition_counts[kept][:, kept],
                len(fit.occupancy),
            ))
        return out

    def layout(self, local_model: FittedHMM) -> Layout:
        """The states of :func:`~pyro_fusion.models.hmm.gaussian_hmm_model`: ``loc`` and ``scale``
        (fused as ``log_scale``) per state, ``init`` and ``trans`` rebuilt from counts."""
        return Layout({"loc": 0, "scale": 0}, simplex={"init": (0,), "trans": (0, 1)})

    def match(self, local: List[HMMReadout], weights, settings: FuseSettings) -> FusionResult:
        clients = [r.components for r in local]
        price, num_global = settings.single("price"), settings.single("num_global")
        if num_global is None:  # one price for all restarts, so they compare
            price = price_of(price, clients, weights, direction=settings.direction, seed=settings.seed)
        runs = [
            fuse(
                clients, weights, direction=settings.direction, num_global=num_global,
                price=price, seed=settings.seed + r, **self.engine_options,
            )
            for r in tqdm(range(self.restarts), desc="HMM fusion restarts", disable=not settings.progress)
        ]
        return min(runs, key=lambda run: run.objective[-1])

    def write(self, result: FusionResult, local: List[HMMReadout], settings: FuseSettings) -> FusedModel:
        num_global = result.num_global
        emission = result.distributions()
        ones = torch.ones(len(local))
        init = rebuild_simplex(
            [r.initial_counts for r in local], [0], result.assignments, ones, num_global,
            torch.full((num_global,), self.prior.init_concentration),
        )
        trans = rebuild_simplex(
            [r.transition_counts for r in local], [0, 1], result.assignments, ones, num_global,
            self.prior.transition_concentration_matrix(num_global),
        )
        params = HMMParams(init=init, trans=trans, loc=emission["loc"].mean, scale=emission["log_scale"].mean.exp())
        assignments = []
        for r, a in zip(local, result.assignments):
            full = torch.full((r.num_states,), -1, dtype=torch.long)
            full[r.states] = a
            assignments.append(full)
        model = functools.partial(gaussian_hmm_model, num_states=num_global, prior=self.prior)
        return FusedModel(emission, result, model=model, params=params, assignments=assignments)


fuse_hmms = front_door(
    HMMAdapter,
    "fuse_hmms",
    """
Fuse per-client Gaussian HMMs into one global HMM (:class:`HMMAdapter`).

Example::

    >>> from pyro_fusion.models.hmm import decode, fit_gaussian_hmm
    >>> x = torch.cat([torch.randn(40, 2), torch.randn(40, 2) + 5])  # two behaviours
    >>> fits = [fit_gaussian_hmm([x + 0.1 * j], num_states=3, num_steps=30, seed=j) for j in range(2)]
    >>> fused = fuse_hmms(fits, prior=HMMPrior())
    >>> path = decode(fused.params, x)  # one global state per frame
    >>> path.shape
    torch.Size([80])

:param list local_models: the clients' :class:`~pyro_fusion.models.hmm.FittedHMM`.
:param weights: client weights of the emission barycenters (default uniform; the
    transition counts carry the clients' numbers of frames).
:param str direction: KL direction, ``"forward"`` by default (see :class:`HMMAdapter`).
:param int num_global: a fixed number of global states (default learned).
:param price: a number, a rule name of :func:`~pyro_fusion.fuse` or a
    :class:`~pyro_fusion.price.Price`; default :func:`~pyro_fusion.price.counterpart_price`.
:param int seed: seed of the first restart.
:param bool progress: show a progress bar over the restarts.
:param family_options: :class:`HMMAdapter` options (``prior``, ``min_occupancy``,
    ``restarts``, ``combine``, ``max_sweeps``, ``dtype``).
:return: a :class:`~pyro_fusion.adapters.base.FusedModel`: ``params`` (emission means:
    posterior means of the fused ``loc`` field; emission scales: ``exp`` of the fused
    ``log_scale`` means, i.e. medians; ``init`` and ``trans`` rebuilt from counts),
    ``assignments`` (per client, over all its states: global index, ``-1`` for pruned
    states), ``posterior`` (the fused ``loc`` and ``log_scale`` Normals), ``result`` and
    ``model`` (``gaussian_hmm_model`` with the global number of states).
""",
)
class HMMStatistics(NamedTuple):
    """
    Expected sufficient statistics of one client's sequences under a given HMM: all a
    client sends in a round of :func:`refine_hmm` (sums over frames, no frame itself).

    :param Tensor occupancy: ``[K]`` expected number of frames in each state.
    :param Tensor sum: ``[K, D]`` expected sum of the frames in each state.
    :param Tensor sum_squares: ``[K, D]`` expected sum of their squares.
    :param Tensor transition_counts: ``[K, K]`` expected transition counts.
    :param Tensor initial_counts: ``[K]`` expected first states.
    :param Tensor log_likelihood: scalar ``log p(sequences)`` under the HMM.

    All are float64 whatever the HMM's dtype: the sums of squares of raw features lose the
    variance to cancellation in float32.
    """

    occupancy: torch.Tensor
    sum: torch.Tensor
    sum_squares: torch.Tensor
    transition_counts: torch.Tensor
    initial_counts: torch.Tensor
    log_likelihood: torch.Tensor


def hmm_statistics(params: HMMParams, sequences: Sequence[torch.Tensor]) -> HMMStatistics:
    """
    A client's expected sufficient statistics under ``params`` (forward-backward).

    Example::

        >>> params = HMMParams(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.1, 0.9]]),
        ...                    torch.tensor([[0.0, 0.0], [5.0, 5.0]]), torch.ones(2, 2))  # e.g. fused.params
        >>> client_data = [torch.cat([torch.randn(30, 2), torch.randn(30, 2) + 5]) for _ in range(2)]
        >>> stats = hmm_statistics(params, client_data[0:1])  # on the client; only sums leave it

    :param HMMParams params: the current global HMM.
    :param list sequences: the client's ``[T_i, D]`` observations.
    :rtype: HMMStatistics
    """
    if not sequences:
        raise ValueError("hmm_statistics: need at least one sequence")
    num_states, dim = params.loc.shape
    for i, x in enumerate(sequences):
        if x.dim() != 2 or x.shape[-1] != dim or len(x) == 0:
            raise ValueError(
                f"hmm_statistics: sequence {i} has shape {tuple(x.shape)}, expected [T >= 1, {dim}]"
            )
    dtype = params.loc.dtype
    zeros = torch.zeros(num_states, dtype=torch.float64)
    occupancy, initial, loglik = zeros.clone(), zeros.clone(), zeros.new_zeros(())
    total, squares = zeros.new_zeros(num_states, dim), zeros.new_zeros(num_states, dim)
    transitions = zeros.new_zeros(num_states, num_states)
    log_init, log_trans = params.init.to(dtype).log(), params.trans.to(dtype).log()
    with torch.no_grad():
        for x in sequences:
            post = forward_backward(log_init, log_trans, params.emission_log_prob(x.to(dtype)))
            marginals, x = post.marginals.double(), x.double()
            occupancy += marginals.sum(0)
            total += marginals.T @ x
            squares += marginals.T @ (x * x)
            transitions += post.transition_counts.double()
            initial += marginals[0]
            loglik += post.log_likelihood.double()
    return HMMStatistics(occupancy, total, squares, transitions, initial, loglik)


def em_update(
    params: HMMParams,
    statistics: Sequence[HMMStatistics],
    prior: HMMPrior = HMMPrior(),
    min_occupancy: float = 1.0,
) -> HMMParams:
    """
    One server step of federated EM: sum the clients' statistics and re-estimate the HMM.

    Emission means are posterior modes under the prior's ``Normal(0, loc_scale)`` (with the
    current variances); variances get one pseudo-frame at the prior's median scale; the
    initial distribution and transition rows are Dirichlet posterior means under the prior
    (``init_concentration`` is the model's prior on the state before the first frame; here it
    is used for the first observed state, as :func:`fuse_hmms` does).
    States with less than ``min_occupancy`` expected frames over all clients keep their
    emission parameters.

    Example::

        >>> params = HMMParams(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.1, 0.9]]),
        ...                    torch.tensor([[0.0, 0.0], [5.0, 5.0]]), torch.ones(2, 2))  # e.g. fused.params
        >>> client_data = [torch.cat([torch.randn(30, 2), torch.randn(30, 2) + 5]) for _ in range(2)]
        >>> params = em_update(params, [hmm_statistics(params, [x]) for x in client_data], HMMPrior())
        >>> params.loc.shape
        torch.Size([2, 2])

    :param HMMParams params: the HMM the statistics were computed under.
    :param list statistics: one :class:`HMMStatistics` per client.
    :param HMMPrior prior: the prior every client used.
    :param float min_occupancy: see above.
    :rtype: HMMParams
    """
    if not statistics:
        raise ValueError("em_update: need the statistics of at least one client")
    num_states = len(params.loc)
    square = (num_states, num_states)
    shapes = HMMStatistics(
        (num_states,), params.loc.shape, params.loc.shape, square, (num_states,), ()
    )
    for j, s in enumerate(statistics):
        for name, value, shape in zip(HMMStatistics._fields, s, shapes):
            if value.shape != shape:
                raise ValueError(
                    f"em_update: client {j}'s {name} has shape {tuple(value.shape)}, expected "
                    f"{tuple(shape)} for an HMM of {num_states} states"
                )
    summed = HMMStatistics(*(sum(v.double() for v in values) for values in zip(*statistics)))
    occupancy, total, squares = summed.occupancy, summed.sum, summed.sum_squares
    trans, init = summed.transition_counts, summed.initial_counts
    shrink = params.scale.double() ** 2 / prior.loc_scale**2
    loc = total / (occupancy.unsqueeze(-1) + shrink)
    scatter = squares - 2 * loc * total + occupancy.unsqueeze(-1) * loc**2
    variance = (scatter.clamp(min=0) + prior.scale_loc**2) / (occupancy.unsqueeze(-1) + 1.0)
    seen = (occupancy >= min_occupancy).unsqueeze(-1)
    trans = trans + prior.transition_concentration_matrix(num_states).double()
    init = init + prior.init_concentration
    dtype = params.loc.dtype
    return HMMParams(
        init=(init / init.sum()).to(params.init.dtype),
        trans=(trans / trans.sum(-1, keepdim=True)).to(params.trans.dtype),
        loc=torch.where(seen, loc.to(dtype), params.loc),
        scale=torch.where(seen, variance.sqrt().to(dtype), params.scale),
    )


@rename_kwargs("refine_hmm", {"rounds": "num_rounds"})
def refine_hmm(
    params: HMMParams,
    client_sequences: Sequence[Sequence[torch.Tensor]],
    prior: HMMPrior = HMMPrior(),
    num_rounds: int = 10,
    min_occupancy: float = 1.0,
    progress: bool = False,
) -> Tuple[HMMParams, List[float]]:
    """
    Federated EM from a fused HMM: in each round every client computes
    :func:`hmm_statistics` on its own sequences and the server applies :func:`em_update`.
    Only per-state sums leave the clients. Starting from the fused model keeps the global
    state indexing, so the rounds refine what fusion found rather than relearning it.

    Example::

        >>> params = HMMParams(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.1, 0.9]]),
        ...                    torch.tensor([[0.0, 0.0], [5.0, 5.0]]), torch.ones(2, 2))  # e.g. fused.params
        >>> client_data = [torch.cat([torch.randn(30, 2), torch.randn(30, 2) + 5]) for _ in range(2)]
        >>> params, log_likelihoods = refine_hmm(params, [[x] for x in client_data], HMMPrior(), num_rounds=3)
        >>> len(log_likelihoods)
        3

    :param HMMParams params: the starting HMM (e.g. ``fuse_hmms(...).params``).
    :param list client_sequences: per client, its list of ``[T_i, D]`` sequences.
    :param HMMPrior prior: the prior every client used.
    :param int num_rounds: number of EM rounds (formerly ``rounds``).
    :param float min_occupancy: see :func:`em_update`.
    :param bool progress: show a progress bar over the rounds.
    :return: the refined HMM and the total log-likelihood before each round.
    """
    if num_rounds < 0:
        raise ValueError(f"refine_hmm: num_rounds must be >= 0, got {num_rounds}")
    if not client_sequences:
        raise ValueError("refine_hmm: need at least one client")
    log_likelihoods = []
    for _ in tqdm(range(num_rounds), desc="federated EM rounds", disable=not progress):
        statistics = []
        for j, sequences in enumerate(client_sequences):
            try:
                statistics.append(hmm_statistics(params, sequences))
            except ValueError as e:
                raise ValueError(f"client {j}: {e}") from None
        log_likelihoods.append(float(sum(s.log_likelihood for s in statistics)))
        params = em_update(params, statistics, prior, min_occupancy)
    return params, log_likelihoods


#: names that changed (kept for one release)
__getattr__ = moved(__name__, {"FusedHMM": "pyro_fusion.adapters.base:FusedModel"})
