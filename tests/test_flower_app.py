"""The README's Flower app (examples/flower_app.py) runs: its ServerApp and ClientApp exchange real
messages through an in-process grid (Flower's simulation and deployment runtimes are tested with the
tutorial's app in test_flower.py)."""
import importlib.util
import pathlib

import pytest

flwr = pytest.importorskip("flwr", reason="Flower is not installed: pip install 'pyro-fusion[flower]'")

from flwr.app import Context, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

APP = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flower_app.py"


class InProcessGrid(Grid):
    """Delivers every train message to the ClientApp's handler on a node of its own partition."""

    def __init__(self, handler, num_nodes):
        self.handler, self.nodes = handler, {100 + i: i for i in range(num_nodes)}
        self.delivered = []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.delivered.append((msg.metadata.message_type, node))
            context = Context(1, node, {"partition-id": self.nodes[node]}, RecordDict(), {})
            TaskIdentity.node_id = node
            replies.append(self.handler(msg, context))
        return replies

    def set_run(self, run):
        raise NotImplementedError

    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError


@pytest.fixture
def task_identity():
    """Messages can only be built inside a Flower task; pretend to be one."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def test_readme_flower_app_runs_rounds(task_identity, one_thread, capsys):
    spec = importlib.util.spec_from_file_location("flower_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    grid = InProcessGrid(app.train, num_nodes=3)
    app.main(grid, Context(1, 0, {}, RecordDict(), {"num-rounds": 2, "num-clients": 3}))
    out = capsys.readouterr().out
    assert sorted(grid.delivered) == sorted(("train", node) for _ in range(2) for node in (100, 101, 102))
    lines = [line for line in out.splitlines() if line.startswith("round ")]
    assert len(lines) == 2 and all(line.endswith(", 0 rejected") for line in lines)
    widths = [int(line.split("global width ")[1].split(",")[0]) for line in lines]
    assert widths[0] >= 8  # at least the widest client (4 + 2 * 2 units)
