# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Federated KL-fusion with Flower: clients of different widths
#
# Ten clients hold heterogeneous slices of MNIST (class proportions ~ Dirichlet(0.5)) and
# each trains a Bayesian MLP with its *own* hidden width and a mean-field guide. Flower's
# FedAvg cannot average networks of different shapes; `pyro_fusion.flower.KLFusion`
# matches the clients' hidden units (incoming row, bias and outgoing column together),
# fuses them into a global network of learned width and sends it back: clients warm-start
# from it (and may use it as their prior) in the next round.
#
# This file is both the tutorial and a Flower app: `server_app` and `client_app` below run
# unchanged in the simulation engine (`python tutorials/federated_flower.py`) and in a
# deployment (see the README section "Federated deployments with Flower").
#
# Set `PYRO_FUSION_SMALL=1` for a quick run; `MNIST` is read from
# `$PYRO_FUSION_MNIST` (default `../shared/data/mnist`).

# %%
import functools
import json
import os
import sys
import tempfile
import time

import pyro
import pyro.distributions as dist
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from pyro.infer.autoguide import AutoNormal

from pyro_fusion.apps import small_run
from pyro_fusion.datasets.mnist import load_mnist, split_clients
from pyro_fusion.flower import KLFusion, receive_global, reply
from pyro_fusion.models.bnn import (
    BayesianMLP,
    evaluate,
    normal_guide,
    normal_posterior,
    predictive_probs,
    train_svi,
)

#: a hidden unit = its incoming weight row, its bias and its outgoing weight column
UNITS = {"hidden.0.weight": 0, "hidden.0.bias": 0, "output.weight": 1}
SMALL = small_run()
#: every setting can be overridden by the run config (deployment) or the JSON in
#: $PYRO_FUSION_FLOWER_SETTINGS (simulation)
DEFAULTS = {
    "mode": "fusion",          # "fusion" (KLFusion) or "fedavg" (Flower's FedAvg, equal widths)
    "num-rounds": 3,
    "epochs": 2 if SMALL else 5,
    "widths": "8,12,16" if SMALL else "30,40,50,60,70",  # cycled over clients
    "fedavg-width": 12 if SMALL else 50,
    "train-size": 2000 if SMALL else 10000,
    "test-size": 1000 if SMALL else 10000,
    "alpha": 0.5,
    "use-prior": False,        # the global posterior as the next round's prior
    "max-width": 400,
    "num-samples": 20,         # weight draws of the posterior predictive
    "output": "",              # where the ServerApp writes its per-round JSON
}


def settings(context: Context) -> dict:
    """DEFAULTS, then $PYRO_FUSION_FLOWER_SETTINGS, then the run config."""
    out = dict(DEFAULTS)
    out.update(json.loads(os.environ.get("PYRO_FUSION_FLOWER_SETTINGS", "{}")))
    out.update({k: v for k, v in context.run_config.items() if k in DEFAULTS})
    return out


@functools.lru_cache(maxsize=4)
def client_data(train_size: int, num_clients: int, alpha: float, partition: int):
    data = load_mnist(train=True)
    x, y = data.images[:train_size], data.labels[:train_size]
    part = split_clients(y, num_clients, alpha=alpha, seed=0)[partition]
    return x[part], y[part]


@functools.lru_cache(maxsize=2)
def test_data(test_size: int):
    data = load_mnist(train=False)
    return data.images[:test_size], data.labels[:test_size]


# %% [markdown]
# ## The client
#
# Each round: clear the param store and read the global posterior (`receive_global`),
# size the network to the global width (its own width in round 1), warm-start the guide
# there, train by SVI on the local data and reply with the extracted guide and the number
# of examples, which is the client's fusion weight.

# %%
client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = settings(context)
    pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    x, y = client_data(cfg["train-size"], n, cfg["alpha"], pid)
    if cfg["mode"] == "fedavg":
        return _train_fedavg(msg, cfg, x, y, pid)
    start = receive_global(msg, max_width=cfg["max-width"])
    widths = [int(w) for w in str(cfg["widths"]).split(",")]
    width = widths[pid % len(widths)] if start.fused is None else start.fused.num_global
    model = BayesianMLP(784, (width,), 10)
    guide = AutoNormal(model, init_loc_fn=start.init_loc_fn(_random_init(model, pid)), init_scale=0.05)
    local = start.prior(model) if cfg["use-prior"] else model
    losses = train_svi(local, guide, x, y, num_epochs=cfg["epochs"], batch_size=100, lr=0.01, seed=pid)
    return reply(msg, guide, num_examples=len(x), components=UNITS, metrics={"train-loss": losses[-1]})


def _random_init(model: BayesianMLP, seed: int):
    locs = model.init_locs(seed)
    return lambda site: locs[site["name"]]


def _train_fedavg(msg: Message, cfg: dict, x, y, pid: int) -> Message:
    """The baseline: equal widths, Flower's FedAvg over the guides' locs and scales."""
    pyro.clear_param_store()
    model = BayesianMLP(784, (cfg["fedavg-width"],), 10)
    guide = normal_guide(model, _posterior(msg.content["arrays"]))
    losses = train_svi(model, guide, x, y, num_epochs=cfg["epochs"], batch_size=100, lr=0.01, seed=pid)
    arrays = {}
    for name, d in normal_posterior(guide).items():
        arrays[f"{name}.loc"], arrays[f"{name}.scale"] = d.loc, d.scale
    content = RecordDict({
        "arrays": ArrayRecord(_numpy(arrays)),
        "metrics": MetricRecord({"num-examples": len(x), "train-loss": losses[-1]}),
    })
    return Message(content, reply_to=msg)


