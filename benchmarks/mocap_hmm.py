"""
Benchmark of the main job (issue 4): fuse per-sequence HMMs on mocap6 over several seeds.

Runs :func:`pyro_fusion.apps.mocap.run_demo` once per seed (nothing written to disk) and prints one
JSON object: the per-seed rows (fused, fused_em, pooled, kmeans, local_mean, local_on_all_best,
local_on_all_mean, seconds) and the mean and
standard deviation of every number over seeds.

    python benchmarks/mocap_hmm.py --seeds 0 1 2 3 4 --num-steps 400
"""

import argparse
import json
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_fusion.apps.mocap import run_demo

ROWS = ("fused", "fused_em", "pooled", "kmeans", "local_mean", "local_on_all_best", "local_on_all_mean")


def summarise(runs):
    summary = {}
    for row in ROWS:
        summary[row] = {
            key: {
                "mean": float(np.mean([r[row][key] for r in runs])),
                "std": float(np.std([r[row][key] for r in runs])),
            }
            for key in runs[0][row]
        }
    seconds = [r["seconds"] for r in runs]
    summary["seconds"] = {"mean": float(np.mean(seconds)), "std": float(np.std(seconds))}
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-steps", "--steps", dest="num_steps", type=int, default=400)
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr (seeds, each run's steps)")
    args = parser.parse_args()
    runs = []
    for seed in tqdm(args.seeds, desc="seeds", disable=not args.progress):
        metrics = run_demo(seed=seed, out=None, num_steps=args.num_steps, progress=args.progress)
        runs.append({key: metrics[key] for key in ROWS + ("seconds", "em_seconds", "total_seconds", "price")} | {"seed": seed})
    result = {
        "benchmark": "mocap_hmm",
        "num_steps": args.num_steps,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "true_states": metrics["true_states"],
        "per_seed": runs,
        "summary": summarise(runs),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
