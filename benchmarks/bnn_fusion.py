"""
One-shot federated fusion of Bayesian MLPs on MNIST and Fashion-MNIST.

J clients each train a :class:`~pyro_fusion.models.bnn.BayesianMLP` with an AutoNormal guide
by SVI on their own share of the training set (heterogeneous: class proportions from
Dirichlet(0.5); homogeneous: a random equal split). Rows, all scored on the official test
set by the posterior predictive (``--samples`` weight draws; accuracy as a fraction, NLL in
nats per example):

- ``local_best`` / ``local_mean``: the best local model (by test accuracy) and the mean over clients;
- ``ensemble``: the average of the J local predictive distributions;
- ``naive_average``: one round of FedAvg on the guide parameters (elementwise average);
- ``fused``: :func:`~pyro_fusion.adapters.bnn.fuse_mlps` (KL-fusion, reverse KL by default,
  default price rule ``"counterpart"``), no retraining;
- ``fused_class_counts``: ``fused`` with the clients' label histograms (``class_counts``): each
  class's logit weighted by the clients' share of that class's examples;
- ``fused_point``: the same engine on the posterior means only (PointMass family, a point
  estimate);
  ``fused_point_class_counts``: the same with ``class_counts``, the like-for-like baseline of
  ``fused_class_counts``;
- ``fused_finetuned``: ``fused`` warm-started and trained by SVI on the largest client's data
  with the fused posterior as the prior (:class:`~pyro_fusion.PosteriorPrior`: the KL term
  pulls towards what all clients learned); ``fused_finetuned_model_prior``: the same under the
  model's own ``Normal(0, prior_scale)`` prior, which lets one client's data overwrite the rest;
- ``pooled``: one model trained on all clients' data together (what fusion cannot see).

The fifth setting repeats the first with every model trained under the label-shift likelihood
of its own data (``BayesianMLP(label_prior=counts + 1)``); all rows then predict with a
uniform label prior (JSON key ``label_prior``). ``--label-prior no|yes`` keeps only the
settings without or with it.

Prints one JSON list, one object per setting (``seconds``: wall clock, ``cpu_seconds``: this
process's CPU time, the better measure on a shared machine). ``--small`` runs a reduced version
for tests.
Usage: ``python benchmarks/bnn_fusion.py [--small] [--threads 1] [--layers 1]
[--datasets mnist] [--label-prior no|yes] [--price-rule counterpart|location|...] [--price-scale 1]
[--direction reverse|forward] [--combine average|product] [--min-steps 0]``.
``--min-steps 1000`` trains every client long enough for its guide's scales to converge
(the default 10 epochs leave each client's scales set by its number of steps).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Dict, List, Optional

import pyro
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from tqdm.auto import tqdm

from _environment import data_path

from pyro_fusion import PosteriorPrior, Price, fuse_mlps
from pyro_fusion.adapters.bnn import PRICE_RULES, naive_average
from pyro_fusion.price import RULES
from pyro_fusion.datasets.mnist import load_fashion_mnist, load_mnist, split_clients
from pyro_fusion.models.bnn import (
    BayesianMLP,
    evaluate,
    normal_guide,
    normal_posterior,
    predictive_probs,
    train_svi,
)

LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}
#: data folders (None: the loader's default, the Debian package's folder for Fashion-MNIST)
ROOTS = {"mnist": data_path("mnist", "PYRO_FUSION_MNIST"), "fashion-mnist": None}
SPLIT_ALPHA = {"heterogeneous": 0.5, "homogeneous": None}

#: (dataset, split, hidden layers, epochs, label prior) of the full benchmark, primary first
SETTINGS = [
    ("mnist", "heterogeneous", 1, 10, False),
    ("mnist", "heterogeneous", 2, 10, False),
    ("mnist", "homogeneous", 1, 10, False),
    ("fashion-mnist", "heterogeneous", 1, 2, False),
    ("mnist", "heterogeneous", 1, 10, True),
]
SMALL_SETTINGS = [
    ("mnist", "heterogeneous", 1, 2, False),
    ("mnist", "heterogeneous", 2, 2, False),
    ("mnist", "heterogeneous", 1, 2, True),
]


def _row(probs: torch.Tensor, labels: torch.Tensor, width) -> Dict[str, object]:
    accuracy, nll = evaluate(probs, labels)
    return {"accuracy": accuracy, "nll": nll, "width": width}


def run_setting(
    dataset: str,
    split: str,
    layers: int,
    *,
    num_clients: int = 10,
    width: int = 100,
    epochs: int = 10,
    min_steps: int = 0,
    label_prior: bool = False,
    finetune_epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.01,
    prior_scale: float = 1.0,
    init_scale: float = 0.01,
    shared_init: bool = False,
    num_samples: int = 20,
    train_size: Optional[int] = None,
    test_size: Optional[int] = None,
    price_rule: str = "counterpart",
    price_scale: float = 1.0,
    direction: str = "reverse",
    combine: str = "average",
    seed: int = 0,
) -> Dict[str, object]:
    """Train the clients of one setting, fuse them and score every row (``price_rule``,
    ``price_scale``, ``direction`` and ``combine`` are passed to
    :func:`~pyro_fusion.adapters.bnn.fuse_mlps`; the point variant gets the same price rule).
    With ``label_prior``, every model is trained under the label-shift likelihood with its
    own data's class mix (``BayesianMLP(label_prior=counts + 1)``) and every row predicts
    with a uniform one. Clients and the pooled model train for ``epochs``, or for more epochs
    where that is under ``min_steps`` SVI steps (so small clients' scales converge too)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    train, test = LOADERS[dataset](ROOTS[dataset], train=True), LOADERS[dataset](ROOTS[dataset], train=False)
    x, y = train.images[:train_size], train.labels[:train_size]
    x_test, y_test = test.images[:test_size], test.labels[:test_size]
    parts = split_clients(y, num_clients, alpha=SPLIT_ALPHA[split], seed=seed)
    sizes = [len(p) for p in parts]
    hidden = (width,) * layers

    def mlp(widths, ys: Optional[torch.Tensor] = None) -> BayesianMLP:
        """A network for training on labels ``ys``, or for prediction (``None``)."""
        mix = torch.bincount(ys, minlength=10) + 1.0 if label_prior and ys is not None else None
        return BayesianMLP(x.shape[-1], widths, 10, prior_scale=prior_scale, label_prior=mix)

    def epochs_for(num_examples: int) -> int:
        return max(epochs, math.ceil(min_steps / math.ceil(num_examples / batch_size)))

    def train_model(j: int, xs: torch.Tensor, ys: torch.Tensor):
        model = mlp(hidden, ys)
        locs = model.init_locs(seed if shared_init else seed + 1 + j)
        guide = AutoNormal(model, init_loc_fn=init_to_value(values=locs), init_scale=init_scale)
        train_svi(model, guide, xs, ys, epochs_for(len(xs)), batch_size, lr, seed=seed + j)
        return mlp(hidden), normal_posterior(guide)

    def predict(model: BayesianMLP, posterior) -> torch.Tensor:
        return predictive_probs(model, posterior, x_test, num_samples, seed=seed)

    local_model, posteriors, local_probs = None, [], []
    for j, part in enumerate(parts):
        local_model, posterior = train_model(j, x[part], y[part])
        posteriors.append(posterior)
        local_probs.append(predict(local_model, posterior))
    local = [evaluate(p, y_test) for p in local_probs]
    best = max(range(num_clients), key=lambda j: local[j].accuracy)

    rows: Dict[str, Dict[str, object]] = {}
    common = dict(price=Price(price_rule, price_scale), prior_scale=prior_scale, seed=seed)
    fused = fuse_mlps(posteriors, sizes, direction=direction, combine=combine, **common)
    rows["fused"] = _row(predict(fused.model, fused.posterior), y_test, list(fused.model.widths))
    counts = torch.stack([torch.bincount(y[p], minlength=10) for p in parts])
    by_class = fuse_mlps(
        posteriors, sizes, direction=direction, combine=combine, class_counts=counts, **common
    )
    rows["fused_class_counts"] = _row(
        predict(by_class.model, by_class.posterior), y_test, list(by_class.model.widths)
    )
    points = {
        row: fuse_mlps(posteriors, sizes, point_scale=prior_scale, **extra, **common)
        for row, extra in (
            ("fused_point", {}),
            ("fused_point_class_counts", {"class_counts": counts}),
        )
    }
    for row, point in points.items():
        rows[row] = _row(predict(point.model, point.posterior), y_test, list(point.model.widths))
    rows["naive_average"] = _row(
        predict(local_model, naive_average(posteriors, sizes)), y_test, list(hidden)
    )
    rows["ensemble"] = _row(
        torch.stack(local_probs).mean(0), y_test, [width * num_clients] * layers
    )
    rows["local_best"] = {
        "accuracy": local[best].accuracy,
        "nll": local[best].nll,
        "width": list(hidden),
    }
    rows["local_mean"] = {
        "accuracy": sum(e.accuracy for e in local) / num_clients,
        "nll": sum(e.nll for e in local) / num_clients,
        "width": list(hidden),
    }
    largest = max(range(num_clients), key=lambda j: sizes[j])
    tuned = mlp(fused.model.widths, y[parts[largest]])  # the largest client's likelihood
    for row, finetuned_model in (
        ("fused_finetuned", PosteriorPrior(fused.posterior)(tuned)),
        ("fused_finetuned_model_prior", tuned),
    ):
        guide = normal_guide(fused.model, fused.posterior)
        train_svi(
            finetuned_model,
            guide,
            x[parts[largest]],
            y[parts[largest]],
            finetune_epochs,
            batch_size,
            lr,
            seed=seed,
        )
        rows[row] = _row(
            predict(fused.model, normal_posterior(guide)), y_test, list(fused.model.widths)
        )
    pooled_model, pooled_posterior = train_model(num_clients, x, y)
    rows["pooled"] = _row(predict(pooled_model, pooled_posterior), y_test, list(hidden))
    return {
        "dataset": dataset,
        "split": split,
        "layers": layers,
        "seed": seed,
        "clients": num_clients,
        "client_sizes": sizes,
        "train_size": len(x),
        "test_size": len(x_test),
        "epochs": epochs,
        "min_steps": min_steps,
        "client_epochs": [epochs_for(n) for n in sizes],
        "pooled_epochs": epochs_for(len(x)),
        "label_prior": label_prior,
        "samples": num_samples,
        "price_rule": price_rule,
        "price_scale": price_scale,
        "direction": direction,
        "combine": combine,
        "fused_price": [r.price for r in fused.result],
        "fused_point_price": [r.price for r in points["fused_point"].result],
        "rows": rows,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def main(argv: Optional[List[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="reduced sizes (for the test suite)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process (default 1: the machine is shared)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--price-rule", choices=RULES + PRICE_RULES, default=RULES[0])
    parser.add_argument("--price-scale", type=float, default=1.0, help="multiplies the price")
    parser.add_argument("--direction", choices=("reverse", "forward"), default="reverse")
    parser.add_argument("--combine", choices=("average", "product"), default="average")
    parser.add_argument(
        "--min-steps",
        type=int,
        default=0,
        help="train clients and pooled model for at least this many SVI steps (default 0: "
        "the settings' epochs only)",
    )
    parser.add_argument(
        "--layers", type=int, nargs="*", help="only the settings with these hidden-layer counts"
    )
    parser.add_argument("--datasets", nargs="*", help="only these data sets")
    parser.add_argument(
        "--label-prior",
        choices=("no", "yes"),
        help="only the settings whose models are trained without / with their label prior",
    )
    parser.add_argument("--progress", action="store_true", help="a progress bar over the settings on stderr")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    if args.small:
        options = dict(num_clients=3, width=20, train_size=1500, test_size=1000, batch_size=50)
        settings = SMALL_SETTINGS
    else:
        options, settings = {}, SETTINGS
    settings = [
        s
        for s in settings
        if (args.layers is None or s[2] in args.layers)
        and (args.datasets is None or s[0] in args.datasets)
        and (args.label_prior is None or s[4] == (args.label_prior == "yes"))
    ]
    options.update(
        price_rule=args.price_rule,
        price_scale=args.price_scale,
        direction=args.direction,
        combine=args.combine,
        min_steps=args.min_steps,
    )
    results = []
    for dataset, split, layers, epochs, label_prior in tqdm(settings, desc="settings", disable=not args.progress):
        try:
            results.append(
                run_setting(
                    dataset,
                    split,
                    layers,
                    epochs=epochs,
                    label_prior=label_prior,
                    seed=args.seed,
                    **options,
                )
            )
            print(
                f"{dataset} {split} {layers} layer(s)"
                f"{', label prior' if label_prior else ''}: {results[-1]['seconds']:.0f} s",
                file=sys.stderr,
            )
        except FileNotFoundError as e:
            results.append(
                {
                    "dataset": dataset,
                    "split": split,
                    "layers": layers,
                    "label_prior": label_prior,
                    "skipped": str(e),
                }
            )
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
