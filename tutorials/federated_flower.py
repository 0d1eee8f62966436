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
# unchanged in Flower's simulation runtime (`python tutorials/federated_flower.py` submits it with
# `flwr run` to a local SuperLink) and in a deployment (see the README section "Federated
# deployments with Flower").
#
# Set `PYRO_FUSION_SMALL=1` for a quick run; MNIST is not shipped: it is read from the folder
# `$PYRO_FUSION_MNIST`.

# %%
import functools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
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
#: every setting can be overridden by the run config (the app's pyproject.toml, `flwr run --run-config`)
DEFAULTS = {
    "mode": "fusion",          # "fusion" (KLFusion) or "fedavg" (Flower's FedAvg, equal widths)
    "num-clients": 10,         # the server waits for this many SuperNodes and trains all of them
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
    """DEFAULTS, then the run config."""
    return {**DEFAULTS, **{k: v for k, v in context.run_config.items() if k in DEFAULTS}}


@functools.lru_cache(maxsize=4)
def client_data(train_size: int, num_clients: int, alpha: float, partition: int):
    data = load_mnist(train=True)  # from $PYRO_FUSION_MNIST
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
# accepted ones (the price of a new unit from the replies' own units, the default rule),
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

    # wait until every SuperNode has connected, then train all of them in every round
    num_nodes = int(cfg["num-clients"])
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
        row.update({k: train_metrics[k] for k in ("num-accepted", "num-rejected", "train-loss") if k in train_metrics})
    if cfg["output"]:
        with open(cfg["output"], "w") as f:
            json.dump({"mode": cfg["mode"], "rounds": rounds}, f)


# %% [markdown]
# ## Running it in the simulation runtime
#
# `simulate` packages this file as a Flower app (a folder with a `pyproject.toml`), starts a local
# SuperLink in simulation mode on free loopback ports, submits the app with `flwr run ... --stream`
# (the number of virtual SuperNodes goes in `--federation-config`, the settings in the app's run
# config) and stops the SuperLink when the run is over. Telemetry, update checks and runtime
# dependency installation are switched off, `FLWR_HOME` is private, and Flower's and Ray's logs go
# to a file that is printed only if the run fails.

# %%
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
#: this file (in a notebook: the copy in the working directory)
APP_FILE = pathlib.Path(globals().get("__file__", "federated_flower.py")).resolve()
APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "pyro-fusion-flower"
version = "1.0.0"
license = "Apache-2.0"
dependencies = ["flwr>=1.42"]

[tool.flwr.app]
publisher = "pyro-fusion"

[tool.flwr.app.components]
serverapp = "federated_flower:server_app"
clientapp = "federated_flower:client_app"

[tool.flwr.app.config]
"""


def write_app(folder: pathlib.Path, config: dict) -> None:
    """This file as a Flower app in ``folder``, with ``config`` as its run config."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP_FILE, folder / "federated_flower.py")
    (folder / "pyproject.toml").write_text(APP_TOML + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))


def simulate(num_clients: int = 10, **overrides) -> dict:
    """Run the app with ``num_clients`` virtual SuperNodes in Flower's simulation runtime; returns the
    ServerApp's JSON (one row per round)."""
    bin_dir = pathlib.Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        home, app = pathlib.Path(tmp), pathlib.Path(tmp) / "app"
        config = {**DEFAULTS, **overrides, "num-clients": num_clients, "output": str(home / "rounds.json")}
        write_app(app, config)
        port = _free_port()
        (home / "config.toml").write_text(f'[superlink.sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home),
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        cpus = int(os.environ.get("PYRO_FUSION_FLOWER_CPUS", "2"))
        log = home / "superlink.log"
        with open(log, "w") as stream:
            superlink = subprocess.Popen(
                [str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
                 "--port", str(port), "--disable-runtime-dependency-installation"],
                env=env, stdout=stream, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
        try:
            _wait_for_port(port, superlink, log)
            run = subprocess.run(
                [str(bin_dir / "flwr"), "run", str(app), "sim", "--stream", "--federation-config",
                 f"num-supernodes={num_clients} client-resources-num-cpus=1 init-args-num-cpus={cpus}"],
                env=env, capture_output=True, text=True, cwd=tmp, timeout=3600)
            if not (home / "rounds.json").is_file():
                raise RuntimeError(f"the ServerApp wrote no output:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
                                   f"{log.read_text()[-3000:]}")
            out = json.loads((home / "rounds.json").read_text())
        finally:
            os.killpg(superlink.pid, signal.SIGTERM)
            try:
                superlink.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(superlink.pid, signal.SIGKILL)
                superlink.wait()
    if len(out["rounds"]) != config["num-rounds"]:
        raise RuntimeError(f"the run finished {len(out['rounds'])} of {config['num-rounds']} rounds")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: pathlib.Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"flower-superlink did not listen on port {port} within {timeout} s")


# %% [markdown]
# ## KL-fusion vs FedAvg vs one-shot fusion
#
# Ten clients in every run, all of them trained in every round:
#
# * **KL-fusion**: clients of their own widths, three rounds.
# * **FedAvg**: every client the same width, Flower's own FedAvg on the guides' locs and
#   scales, three rounds.
# * **One-shot fusion**: one round in which every client trains as long as it does in
#   three rounds, fused once, no further communication.

# %%
if __name__ == "__main__":
    rounds, epochs = DEFAULTS["num-rounds"], DEFAULTS["epochs"]
    runs = {
        "KL-fusion, 3 rounds": simulate(),
        "FedAvg (equal widths), 3 rounds": simulate(mode="fedavg"),
        "one-shot KL-fusion": simulate(**{"num-rounds": 1, "epochs": rounds * epochs}),
    }
    print(f"{'run':<32}{'round':>6}{'clients':>9}{'width':>7}{'accuracy':>10}{'NLL':>7}")
    for name, out in runs.items():
        for row in out["rounds"]:
            clients = row.get("num-accepted", "-")  # FedAvg does not count its replies
            print(f"{name:<32}{row['round']:>6}{clients:>9}{row['width']:>7}{row['accuracy']:>10.3f}{row['nll']:>7.2f}")