def _numpy(tensors: dict) -> dict:
    return {k: Array(v.detach().numpy()) for k, v in tensors.items()}


def _posterior(arrays: ArrayRecord) -> dict:
    """site -> Normal from FedAvg's arrays ``<site>.loc`` / ``<site>.scale``."""
    values = {k: torch.from_numpy(a.numpy()) for k, a in arrays.items()}
    sites = {k.rsplit(".", 1)[0] for k in values}
    return {s: dist.Normal(values[f"{s}.loc"], values[f"{s}.scale"]) for s in sites}


# %% [markdown]
# ## The server
#
# `KLFusion` validates every reply (sender, keys, shapes against the declared ones and
# `max_width`, finite values, domains, `num-examples`, format version and round), fuses the
# accepted ones with the clients' `Normal(0, 1)` prior setting the price of a new unit,
# and keeps each round's assignments, width and rejections in `strategy.history`. The
# global model is evaluated on the test set after every round.

# %%
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = settings(context)
    x_test, y_test = test_data(cfg["test-size"])
    rounds, started = [], time.time()

    def evaluate_global(server_round: int, posterior: dict, width: int) -> MetricRecord:
        model = BayesianMLP(784, (width,), 10)
        probs = predictive_probs(model, posterior, x_test, num_samples=cfg["num-samples"])
        ev = evaluate(probs, y_test)
        rounds.append({"round": server_round, "accuracy": ev.accuracy, "nll": ev.nll, "width": width,
                       "seconds": time.time() - started})
        return MetricRecord({"accuracy": ev.accuracy, "nll": ev.nll, "width": width})

    num_nodes = len(list(grid.get_node_ids())) or 2
    sampling = dict(fraction_evaluate=0.0, min_train_nodes=num_nodes, min_available_nodes=num_nodes)
    if cfg["mode"] == "fedavg":
        strategy = FedAvg(**sampling)
        model = BayesianMLP(784, (cfg["fedavg-width"],), 10)
        locs = model.init_locs(0)
        init = {}
        for name, loc in locs.items():
            init[f"{name}.loc"], init[f"{name}.scale"] = loc, torch.full_like(loc, 0.05)
        initial = ArrayRecord(_numpy(init))

        def evaluate_fn(server_round, arrays):
            if server_round == 0:
                return None
            return evaluate_global(server_round, _posterior(arrays), cfg["fedavg-width"])
    else:
        strategy = KLFusion(cfg["max-width"], 60000, prior_scale=1.0, **sampling)
        initial = ArrayRecord()

        def evaluate_fn(server_round, arrays):
            fused = strategy.global_posterior
            if server_round == 0 or fused is None:
                return None
            posterior = {name: dist.Normal(*fused.loc_scale(name)) for name in fused.site_shapes}
            return evaluate_global(server_round, posterior, fused.num_global)

    result = strategy.start(grid, initial, num_rounds=cfg["num-rounds"], evaluate_fn=evaluate_fn)
    for row in rounds:
        train_metrics = result.train_metrics_clientapp.get(row["round"], {})
        row.update({k: train_metrics[k] for k in ("num-rejected", "train-loss") if k in train_metrics})
    if cfg["output"]:
        with open(cfg["output"], "w") as f:
            json.dump({"mode": cfg["mode"], "rounds": rounds}, f)


# %% [markdown]
# ## Running it in the simulation engine
#
# Every Flower run here has telemetry, update checks and runtime dependency installation
# switched off and a private `FLWR_HOME`.

# %%
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def simulate(num_clients: int = 10, **overrides) -> dict:
    """Run the app in Flower's simulation engine; returns the ServerApp's JSON."""
    from flwr.simulation import run_simulation

    with tempfile.TemporaryDirectory() as home:
        output = os.path.join(home, "rounds.json")
        os.environ.update(FLOWER_ENV, FLWR_HOME=home,
                          PYRO_FUSION_FLOWER_SETTINGS=json.dumps({**overrides, "output": output}))
        os.environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                    os.environ.get("PYTHONPATH", "")])
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"num_cpus": int(os.environ.get("PYRO_FUSION_FLOWER_CPUS", "2")),
                                 "include_dashboard": False}}
        run_simulation(server_app, client_app, num_supernodes=num_clients, backend_config=backend)
        if not os.path.isfile(output):
            raise RuntimeError("the ServerApp wrote no output: see the log above")
        with open(output) as f:
            out = json.load(f)
    if len(out["rounds"]) != overrides.get("num-rounds", DEFAULTS["num-rounds"]):
        raise RuntimeError(f"the run finished {len(out['rounds'])} rounds: see the log above")
    return out


# %% [markdown]
# ## KL-fusion vs FedAvg vs one-shot fusion
#
# * **KL-fusion**: clients of widths 30..70, three rounds.
# * **FedAvg**: every client the same width (50), Flower's own FedAvg on the guides'
#   locs and scales, three rounds.
# * **One-shot fusion**: one round in which every client trains as long as it does in
#   three rounds, fused once, no further communication.

# %%
if __name__ == "__main__":
    # the simulation's workers import the apps by module name, not from __main__
    import federated_flower as app

    rounds, epochs = DEFAULTS["num-rounds"], DEFAULTS["epochs"]
    runs = {
        "kl_fusion": app.simulate(),
        "fedavg_equal_width": app.simulate(mode="fedavg"),
        "one_shot_fusion": app.simulate(**{"num-rounds": 1, "epochs": rounds * epochs}),
    }
    print(json.dumps({"settings": {k: DEFAULTS[k] for k in DEFAULTS if k != "output"}, "runs": runs}))
    sys.stdout.flush()
