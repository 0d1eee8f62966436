"""
A Gaussian mixture model in Pyro with a mean-field guide, the client model of the
Gaussian-mixture fusion experiment (``benchmarks/gmm_paper.py``).

Component covariances are full (``scale_tril = diag(scales) @ corr`` with an LKJ prior on the
Cholesky factor ``corr``), or diagonal with ``GMMPrior(correlated=False)``.

The component assignments are marginalised exactly (:class:`~pyro.distributions.MixtureSameFamily`),
so the remaining latent sites (``weights``, ``locs``, ``scales``[, ``corr``]) get an
:class:`~pyro.infer.autoguide.AutoNormal` guide trained with plain :class:`~pyro.infer.Trace_ELBO`.
This is the same posterior as the enumerated model of Pyro's GMM tutorial
(``z`` enumerated with ``TraceEnum_ELBO``), without a discrete site to block from the guide.

To fuse the fitted guides, ``locs``, ``scales`` (and ``corr``) are component sites
(dimension 0) and ``weights`` is a simplex indexed by component (see
:func:`~pyro_fusion.readout.extract` and :func:`gmm_sites`)::

    extract(guide, components={"locs": 0, "scales": 0, "corr": 0}, simplex={"weights": [0]})
"""

import itertools
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value
from pyro.optim import ClippedAdam
from torch import Tensor
from torch.distributions import biject_to

from ..components import Components
from ..deprecation import moved
from . import clustering
from .training import svi_steps


@dataclass(frozen=True)
class GMMPrior:
    """
    Hyperparameters of :func:`gmm_model`.

    :param float weight_concentration: symmetric Dirichlet concentration of the mixture weights.
    :param float loc_scale: scale of the zero-mean Normal prior on component means.
    :param float scale_loc: median of the LogNormal prior on component scales (per coordinate).
    :param float scale_scale: log-scale spread of the LogNormal prior on component scales.
    :param bool correlated: full covariances (an LKJ prior on their correlation Cholesky
        factor ``corr``) or diagonal ones (no ``corr`` site).
    :param float corr_concentration: concentration of the LKJ prior.
    """

    weight_concentration: float = 1.0
    loc_scale: float = 10.0
    scale_loc: float = 1.0
    scale_scale: float = 1.0
    correlated: bool = True
    corr_concentration: float = 1.0


def gmm_sites(prior: GMMPrior | None = None) -> dict:
    """
    Keyword arguments of :func:`~pyro_fusion.readout.extract` for a guide of :func:`gmm_model`.

    Example::

        >>> data = torch.randn(100, 2)
        >>> post = extract(fit_gmm(data, 2, num_steps=20), **gmm_sites(), weight=len(data))
        >>> post.num_components
        2

    :param GMMPrior prior: the model's hyperparameters (default :class:`GMMPrior()`).
    """
    prior = GMMPrior() if prior is None else prior
    components = {"locs": 0, "scales": 0}
    if prior.correlated:
        components["corr"] = 0
    return {"components": components, "simplex": {"weights": [0]}}


