"""A complete Flower app: clients train Bayesian MLPs of their own widths, KLFusion fuses them."""
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from pyro.infer.autoguide import AutoNormal

from pyro_fusion.flower import KLFusion, receive_global, reply
from pyro_fusion.models.bnn import BayesianMLP, train_svi

#: one hidden unit = its incoming weight row, its bias and its outgoing weight column
UNITS = {"hidden.0.weight": 0, "hidden.0.bias": 0, "output.weight": 1}
client_app, server_app = ClientApp(), ServerApp()


def local_data(partition: int, num_examples: int = 200):
    """Each SuperNode's own data (here synthetic: two classes split by x0 + x1 > 0)."""
    x = torch.randn(num_examples, 4, generator=torch.Generator().manual_seed(partition))
    return x, (x[:, 0] + x[:, 1] > 0).long()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    x, y = local_data(partition)
    start = receive_global(msg)  # the global posterior of the last round; None in round 1
    width = start.fused.num_global if start.fused else 4 + 2 * partition  # own width in round 1
    model = BayesianMLP(4, (width,), 2)
    guide = AutoNormal(model, init_loc_fn=start.init_loc_fn())  # warm start at the global posterior
    train_svi(start.prior(model), guide, x, y, num_epochs=5, batch_size=50)  # global posterior as prior
    return reply(msg, guide, num_examples=len(x), components=UNITS)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    num_clients = int(context.run_config.get("num-clients", 3))  # wait for all of them, train all of them
    strategy = KLFusion(max_width=400, max_num_examples=60000, prior_scale=1.0, fraction_evaluate=0.0,
                        min_available_nodes=num_clients, min_train_nodes=num_clients)
    strategy.start(grid, ArrayRecord(), num_rounds=int(context.run_config.get("num-rounds", 3)))
    for server_round, fusion in strategy.history.items():
        print(f"round {server_round}: global width {fusion.width}, {len(fusion.rejections)} rejected")
