"""
A hidden Markov model with Gaussian emissions, written in Pyro, and the exact inference
routines (forward-backward, Viterbi) used to read a fitted model.

The hidden states are marginalised exactly by :class:`~pyro.distributions.DiscreteHMM`
(vectorised forward algorithm); the remaining latent variables (initial distribution,
transition rows, per-state emission mean and scale) get a mean-field
:class:`~pyro.infer.autoguide.AutoNormal` guide trained with SVI.

Conventions. :class:`~pyro.distributions.DiscreteHMM` draws the first observed state
from ``init @ trans`` (``init`` is the state *before* the first frame). Everything read
out of a fit (:class:`HMMParams`) uses the textbook convention instead: ``init`` is the
distribution of the first observed state, so :func:`viterbi` and
:func:`forward_backward` need no special case.
"""

import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value
from pyro.optim import ClippedAdam

from ..deprecation import warn
from .clustering import kmeans
from .training import svi_steps


@dataclass(frozen=True)
class HMMPrior:
    """
    Hyperparameters of :func:`gaussian_hmm_model`, for standardised observations.

    The transition rows get a sticky, sparse Dirichlet prior: concentration
    ``transition_concentration`` off the diagonal plus ``stickiness`` on it: states
    persist over many frames, and states a sequence does not need tend to stay empty
    (they are pruned before fusion, see :meth:`FittedHMM.occupied`).

    :param float init_concentration: Dirichlet concentration of the initial distribution.
    :param float transition_concentration: Dirichlet concentration of each off-diagonal entry.
    :param float stickiness: extra concentration on the diagonal of the transition matrix.
    :param float loc_scale: scale of the zero-mean Normal prior on emission means.
    :param float scale_loc: median of the LogNormal prior on emission scales.
    :param float scale_scale: log-scale spread of the LogNormal prior on emission scales.
    """

    init_concentration: float = 1.0
    transition_concentration: float = 0.1
    stickiness: float = 50.0
    loc_scale: float = 2.0
    scale_loc: float = 0.5
    scale_scale: float = 1.0

    def transition_concentration_matrix(self, num_states: int) -> torch.Tensor:
        """
        :param int num_states: number of hidden states ``K``.
        :return: the ``[K, K]`` Dirichlet concentration of the transition rows.
        :rtype: torch.Tensor
        """
        eye = torch.eye(num_states)
        return self.transition_concentration + self.stickiness * eye


def gaussian_hmm_model(
    sequences: Sequence[torch.Tensor], num_states: int, prior: HMMPrior = HMMPrior()
) -> None:
    """
    Pyro model of one or more sequences sharing one Gaussian HMM.

    Sites: ``init`` (Dirichlet ``[K]``), and in the ``states`` plate of size ``K``:
    ``trans`` (Dirichlet row ``[K, K]``), ``loc`` (Normal ``[K, D]``) and ``scale``
    (LogNormal ``[K, D]``). Observations ``obs_0, obs_1, ...`` are
    :class:`~pyro.distributions.DiscreteHMM` sites, one per sequence.

    Example::

        >>> from pyro.infer import Trace_ELBO
        >>> from pyro.infer.autoguide import AutoNormal
        >>> x = torch.randn(50, 3)
        >>> pyro.clear_param_store()  # a new AutoNormal: no parameters of an earlier one
        >>> guide = AutoNormal(gaussian_hmm_model)
        >>> loss = Trace_ELBO().loss(gaussian_hmm_model, guide, [x], 4)

    :param sequences: observations, each a ``[T_i, D]`` tensor.
    :param int num_states: number of hidden states ``K``.
    :param HMMPrior prior: hyperparameters.
    """
    dim = sequences[0].shape[-1]
    init = pyro.sample(
        "init", dist.Dirichlet(torch.full((num_states,), prior.init_concentration))
    )
    with pyro.plate("states", num_states):
        trans = pyro.sample(
            "trans", dist.Dirichlet(prior.transition_concentration_matrix(num_states))
        )
        loc = pyro.sample(
            "loc", dist.Normal(0.0, prior.loc_scale).expand([dim]).to_event(1)
        )
        scale = pyro.sample(
            "scale",
            dist.LogNormal(math.log(prior.scale_loc), prior.scale_scale)
            .expand([dim])
            .to_event(1),
        )
    emission = dist.Normal(loc, scale).to_event(1)
    for i, x in enumerate(sequences):
        hmm = dist.DiscreteHMM(init.log(), trans.log(), emission, duration=len(x))
        pyro.sample(f"obs_{i}", hmm, obs=x)


class HMMParams(NamedTuple):
    """
    Point parameters of a Gaussian HMM (textbook convention: ``init`` is the
    distribution of the first observed state).

    :param Tensor init: ``[K]`` initial distribution.
    :param Tensor trans: ``[K, K]`` transition matrix, rows sum to one.
    :param Tensor loc: ``[K, D]`` emission means.
    :param Tensor scale: ``[K, D]`` emission standard deviations.
    """

    init: torch.Tensor
    trans: torch.Tensor
    loc: torch.Tensor
    scale: torch.Tensor

    def emission_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """
        :param Tensor x: ``[T, D]`` observations.
        :return: ``[T, K]`` log densities of every frame under every state.
        :rtype: torch.Tensor
        """
        return dist.Normal(self.loc, self.scale).log_prob(x.unsqueeze(-2)).sum(-1)