def gmm_model(data: Tensor, num_components: int, prior: GMMPrior = GMMPrior()) -> None:
    """
    Pyro model of a Gaussian mixture.

    Sites: ``weights`` (Dirichlet ``[K]``) and, in the ``components`` plate of size ``K``,
    ``locs`` (Normal ``[K, D]``), ``scales`` (LogNormal ``[K, D]``) and, if
    ``prior.correlated``, ``corr`` (LKJCholesky ``[K, D, D]``); the observations ``obs`` are a
    :class:`~pyro.distributions.MixtureSameFamily` in the ``data`` plate.

    Example::

        >>> data = torch.randn(50, 2)
        >>> pyro.clear_param_store()  # a new AutoNormal: no parameters of an earlier one
        >>> guide = AutoNormal(gmm_model)
        >>> loss = Trace_ELBO().loss(gmm_model, guide, data, 3)

    :param Tensor data: ``[N, D]`` observations.
    :param int num_components: number of components ``K``.
    :param GMMPrior prior: hyperparameters.
    """
    if data.dim() != 2:
        raise ValueError(f"gmm_model: data must be [N, D], got shape {tuple(data.shape)}")
    dim = data.shape[-1]
    if prior.correlated and dim < 2:
        raise ValueError("gmm_model: correlated components need D >= 2; use GMMPrior(correlated=False)")
    weights = pyro.sample(
        "weights", dist.Dirichlet(torch.full((num_components,), prior.weight_concentration))
    )
    with pyro.plate("components", num_components):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(dim), prior.loc_scale).to_event(1))
        scales = pyro.sample(
            "scales",
            dist.LogNormal(torch.full((dim,), math.log(prior.scale_loc)), prior.scale_scale).to_event(1),
        )
        if prior.correlated:
            corr = pyro.sample("corr", dist.LKJCholesky(dim, prior.corr_concentration))
            components = dist.MultivariateNormal(locs, scale_tril=scales.unsqueeze(-1) * corr)
        else:
            components = dist.Normal(locs, scales).to_event(1)
    mixture = dist.MixtureSameFamily(dist.Categorical(weights), components)
    with pyro.plate("data", len(data)):
        pyro.sample("obs", mixture, obs=data)


def prior_component(prior: GMMPrior, dim: int, num_samples: int = 10000, seed: int = 0) -> Components:
    """
    The prior of one component's sites (``locs``, ``scales``[, ``corr``]) as a diagonal Normal
    in AutoNormal's unconstrained space, moment-matched to ``num_samples`` prior draws (exact
    up to Monte Carlo error for ``locs`` and ``scales``, a Normal and a log-Normal; an
    approximation for ``corr``). Pass it as ``prior=`` to fusion for the prior-based price.

    Example::

        >>> prior = prior_component(GMMPrior(), 2)  # e.g. fuse_posteriors(posts, prior=prior)
        >>> len(prior), sorted(prior.families)
        (1, ['corr', 'locs', 'scales'])

    :param GMMPrior prior: hyperparameters of :func:`gmm_model`.
    :param int dim: data dimension ``D``.
    :param int num_samples: number of prior draws.
    :param int seed: random seed (the global RNG is left as it was).
    """
    normals = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trace = poutine.trace(gmm_model).get_trace(torch.zeros(1, dim), 1, prior)
        for name in gmm_sites(prior)["components"]:
            fn = trace.nodes[name]["fn"]
            draws = biject_to(fn.support).inv(fn.sample((num_samples,)))
            normals[name] = dist.Normal(draws.mean(0), draws.std(0))
    return Components.from_distributions(normals)


def kmeans_init_values(
    data: Tensor, num_components: int, seed: int = 0, correlated: bool = True, restarts: int = 4
) -> dict:
    """
    Starting values for :func:`gmm_model`'s sites from k-means on ``data`` (the best of
    ``restarts`` k-means++ runs, :func:`~pyro_fusion.models.clustering.kmeans`): centres as
    ``locs``, cluster sizes as ``weights``, and the per-cluster covariances (with a small
    ridge; the overall covariance for clusters of fewer than ``D + 1`` points) as ``scales``
    and, if ``correlated``, ``corr``.

    :param Tensor data: ``[N, D]`` observations.
    :param int num_components: number of components ``K``.
    :param int seed: random seed of the k-means seeding.
    :param bool correlated: whether to include the ``corr`` site.
    :param int restarts: number of k-means runs.
    :return: site name -> value, for :func:`~pyro.infer.autoguide.init_to_value`.
    """
    centres, labels = clustering.kmeans(data, num_components, seed=seed, restarts=restarts)
    dim = data.shape[-1]
    one_hot = torch.nn.functional.one_hot(labels, num_components).to(data)
    counts = one_hot.sum(0)
    resid = data - centres[labels]
    outer = resid.unsqueeze(-1) * resid.unsqueeze(-2)
    cov = torch.einsum("nk,nij->kij", one_hot, outer) / counts.clamp(min=1)[:, None, None]
    overall = torch.cov(data.T).reshape(dim, dim)
    cov = torch.where((counts > dim)[:, None, None], cov, overall)
    cov = cov + 1e-3 * cov.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(dim)
    scales = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    values = {
        "locs": centres,
        "scales": scales,
        "weights": (counts + 1.0) / (counts.sum() + num_components),
    }
    if correlated:
        values["corr"] = torch.linalg.cholesky(cov) / scales.unsqueeze(-1)
    return values


