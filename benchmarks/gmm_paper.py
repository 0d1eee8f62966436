"""
The Gaussian-mixture simulation of KL-fusion's released code (Claici et al., ICML 2020,
``run_simulation_with_plots.py``), with Pyro clients.

Generator (as in the released code): ``L`` global 2-D components, means
``~ N(0, separation * L * I)``, full covariances from the released ``make_spd_matrix(D,
diag=sqrt(1 + l))``; ``J`` groups; component ``l`` has keep probability ``p_l ~ Beta(1, 1)``,
each group keeps each component with that probability (redrawn until it keeps at least 2),
perturbs its means by ``N(0, 0.1^2)`` and its covariances by ``Wishart(df=200, Sigma) / 200``,
and draws ``M = 300`` points with mixing proportions ``~ Dirichlet(10)``. The true components
are those kept by at least one group (see the user guide, docs/guide/metrics).
``--separation`` defaults to 1 (the released script runs 0.1 and lists 1 and 0.5 as
alternatives); the components overlap heavily in all of these settings.

Each group fits :func:`~pyro_fusion.models.gmm.gmm_model` (full covariances with an LKJ prior;
its own number of components = the number it kept, as in the released code, which fits
scikit-learn's variational ``BayesianGaussianMixture`` instead) with an AutoNormal guide
started from k-means++ on its data and trained by ``--steps`` SVI steps; the guides are
extracted and fused nonparametrically (reverse KL) with the price rule ``--price`` of
:mod:`pyro_fusion.price`: ``counterpart`` (the library's default, chosen on seeds 0-9 and
reported on seeds 10-19), ``spread``, ``closest-pair`` (the default before 0.2) or ``prior``
(with :func:`~pyro_fusion.models.gmm.prior_component` of the model's own prior).
Baseline: k-means on the pooled data with ``k`` = the true number of components (8 k-means++
restarts, as the released code's ``KMeans(n_init=8)``).

Metrics between fused (or k-means) means and the true means: ``hausdorff`` and ``ot``
(equal-weight EMD), see :mod:`pyro_fusion.metrics`.

Prints one JSON object ``{"config": ..., "runs": [...], "summary": {L: ...}}``.
Usage: ``python benchmarks/gmm_paper.py [--small] [--seeds 10] [--first-seed 0] [--L 3 10]
[--separation 1.0] [--price counterpart]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyro_fusion import extract, fuse_posteriors
from pyro_fusion.metrics import hausdorff, ot_distance
from pyro_fusion.models.clustering import kmeans
from pyro_fusion.models.gmm import GMMPrior, fit_gmm, gmm_sites, prior_component
from pyro_fusion.price import RULES


def make_spd_matrix(rng: np.random.Generator, dim: int, diag: float) -> np.ndarray:
    """The released code's random covariance: ``U (diag + diag(min(s, 1))) V`` from the SVD
    of ``A^T A`` with ``A`` standard normal (``diag`` is added to every entry)."""
    a = rng.normal(size=(dim, dim))
    u, s, v = np.linalg.svd(a.T @ a)
    return u @ (diag + np.diag(np.minimum(s, 1.0))) @ v


def generate(rng: np.random.Generator, num_global: int, num_groups: int, separation: float,
             points: int = 300, dim: int = 2, local_mean_sd: float = 0.1, local_sigma_df: int = 200):
    """
    Groups of points from perturbed subsets of global components (the released ``gen_partition``).

    :return: ``(true_means [L_used, D], datasets: list of [M, D] tensors, kept: list of index arrays)``.
    """
    centres = rng.normal(0.0, math.sqrt(separation * num_global), size=(num_global, dim))
    sigmas = np.stack([make_spd_matrix(rng, dim, math.sqrt(1 + l)) for l in range(num_global)])
    keep_prob = rng.beta(1.0, 1.0, size=num_global)
    datasets, kept = [], []
    for _ in range(num_groups):
        idx = np.flatnonzero(rng.random(num_global) < keep_prob)
        while len(idx) < 2:
            idx = np.flatnonzero(rng.random(num_global) < keep_prob)
        means = rng.normal(centres[idx], local_mean_sd)
        covs = [rng.multivariate_normal(np.zeros(dim), s, size=local_sigma_df) for s in sigmas[idx]]
        covs = [x.T @ x / local_sigma_df for x in covs]  # Wishart(df, S) / df
        props = rng.dirichlet(10.0 * np.ones(len(idx)))
        labels = rng.choice(len(idx), size=points, p=props)
        data = np.empty((points, dim))
        for k in range(len(idx)):
            data[labels == k] = rng.multivariate_normal(means[k], covs[k], size=int((labels == k).sum()))
        datasets.append(torch.as_tensor(data, dtype=torch.get_default_dtype()))
        kept.append(idx)
    used = np.unique(np.concatenate(kept))
    return torch.as_tensor(centres[used], dtype=torch.get_default_dtype()), datasets, kept


def run(num_global: int, seed: int, args) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    true_means, datasets, kept = generate(rng, num_global, args.groups, args.separation, args.points)
    prior = GMMPrior()
    start = time.perf_counter()
    posteriors = []
    for j, data in enumerate(datasets):
        guide = fit_gmm(data, len(kept[j]), num_steps=args.steps, seed=1000 * seed + j, prior=prior)
        posteriors.append(extract(guide, **gmm_sites(prior), weight=len(data)))
    fit_seconds = time.perf_counter() - start
    fuse_kwargs = {"seed": seed, "price": args.price}
    if args.price == "prior":
        fuse_kwargs["prior"] = prior_component(prior, true_means.shape[-1])
    fused = fuse_posteriors(posteriors, **fuse_kwargs)  # any guide; prior= is a prior component
    fused_means, _ = fused.posterior.loc_scale("locs")
    km_means, _ = kmeans(torch.cat(datasets), len(true_means), seed=seed, restarts=8)
    return {
        "L": num_global,
        "seed": seed,
        "true": len(true_means),
        "found": fused.num_global,
        "hausdorff": hausdorff(fused_means, true_means),
        "ot": ot_distance(fused_means, true_means),
        "kmeans_hausdorff": hausdorff(km_means, true_means),
        "kmeans_ot": ot_distance(km_means, true_means),
        "local_components": [len(k) for k in kept],
        "fit_seconds": round(fit_seconds, 2),
    }


def summarize(runs: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Per ``L``: number of seeds, seeds with the exact count, and mean errors."""
    summary = {}
    for num_global in sorted({r["L"] for r in runs}):
        rs = [r for r in runs if r["L"] == num_global]
        means = {key: float(np.mean([r[key] for r in rs])) for key in ("hausdorff", "kmeans_hausdorff", "ot", "kmeans_ot")}
        summary[str(num_global)] = {
            "seeds": len(rs),
            "exact_count": sum(r["found"] == r["true"] for r in rs),
            "mean_abs_count_error": float(np.mean([abs(r["found"] - r["true"]) for r in rs])),
            **means,
        }
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a reduced run for tests")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--L", type=int, nargs="+", default=[3, 10], help="numbers of global components")
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300, help="SVI steps per group (100 leaves overlapping components unresolved: 6/10 vs 7/10 exact counts at L=3)")
    parser.add_argument("--separation", type=float, default=1.0,
                        help="variance of the global means per component (released code: 0.1, 0.5 or 1)")
    parser.add_argument("--price", choices=RULES, default=RULES[0],
                        help="rule for the price of a global component")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true", help="a progress bar over the runs on stderr")
    args = parser.parse_args(argv)
    if args.small:
        args.seeds, args.L, args.groups, args.steps = 2, [3], 3, 30
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    start = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    cases = [(num_global, seed) for num_global in args.L for seed in seeds]
    runs = [run(num_global, seed, args) for num_global, seed in tqdm(cases, desc="runs", disable=not args.progress)]
    config = {k: v for k, v in vars(args).items() if k not in ("threads", "progress")}
    config["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"config": config, "runs": runs, "summary": summarize(runs)}))


if __name__ == "__main__":
    main()
