"""
Diagonal-Normal KL cost matrix: time and GFLOP/s next to a plain matmul of the same shapes.

For each event size ``D`` and ``N = M`` components, times

- ``seconds``: :func:`~pyro_fusion.kl_cost_matrix` on :class:`~pyro_fusion.Components` built
  from Normals (what a user calls: maps to dual coordinates, row/column terms and the GEMM);
- ``gemm_seconds``: :meth:`~pyro_fusion.KLGeometry.cost` alone, with the row and column
  terms precomputed (the one fused ``addmm`` of the cost matrix);
- ``matmul_seconds``: ``torch.matmul`` of ``[N, 2D] x [2D, M]`` in the same run.

GFLOP/s count ``2 N M (2D)`` flops (the inner products) for all three. Each time is the
median (``min`` also reported) of ``--repeats`` runs after warm-up.

``accuracy``: float32 :func:`~pyro_fusion.kl_cost_matrix` of 50 x 50 Normals far from the
origin (``|mean| / scale`` up to ``ratio``: a shared offset, or atoms spread that far),
against the exact KL of the same float32 parameters in float64
(``torch.distributions.kl_divergence``); half the pairs are versions of one atom, 1 nat
apart. Reports the largest relative error, the time and the number of entries the matrix
recomputed in float64 (:func:`~pyro_fusion.cost.refine`). Prints one JSON object.
Usage: ``python benchmarks/cost_matrix.py [--repeats 15] [--dtype float32] [--threads T]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _environment import run_environment
from torch.distributions import Normal, kl_divergence

import pyro_fusion.cost
from pyro_fusion import Components, KLGeometry, kl_cost_matrix

DIMS = (16, 256, 1024)
SIZES = (100, 1000)
#: accuracy cases: |mean| / scale, event size, how the means sit far from the origin
RATIOS = (1.0, 1e2, 1e4, 1e6)
ACCURACY_DIMS = (10, 1000)
PLACEMENTS = ("offset", "spread")


def timings(fn, repeats: int, warmup: int = 3) -> list:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def normals(n: int, dim: int, gen: torch.Generator, dtype: torch.dtype) -> Components:
    loc = torch.randn(n, dim, generator=gen, dtype=dtype)
    scale = 0.5 + torch.rand(n, dim, generator=gen, dtype=dtype)
    return Components.from_distributions({"x": Normal(loc, scale)})


def run_case(dim: int, n: int, repeats: int, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(dim * 7919 + n)
    local, global_ = normals(n, dim, gen, dtype), normals(n, dim, gen, dtype)
    geometry = KLGeometry(local.families, "reverse")
    x = local.concat()
    phi_x = geometry.potential(x)
    y, c, _ = geometry.dual(global_.concat())
    a = torch.randn(n, 2 * dim, generator=gen, dtype=dtype)
    b = torch.randn(2 * dim, n, generator=gen, dtype=dtype)
    flops = 2.0 * n * n * (2 * dim)

    full = timings(lambda: kl_cost_matrix(local, global_), repeats)
    gemm = timings(lambda: KLGeometry.cost(x, phi_x, y, c), repeats)
    mm = timings(lambda: torch.matmul(a, b), repeats)
    med = {k: statistics.median(v) for k, v in (("full", full), ("gemm", gemm), ("mm", mm))}
    return {
        "D": dim,
        "N": n,
        "seconds": med["full"],
        "seconds_min": min(full),
        "gflops": flops / med["full"] / 1e9,
        "gemm_seconds": med["gemm"],
        "gemm_gflops": flops / med["gemm"] / 1e9,
        "matmul_seconds": med["mm"],
        "matmul_seconds_min": min(mm),
        "matmul_gflops": flops / med["mm"] / 1e9,
        "ratio": med["mm"] / med["full"],
    }


def accuracy_case(ratio: float, dim: int, placement: str, repeats: int, n: int = 50) -> dict:
    gen = torch.Generator().manual_seed(int(dim + ratio) % 2**31)
    if placement == "offset":
        atoms = ratio + 20 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    else:
        atoms = ratio * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    versions = atoms + torch.randn(n, dim, generator=gen, dtype=torch.float64) / dim**0.5
    local = Components.from_distributions({"x": Normal(versions.float(), torch.ones(n, dim))})
    global_ = Components.from_distributions({"x": Normal(atoms.float(), torch.full((n, dim), 1.05))})
    recomputed = []
    refine = pyro_fusion.cost.refine

    def counting(*args, **kwargs):
        recomputed.append(refine(*args, **kwargs))
        return recomputed[-1]

    pyro_fusion.cost.refine = counting
    try:
        times = timings(lambda: kl_cost_matrix(local, global_), repeats, warmup=1)
        cost = kl_cost_matrix(local, global_).double()
    finally:
        pyro_fusion.cost.refine = refine
    family = local["x"].family
    p = Normal(*(t[:, None] for t in family.loc_scale(local.concat().double())))
    q = Normal(*(t[None] for t in family.loc_scale(global_.concat().double())))
    exact = kl_divergence(q, p).sum(-1)
    return {
        "ratio": ratio,
        "D": dim,
        "placement": placement,
        "max_relative_error": float(((cost - exact).abs() / exact).max()),
        "closest_kl": float(exact.min()),
        "seconds": statistics.median(times),
        "recomputed": recomputed[-1],
        "entries": n * n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cases = [run_case(d, n, args.repeats, dtype) for d in DIMS for n in SIZES]
    accuracy = [
        accuracy_case(r, d, placement, args.repeats) for r in RATIOS for d in ACCURACY_DIMS for placement in PLACEMENTS
    ]
    out = {
        "cases": cases,
        "accuracy": accuracy,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "statistic": "median",
        **run_environment(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
