"""
Scaling of nonparametric KL-fusion on SPAHM-style synthetic problems.

``L`` global atoms in ``D`` dimensions drawn ``N(0, L I)``; each of ``J`` clients keeps atom
``i`` with probability ``p_i ~ Beta(1, 1)``; a kept atom is observed as a Normal with mean
``atom + N(0, 0.1^2 I)`` and scale 0.1 (:func:`~pyro_fusion.synthetic.gaussian_atoms_problem`).
Each case runs :func:`~pyro_fusion.fuse` with the default price and reports the wall time of
``fuse`` alone (min and median over ``--repeats`` runs), the number of global components
found against the number of atoms some client observed (``true``), the Hausdorff distance
between fused means and those atoms, the sweeps, convergence and whether the recorded
objective never increased. Prints one JSON object.
Usage: ``python benchmarks/fusion_scaling.py [--cases small|all] [--repeats 3] [--threads T]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _environment import run_environment

from pyro_fusion import fuse
from pyro_fusion.metrics import hausdorff
from pyro_fusion.synthetic import gaussian_atoms_problem

#: (L, J, D)
CASES = {
    "small": [(50, 10, 50), (50, 100, 50)],
    "all": [(50, 10, 50), (50, 100, 50), (300, 50, 100), (1000, 50, 100)],
}


def run_case(num_atoms: int, num_clients: int, dim: int, repeats: int, seed: int) -> dict:
    problem = gaussian_atoms_problem(num_atoms, num_clients, dim, seed=seed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fuse(problem.clients)
        times.append(time.perf_counter() - start)
    means = result.distributions()["loc"].mean
    objective = torch.tensor(result.objective, dtype=torch.float64)
    increase = float((objective[1:] - objective[:-1]).max()) if len(objective) > 1 else 0.0
    return {
        "L": num_atoms,
        "J": num_clients,
        "D": dim,
        "seconds": min(times),
        "seconds_median": statistics.median(times),
        "found": result.num_global,
        "true": len(problem.used_atoms),
        "hausdorff": hausdorff(means, problem.used_atoms),
        "iterations": result.iterations,
        "converged": result.converged,
        "objective_monotone": increase <= 0.0,
        "max_objective_increase": max(increase, 0.0),
        "price": result.price,
        "num_local": sum(len(c) for c in problem.clients),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", choices=sorted(CASES), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cases = [run_case(*case, args.repeats, args.seed) for case in CASES[args.cases]]
    out = {
        "cases": cases,
        "repeats": args.repeats,
        "seed": args.seed,
        **run_environment(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
