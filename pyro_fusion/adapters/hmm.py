"""
HMM adapter: fuse Gaussian HMMs trained separately (one per client) into one global HMM.

A hidden state is a component with two fields read from the client's
:class:`~pyro.infer.autoguide.AutoNormal` guide of
:func:`~pyro_fusion.models.hmm.gaussian_hmm_model`:

- ``loc``: the guide's Normal over the state's emission mean (``[D]``);
- ``log_scale``: the guide's Normal over the state's log emission scale (``[D]``), i.e. the
  ``scale`` site in AutoNormal's unconstrained space, where KL fusion is exact
  (DESIGN §1, bijections).

Transition rows live on a simplex indexed by the states themselves, so they are not
matched; they are rebuilt after matching (DESIGN §4): each client's expected transition
counts ``xi_j[k, k']`` (and expected initial-state counts) are scattered into the global
state space through its assignment and summed over clients; entries that no client saw
(no client has both states) get the prior's Dirichlet concentration instead; rows are then
normalised. Fusing identical clients therefore returns the clients' own count-based
transition matrix exactly when every entry is seen.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch.distributions import Normal

from ..components import Components
from ..fusion import FusionResult, fuse
from ..simplex import rebuild_simplex
from ..models.hmm import FittedHMM, HMMParams, HMMPrior


def hmm_components(fit: FittedHMM, states: Optional[torch.Tensor] = None) -> Components:
    """
    One client's HMM states as :class:`~pyro_fusion.Components` (fields ``loc`` and
    ``log_scale``, diagonal Normals of event shape ``[D]``).

    Example::

        fit = fit_gaussian_hmm([x], num_states=6)
        states = hmm_components(fit, fit.occupied(min_occupancy=5.0))

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


@dataclass
class FusedHMM:
    """
    The global HMM returned by :func:`fuse_hmms`.

    :param HMMParams params: global point parameters (emission means: posterior means of
        the fused ``loc`` field; emission scales: ``exp`` of the fused ``log_scale`` means,
        i.e. medians; ``init`` and ``trans`` rebuilt from counts).
    :param list states: per client, the local states that took part (occupied ones).
    :param list assignments: per client, LongTensor over *all* its states: global index of
        each state, ``-1`` for pruned states.
    :param FusionResult result: the raw fusion result.
    """

    params: HMMParams
    states: List[torch.Tensor]
    assignments: List[torch.Tensor]
    result: FusionResult

    @property
    def num_states(self) -> int:
        return len(self.params.loc)


def fuse_hmms(
    fits: Sequence[FittedHMM],
    prior: HMMPrior = HMMPrior(),
    min_occupancy: float = 1.0,
    direction: str = "forward",
    restarts: int = 10,
    seed: int = 0,
    **fuse_kwargs,
) -> FusedHMM:
    """
    Fuse per-client Gaussian HMMs into one global HMM.

    States whose expected occupancy is below ``min_occupancy`` frames are pruned first
    (a generous ``num_states`` leaves some states nearly empty; they carry only the prior).
    The remaining states are matched by :func:`~pyro_fusion.fuse` (keyword arguments are
    passed on, e.g. ``price`` or ``num_global``; the default price is
    :func:`~pyro_fusion.default_price`); the initial distribution and transition matrix are
    rebuilt from the clients' expected counts by :func:`~pyro_fusion.simplex.rebuild_simplex`.

    The default ``direction="forward"`` minimises ``sum KL(local || global)`` with
    moment-matched globals: a global state covers the spread of its clients' states (the
    same behaviour differs between subjects by far more than one client's posterior
    uncertainty), whereas reverse-KL barycenters are as narrow as one client's posterior and
    match few states.

    The assignment problem is non-convex and the result depends on the order in which
    clients are matched, so fusion runs from ``restarts`` client orders (seeds ``seed``,
    ``seed + 1``, ...) and keeps the result with the lowest objective.

    Example::

        fused = fuse_hmms([fit_a, fit_b])
        path = decode(fused.params, x)

    :param list fits: the clients' :class:`~pyro_fusion.models.hmm.FittedHMM`.
    :param HMMPrior prior: the prior every client used (its concentrations fill unseen entries).
    :param float min_occupancy: pruning threshold, in expected frames.
    :param str direction: KL direction, see above.
    :param int restarts: number of fusion runs (random client orders).
    :param int seed: seed of the first run.
    :rtype: FusedHMM
    """
    states = []
    for j, fit in enumerate(fits):
        kept = fit.occupied(min_occupancy)
        if kept.numel() == 0:
            raise ValueError(
                f"client {j}: no state has expected occupancy >= {min_occupancy} frames"
            )
        states.append(kept)
    clients = [hmm_components(fit, kept) for fit, kept in zip(fits, states)]
    if restarts < 1:
        raise ValueError(f"fuse_hmms: restarts must be >= 1, got {restarts}")
    runs = [
        fuse(clients, direction=direction, seed=seed + r, **fuse_kwargs)
        for r in range(restarts)
    ]
    result = min(runs, key=lambda run: run.objective[-1])
    num_global = result.num_global
    emission = result.distributions()
    ones = torch.ones(len(fits))
    init = rebuild_simplex(
        [fit.initial_counts[kept] for fit, kept in zip(fits, states)],
        [0],
        result.assignments,
        ones,
        num_global,
        torch.full((num_global,), prior.init_concentration),
    )
    trans = rebuild_simplex(
        [fit.transition_counts[kept][:, kept] for fit, kept in zip(fits, states)],
        [0, 1],
        result.assignments,
        ones,
        num_global,
        prior.transition_concentration_matrix(num_global),
    )
    params = HMMParams(
        init=init,
        trans=trans,
        loc=emission["loc"].mean,
        scale=emission["log_scale"].mean.exp(),
    )
    assignments = []
    for fit, kept, a in zip(fits, states, result.assignments):
        full = torch.full((len(fit.occupancy),), -1, dtype=torch.long)
        full[kept] = a
        assignments.append(full)
    return FusedHMM(params, states, assignments, result)