def viterbi(
    log_init: torch.Tensor, log_trans: torch.Tensor, log_obs: torch.Tensor
) -> torch.Tensor:
    """
    Most probable state path (max-product dynamic programming, vectorised over states).

    :param Tensor log_init: ``[K]`` log initial probabilities.
    :param Tensor log_trans: ``[K, K]`` log transition matrix, ``[from, to]``.
    :param Tensor log_obs: ``[T, K]`` log emission densities.
    :return: ``[T]`` LongTensor of states.
    :rtype: torch.Tensor
    """
    score = log_init + log_obs[0]
    backpointers = []
    for t in range(1, len(log_obs)):
        best, argbest = (score.unsqueeze(-1) + log_trans).max(0)
        backpointers.append(argbest)
        score = best + log_obs[t]
    path = [int(score.argmax())]
    for argbest in reversed(torch.stack(backpointers).tolist() if backpointers else []):
        path.append(argbest[path[-1]])
    return torch.tensor(path[::-1])


class Posterior(NamedTuple):
    """
    Exact posterior summaries of the hidden states of one sequence.

    :param Tensor marginals: ``[T, K]`` posterior probability of each state at each frame.
    :param Tensor transition_counts: ``[K, K]`` expected number of ``k -> k'`` transitions.
    :param Tensor log_likelihood: scalar ``log p(x)``.
    """

    marginals: torch.Tensor
    transition_counts: torch.Tensor
    log_likelihood: torch.Tensor


def forward_backward(
    log_init: torch.Tensor, log_trans: torch.Tensor, log_obs: torch.Tensor
) -> Posterior:
    """
    Sum-product forward-backward recursion in log space (vectorised over states).

    :param Tensor log_init: ``[K]`` log initial probabilities.
    :param Tensor log_trans: ``[K, K]`` log transition matrix, ``[from, to]``.
    :param Tensor log_obs: ``[T, K]`` log emission densities.
    :rtype: Posterior
    """
    num_steps = len(log_obs)
    alpha = [log_init + log_obs[0]]
    for t in range(1, num_steps):
        alpha.append((alpha[-1].unsqueeze(-1) + log_trans).logsumexp(0) + log_obs[t])
    beta = [torch.zeros_like(log_init)]
    for t in range(num_steps - 1, 0, -1):
        beta.append((log_trans + log_obs[t] + beta[-1]).logsumexp(-1))
    alpha = torch.stack(alpha)
    beta = torch.stack(beta[::-1])
    log_z = alpha[-1].logsumexp(-1)
    marginals = (alpha + beta - log_z).exp()
    pair = alpha[:-1, :, None] + log_trans + (log_obs[1:] + beta[1:])[:, None, :]
    transition_counts = (pair.logsumexp(0) - log_z).exp()
    return Posterior(marginals, transition_counts, log_z)


