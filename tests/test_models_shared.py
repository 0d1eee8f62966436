"""The helpers every model shares: one k-means (:mod:`pyro_fusion.models.clustering`) and one SVI
loop (:mod:`pyro_fusion.models.training`)."""
import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_fusion.metrics import hausdorff
from pyro_fusion.models.clustering import kmeans, spherical_kmeans
from pyro_fusion.models.training import svi_steps
from pyro_fusion.sparse_counts import SparseCounts

CENTRES = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])


def clustered(num_points, num_clusters, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return CENTRES[torch.arange(num_points) % num_clusters] + 0.5 * torch.randn(num_points, 2, generator=gen)


@pytest.mark.parametrize("k", [2, 3])
def test_kmeans_finds_separated_clusters(k):
    data = clustered(90, k)
    before = data.clone()
    centres, labels = kmeans(data, k, restarts=3)
    assert hausdorff(centres, CENTRES[:k]) < 0.3
    assert labels.shape == (90,) and len(labels.unique()) == k
    assert torch.equal(data, before)


@pytest.mark.parametrize("k, restarts", [(0, 1), (11, 1), (2, 0)])
def test_kmeans_rejects_bad_arguments(k, restarts):
    with pytest.raises(ValueError, match="num_clusters" if restarts else "restarts"):
        kmeans(torch.randn(10, 2), k, restarts=restarts)


def test_kmeans_normalize_clusters_by_direction():
    # two directions, each at lengths 1 and 100: Euclidean k-means splits by length, spherical by direction
    gen = torch.Generator().manual_seed(0)
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])[torch.arange(40) % 2]
    lengths = torch.where(torch.arange(40) % 4 < 2, 1.0, 100.0).unsqueeze(-1)
    data = directions * lengths + 0.01 * torch.randn(40, 3, generator=gen)
    _, by_length = kmeans(data, 2, seed=1, restarts=4)
    centres, by_direction = kmeans(data, 2, seed=1, restarts=4, normalize=True)
    same_direction = directions[:, None, 0] == directions[None, :, 0]
    assert torch.equal(by_direction[:, None] == by_direction[None, :], same_direction)
    assert not torch.equal(by_length[:, None] == by_length[None, :], same_direction)
    assert torch.allclose(centres.norm(dim=-1), torch.ones(2), atol=1e-3)


def test_kmeans_is_seeded():
    data = clustered(60, 3)
    a, b = kmeans(data, 3, seed=4), kmeans(data, 3, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def documents_by_direction(num_docs=40, seed=0):
    """Sparse nonnegative rows along two disjoint sets of columns, at lengths 1 and 100."""
    gen = torch.Generator().manual_seed(seed)
    group = torch.arange(num_docs) % 2
    support = torch.zeros(num_docs, 12)
    support[group == 0, :6] = 1.0
    support[group == 1, 6:] = 1.0
    lengths = torch.where(torch.arange(num_docs) % 4 < 2, 1.0, 100.0).unsqueeze(-1)
    rows = support * torch.rand(num_docs, 12, generator=gen) * (torch.rand(num_docs, 12, generator=gen) < 0.6)
    return rows * lengths, group


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spherical_kmeans_clusters_sparse_rows_by_direction(seed):
    rows, group = documents_by_direction(seed=seed)
    labels = spherical_kmeans(SparseCounts.from_dense(rows), 2, seed=seed)
    assert torch.equal(labels[:, None] == labels[None, :], group[:, None] == group[None, :])
    assert torch.equal(spherical_kmeans(SparseCounts.from_dense(rows), 2, seed=seed), labels)  # seeded


@pytest.mark.parametrize("k", [0, 41])
def test_spherical_kmeans_rejects_bad_arguments(k):
    with pytest.raises(ValueError, match=r"spherical_kmeans: need 1 <= num_clusters <= 40 rows"):
        spherical_kmeans(SparseCounts.from_dense(documents_by_direction()[0]), k)


def normal_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)


@pytest.mark.parametrize("progress", [False, True])
def test_svi_steps_runs_one_step_per_batch_and_learns(progress, capsys):
    data = torch.randn(50) + 3.0
    guide = AutoNormal(normal_model)
    drawn = []

    def batches():
        for step in range(200):
            drawn.append(step)
            yield (data,)

    losses = svi_steps(normal_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(), batches(),
                       num_steps=200, progress=progress, desc="test fit")
    assert len(losses) == 200 and drawn == list(range(200))
    assert sum(losses[-20:]) < sum(losses[:20])
    assert abs(guide.median()["loc"].item() - data.mean().item()) < 0.3
    assert ("test fit" in capsys.readouterr().err) == progress


def test_svi_steps_passes_keyword_arguments():
    seen = []

    def model(x, scale=None):
        seen.append(scale)
        pyro.sample("z", dist.Normal(0.0, scale))

    guide = AutoNormal(model)
    svi_steps(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO(), itertools.repeat((None,), 3),
              kwargs={"scale": 2.0})
    assert set(seen) == {2.0}