def run_svi(
    guide: AutoNormal,
    data: Tensor,
    num_components: int,
    num_steps: int,
    lr: float = 0.05,
    final_lr: float = 0.005,
    prior: GMMPrior = GMMPrior(),
    progress: bool = False,
) -> list[float]:
    """
    Train ``guide`` for :func:`gmm_model` by full-batch SVI (:class:`~pyro.infer.Trace_ELBO`,
    :class:`~pyro.optim.ClippedAdam` whose learning rate decays geometrically from ``lr`` to
    ``final_lr``).

    :param guide: a guide of :func:`gmm_model` (e.g. an :class:`AutoNormal`).
    :param Tensor data: ``[N, D]`` observations.
    :param int num_components: number of components ``K``.
    :param int num_steps: SVI steps.
    :param float lr: initial learning rate.
    :param float final_lr: learning rate of the last step.
    :param GMMPrior prior: hyperparameters.
    :param bool progress: show a progress bar over the steps.
    :return: the loss (negative ELBO) of every step.
    """
    if num_steps < 1:
        raise ValueError(f"run_svi: num_steps must be >= 1, got {num_steps}")
    decay = (final_lr / lr) ** (1.0 / max(num_steps - 1, 1))
    optim = ClippedAdam({"lr": lr, "lrd": decay})
    batches = itertools.repeat((data, num_components, prior), num_steps)
    return svi_steps(
        gmm_model, guide, optim, Trace_ELBO(), batches, num_steps=num_steps, progress=progress, desc="GMM fit"
    )


def fit_gmm(
    data: Tensor,
    num_components: int,
    num_steps: int = 300,
    seed: int = 0,
    lr: float = 0.05,
    prior: GMMPrior = GMMPrior(),
    progress: bool = False,
) -> AutoNormal:
    """
    Fit :func:`gmm_model` to one client's data with an :class:`AutoNormal` guide, started
    from k-means++ on the data (:func:`kmeans_init_values`) and trained by :func:`run_svi`.

    The guide's parameters live in the global param store as ``AutoNormal.*``; an earlier
    ``AutoNormal``'s parameters there are replaced, so extract each client's guide before
    fitting the next one.

    Example::

        >>> guide = fit_gmm(torch.randn(200, 2), 2, num_steps=50)
        >>> post = extract(guide, **gmm_sites())

    :param Tensor data: ``[N, D]`` observations.
    :param int num_components: number of components ``K``.
    :param int num_steps: SVI steps.
    :param int seed: seed of the initialisation and of the ELBO estimates.
    :param float lr: initial learning rate of :func:`run_svi`.
    :param GMMPrior prior: hyperparameters.
    :param bool progress: show a progress bar over the SVI steps.
    :return: the trained guide.
    """
    if data.dim() != 2 or not torch.isfinite(data).all():
        raise ValueError(f"fit_gmm: data must be a finite [N, D] tensor, got shape {tuple(data.shape)}")
    if not 1 <= num_components <= len(data):
        raise ValueError(f"fit_gmm: need 1 <= num_components <= {len(data)} points, got {num_components}")
    data = data.detach().to(torch.get_default_dtype())
    pyro.set_rng_seed(seed)
    store = pyro.get_param_store()
    for name in [k for k in store if k.startswith("AutoNormal.")]:
        del store[name]
    init = kmeans_init_values(data, num_components, seed=seed, correlated=prior.correlated)
    guide = AutoNormal(gmm_model, init_loc_fn=init_to_value(values=init), init_scale=0.05)
    run_svi(guide, data, num_components, num_steps, lr=lr, prior=prior, progress=progress)
    return guide


#: names that moved (kept for one release)
__getattr__ = moved(__name__, {"kmeans": "pyro_fusion.models.clustering:kmeans"})