@dataclass
class FittedHMM:
    """
    One client's trained HMM: the guide, its point summary and the exact posterior
    statistics of the client's own data, which is all a client needs to send for fusion.

    :param AutoNormal guide: the trained mean-field guide of :func:`gaussian_hmm_model`.
    :param dict unconstrained: site name -> the guide's ``Normal`` over that site in
        unconstrained space (``scale`` is therefore a Normal over log-scales).
    :param HMMParams params: posterior-median parameters (textbook convention).
    :param Tensor occupancy: ``[K]`` expected number of frames in each state.
    :param Tensor initial_counts: ``[K]`` expected number of sequences starting in each state.
    :param Tensor transition_counts: ``[K, K]`` expected number of ``k -> k'`` transitions.
    :param list losses: ELBO loss per SVI step.
    """

    guide: AutoNormal
    unconstrained: dict
    params: HMMParams
    occupancy: torch.Tensor
    initial_counts: torch.Tensor
    transition_counts: torch.Tensor
    losses: list

    def occupied(self, min_occupancy: float) -> torch.Tensor:
        """
        States worth keeping: expected occupancy at least ``min_occupancy`` frames.

        :param float min_occupancy: threshold in frames.
        :return: LongTensor of state indices.
        :rtype: torch.Tensor
        """
        return (self.occupancy >= min_occupancy).nonzero().squeeze(-1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """
        Viterbi path of ``x`` under this model's point parameters.

        :param Tensor x: ``[T, D]`` observations.
        :rtype: torch.Tensor
        """
        return decode(self.params, x)


def decode(params: HMMParams, x: torch.Tensor) -> torch.Tensor:
    """
    Viterbi path of one sequence under point parameters.

    :param HMMParams params: HMM parameters.
    :param Tensor x: ``[T, D]`` observations.
    :return: ``[T]`` LongTensor of states.
    :rtype: torch.Tensor
    """
    return viterbi(params.init.log(), params.trans.log(), params.emission_log_prob(x))


def kmeans_init(frames: torch.Tensor, num_states: int, generator: torch.Generator) -> torch.Tensor:
    """
    Deprecated (removed in 0.3): starting emission means are k-means centres,
    ``kmeans(frames, num_states, seed=seed)[0]`` (:func:`~pyro_fusion.models.clustering.kmeans`).

    :param Tensor frames: ``[N, D]`` observations.
    :param int num_states: number of centres ``K``.
    :param torch.Generator generator: draws the seed.
    :return: ``[K, D]`` centres.
    """
    warn("pyro_fusion.models.hmm.kmeans_init", "pyro_fusion.models.clustering.kmeans")
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    return kmeans(frames, num_states, seed=seed)[0]


@contextmanager
def single_threaded() -> Iterator[None]:
    """
    Run torch ops on one intra-op thread, restoring the previous setting afterwards.

    HMM tensors here are tiny (``[T, K]``, ``[K, K]``); extra intra-op threads only add
    synchronisation, and on a busy machine they slow SVI down by an order of magnitude.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_gaussian_hmm(
    sequences: Sequence[torch.Tensor],
    num_states: int,
    prior: HMMPrior = HMMPrior(),
    num_steps: int = 500,
    lr: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> FittedHMM:
    """
    Fit :func:`gaussian_hmm_model` with SVI and an :class:`AutoNormal` guide.

    Emission means start at k-means centres of the frames
    (:func:`~pyro_fusion.models.clustering.kmeans`), emission scales at the
    prior median, the transition matrix at its prior mean. Training runs in its own
    parameter-store scope, so fits never share parameters and the caller's store is left
    as it was; Pyro's global RNG is seeded with ``seed``.

    Example::

        >>> fit = fit_gaussian_hmm([torch.randn(100, 3)], num_states=4, num_steps=100)
        >>> path = fit.decode(torch.randn(20, 3))
        >>> path.shape
        torch.Size([20])

    :param sequences: observations, each a ``[T_i, D]`` tensor (all share one model).
    :param int num_states: number of hidden states ``K``.
    :param HMMPrior prior: hyperparameters.
    :param int num_steps: SVI steps (full batch).
    :param float lr: Adam learning rate.
    :param int seed: random seed for the initialisation and the ELBO estimates.
    :param bool progress: show a progress bar over the SVI steps.
    :rtype: FittedHMM
    """
    if not sequences:
        raise ValueError("fit_gaussian_hmm: need at least one sequence")
    dims = {x.shape[-1] for x in sequences}
    if len(dims) != 1 or any(x.dim() != 2 for x in sequences):
        raise ValueError(
            f"fit_gaussian_hmm: sequences must be [T_i, D] with one D, got shapes "
            f"{[tuple(x.shape) for x in sequences]}"
        )
    if num_states < 1:
        raise ValueError(f"fit_gaussian_hmm: num_states must be >= 1, got {num_states}")
    sequences = [x.detach().to(torch.get_default_dtype()) for x in sequences]
    pyro.set_rng_seed(seed)
    frames = torch.cat(sequences)
    conc = prior.transition_concentration_matrix(num_states)
    init_values = {
        "init": torch.full((num_states,), 1.0 / num_states),
        "trans": conc / conc.sum(-1, keepdim=True),
        "loc": kmeans(frames, num_states, seed=seed)[0],
        "scale": torch.full((num_states, frames.shape[-1]), prior.scale_loc),
    }
    guide = AutoNormal(
        gaussian_hmm_model, init_loc_fn=init_to_value(values=init_values), init_scale=0.01
    )
    batches = itertools.repeat((sequences, num_states, prior), num_steps)
    with single_threaded(), pyro.get_param_store().scope():
        losses = svi_steps(
            gaussian_hmm_model, guide, ClippedAdam({"lr": lr}), Trace_ELBO(), batches,
            num_steps=num_steps, progress=progress, desc="HMM fit",
        )
        with torch.no_grad():
            median = guide.median(sequences, num_states, prior)
            unconstrained = {
                name: dist.Normal(
                    getattr(guide.locs, name).detach().clone(),
                    getattr(guide.scales, name).detach().clone(),
                )
                for name in median
            }
    params = HMMParams(
        init=median["init"] @ median["trans"],
        trans=median["trans"],
        loc=median["loc"],
        scale=median["scale"],
    )
    with torch.no_grad(), single_threaded():
        posteriors = [
            forward_backward(
                params.init.log(), params.trans.log(), params.emission_log_prob(x)
            )
            for x in sequences
        ]
    return FittedHMM(
        guide,
        unconstrained,
        params,
        occupancy=sum(p.marginals.sum(0) for p in posteriors),
        initial_counts=sum(p.marginals[0] for p in posteriors),
        transition_counts=sum(p.transition_counts for p in posteriors),
        losses=losses,
    )
