"""
Scaling of nonparametric KL-fusion on SPAHM-style synthetic problems.

``L`` global atoms in ``D`` dimensions drawn ``N(0, L I)``; each of ``J`` clients keeps atom
``i`` with probability ``p_i ~ Beta(1, 1)`` (federated cases: ``p_i = 0.1``, about 100 atoms
per client); a kept atom is observed with mean ``atom + N(0, 0.1^2 I)``, as a Normal of
scale 0.1 or (federated cases) a float32 point estimate read with scale 0.1
(:func:`~pyro_fusion.synthetic.gaussian_atoms_problem`).

Each case runs in its own subprocess (so peak memory is its own), fuses ``--repeats`` times
and reports medians: ``seconds`` of :func:`~pyro_fusion.fuse` with the case's price rule,
of which ``rule_seconds`` in the rule and ``fuse_seconds`` after it, ``cpu_seconds``
(process time, all threads), the peak resident memory ``peak_rss_gb`` next to ``input_gb``
(the clients' natural parameters) and ``rss_before_gb`` (after generating the input),
components ``found`` against the atoms some client observed (``true``), the Hausdorff
distance between fused means and those atoms, sweeps, convergence and whether the recorded
objective never increased. ``--omp-compare`` runs every case twice, with
``OMP_WAIT_POLICY=PASSIVE`` and without it, and adds their time ratio. Prints one JSON object.
Usage: ``python benchmarks/fusion_scaling.py [--cases small|all|federated] [--repeats 3]
[--threads T] [--price default|counterpart|spread|closest-pair|NUMBER] [--omp-compare]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from _environment import run_environment

from pyro_fusion import fuse
from pyro_fusion.metrics import hausdorff
from pyro_fusion.price import RULES
from pyro_fusion.synthetic import gaussian_atoms_problem

#: keyword arguments of gaussian_atoms_problem for the federated cases
FEDERATED = {"keep_prob": 0.1, "point_scale": 0.1}
#: name -> [(L, J, D, problem options, default price rule)]
CASES = {
    "small": [(50, 10, 50, {}, "default"), (50, 100, 50, {}, "default")],
    "all": [
        (50, 10, 50, {}, "default"),
        (50, 100, 50, {}, "default"),
        (300, 50, 100, {}, "default"),
        (1000, 50, 100, {}, "default"),
    ],
    "federated": [(1000, 100, 1000, FEDERATED, "default"), (1000, 1000, 1000, FEDERATED, "default")],
}
#: price rule name -> fuse's price argument ("default": fuse's default rule, counterpart)
PRICES = {"default": None, **{rule: rule for rule in RULES}}


def _gb(kilobytes: float) -> float:
    return kilobytes / 2**20


def run_case(num_atoms: int, num_clients: int, dim: int, options: dict, rule: str, repeats: int, seed: int) -> dict:
    """One case in this process: see the module docstring."""
    if rule not in PRICES:
        rule = float(rule)
    problem = gaussian_atoms_problem(num_atoms, num_clients, dim, seed=seed, **options)
    rss_before = _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    walls, cpus, rules = [], [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fuse(problem.clients, price=PRICES.get(rule, rule))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        rules.append(result.info["rule_seconds"])
    means = result.distributions()["loc"].mean
    objective = torch.tensor(result.objective, dtype=torch.float64)
    increase = float((objective[1:] - objective[:-1]).max()) if len(objective) > 1 else 0.0
    return {
        "L": num_atoms,
        "J": num_clients,
        "D": dim,
        "family": "point_mass" if options.get("point_scale") else "normal",
        "dtype": str(problem.clients[0].dtype).replace("torch.", ""),
        "price_rule": rule,
        "seconds": statistics.median(walls),
        "seconds_min": min(walls),
        "rule_seconds": statistics.median(rules),
        "fuse_seconds": statistics.median(w - r for w, r in zip(walls, rules)),
        "cpu_seconds": statistics.median(cpus),
        "peak_rss_gb": _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "rss_before_gb": rss_before,
        "input_gb": sum(c.concat().numel() * c.concat().element_size() for c in problem.clients) / 2**30,
        "found": result.num_global,
        "true": len(problem.used_atoms),
        "hausdorff": hausdorff(means, problem.used_atoms),
        "iterations": result.iterations,
        "converged": result.converged,
        "objective_monotone": increase <= 0.0,
        "max_objective_increase": max(increase, 0.0),
        "price": result.price,
        "num_local": sum(len(c) for c in problem.clients),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def run_in_subprocess(case: tuple, args: argparse.Namespace, omp_wait_policy: str = "inherit") -> dict:
    """:func:`run_case` in a fresh interpreter; ``omp_wait_policy``: a value, None to unset
    the variable, or ``"inherit"``."""
    env = dict(os.environ)
    if omp_wait_policy is None:
        env.pop("OMP_WAIT_POLICY", None)
    elif omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    command = [sys.executable, __file__, "--run-case", json.dumps(case), "--repeats", str(args.repeats),
               "--seed", str(args.seed)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", choices=sorted(CASES), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--price", default=None, help="price rule (default, " + ", ".join(RULES) + ") or a number for every case")
    parser.add_argument("--omp-compare", action="store_true", help="run each case with and without OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--run-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.run_case is not None:
        print(json.dumps(run_case(*json.loads(args.run_case), args.repeats, args.seed)))
        return
    cases = [(L, J, D, options, args.price or rule) for L, J, D, options, rule in CASES[args.cases]]
    out = {"cases": [], "repeats": args.repeats, "seed": args.seed, "statistic": "median"}
    if args.omp_compare:
        out["omp_comparison"] = []
        for case in cases:
            passive = run_in_subprocess(case, args, "PASSIVE")
            unset = run_in_subprocess(case, args, None)
            out["cases"].append(unset)
            out["omp_comparison"].append({
                "L": case[0], "J": case[1], "D": case[2], "price_rule": case[4],
                "seconds_passive": passive["seconds"], "seconds_unset": unset["seconds"],
                "cpu_seconds_passive": passive["cpu_seconds"], "cpu_seconds_unset": unset["cpu_seconds"],
                "ratio": unset["seconds"] / passive["seconds"],
            })
    else:
        out["cases"] = [run_in_subprocess(case, args) for case in cases]
    out.update(run_environment())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
