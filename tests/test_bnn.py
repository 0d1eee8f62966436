import copy
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_fusion import PosteriorPrior, Price
from pyro_fusion.adapters.bnn import PRICE_RULES, fuse_mlps, naive_average
from pyro_fusion.datasets.mnist import load_fashion_mnist, load_idx, load_mnist, split_clients
from pyro_fusion.models.bnn import (
    BayesianMLP,
    delta_guide,
    evaluate,
    normal_guide,
    normal_posterior,
    predictive_probs,
    train_svi,
)

ROOT = Path(__file__).resolve().parents[1]


def _have(loader):
    try:
        loader(train=False)
    except FileNotFoundError:
        return False
    return True


def _random_posterior(in_features, widths, classes, generator):
    model = BayesianMLP(in_features, widths, classes)
    return {
        name: dist.Normal(
            torch.randn(shape, generator=generator),
            0.05 + 0.2 * torch.rand(shape, generator=generator),
        )
        for name, shape in model.site_shapes().items()
    }


def _two_clients_one_output_bias(widths, seed):
    """Two random clients with 4 inputs and 3 classes sharing one output bias, so that only
    their hidden units differ."""
    generator = torch.Generator().manual_seed(seed)
    clients = [_random_posterior(4, widths, 3, generator) for _ in range(2)]
    clients[1]["output.bias"] = clients[0]["output.bias"]
    return clients


def _mean_logits(model, posterior, x):
    means = {name: d.mean for name, d in posterior.items()}
    return predictive_probs(
        model, {n: dist.Delta(v, event_dim=v.dim()) for n, v in means.items()}, x, 1
    )


def _permute_units(posterior, layer, perm):
    """The same network with hidden layer ``layer``'s units reordered by ``perm``."""
    out = dict(posterior)
    nxt = (
        f"hidden.{layer + 1}.weight"
        if f"hidden.{layer + 1}.weight" in posterior
        else "output.weight"
    )
    for name, index in ((f"hidden.{layer}.weight", 0), (f"hidden.{layer}.bias", 0), (nxt, 1)):
        d = posterior[name]
        out[name] = dist.Normal(d.loc.index_select(index, perm), d.scale.index_select(index, perm))
    return out


# ----- data ----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    (gzip.open if compress else open)(path, "wb").write(header + array.tobytes())
    np.testing.assert_array_equal(load_idx(path), array)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad.idx"):
        load_idx(tmp_path / "bad.idx")


def test_missing_data_errors_name_path_and_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist(root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="mnist_train_first10k.npz"):
        load_mnist(root=tmp_path, train=True)


@pytest.mark.parametrize(
    "loader, train, size",
    [
        (load_mnist, True, 10000),
        (load_mnist, False, 10000),
        (load_fashion_mnist, True, 60000),
        (load_fashion_mnist, False, 10000),
    ],
)
def test_loaders(loader, train, size):
    if not _have(loader):
        pytest.skip(f"{loader.__name__}: data not installed")
    data = loader(train=train)
    assert data.images.shape == (size, 784) and data.images.dtype == torch.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.labels.shape == (size,) and data.labels.dtype == torch.long
    assert torch.bincount(data.labels).shape == (10,) and torch.bincount(data.labels).min() > 0


@pytest.mark.parametrize("num_clients", [2, 10])
@pytest.mark.parametrize("alpha", [None, 0.5])
def test_split_clients_partition(num_clients, alpha):
    labels = torch.arange(2000) % 10
    parts = split_clients(labels, num_clients, alpha=alpha, seed=3)
    assert len(parts) == num_clients
    everything = torch.cat(parts).sort().values
    assert torch.equal(everything, torch.arange(len(labels)))  # disjoint and complete
    assert min(len(p) for p in parts) >= 10
    if alpha is None:
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    again = split_clients(labels, num_clients, alpha=alpha, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_split_heterogeneity():
    labels = torch.arange(5000) % 10

    def skew(parts):  # mean total-variation distance of client class mixes from uniform
        mixes = torch.stack([torch.bincount(labels[p], minlength=10) / len(p) for p in parts])
        return 0.5 * (mixes - 0.1).abs().sum(-1).mean()

    assert skew(split_clients(labels, 10, alpha=0.5, seed=0)) > 0.3
    assert skew(split_clients(labels, 10, alpha=None, seed=0)) < 0.1
    with pytest.raises(ValueError, match="alpha"):
        split_clients(labels, 10, alpha=-1.0)
    with pytest.raises(ValueError, match="integer"):
        split_clients(labels.float(), 10)


# ----- model ---------------------------------------------------------------------------


@pytest.mark.parametrize("widths", [(7,), (6, 5)])
def test_mlp_sites_and_batched_forward(widths):
    model = BayesianMLP(4, widths, 3)
    posterior = _random_posterior(4, widths, 3, torch.Generator().manual_seed(0))
    x = torch.randn(11, 4)
    probs = predictive_probs(model, posterior, x, num_samples=5)
    assert probs.shape == (11, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(11))
    guide = AutoNormal(model)
    guide(x, torch.zeros(11, dtype=torch.long))
    assert {n: d.loc.shape for n, d in normal_posterior(guide).items()} == model.site_shapes()


def test_train_svi_learns_and_keeps_param_store_clean(one_thread):
    import pyro

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=generator)
    y = (x[:, 0] > 0).long()
    model = BayesianMLP(5, (8,), 2, prior_scale=1.0)
    guide = AutoNormal(model, init_scale=0.01)
    losses = train_svi(model, guide, x, y, num_epochs=15, batch_size=100, lr=0.05)
    assert losses[-1] < losses[0]
    assert len(pyro.get_param_store()) == 0
    accuracy, nll = evaluate(predictive_probs(model, normal_posterior(guide), x, 20), y)
    assert accuracy > 0.8 and nll < 0.6


@pytest.mark.parametrize("widths", [(7,), (6, 5)])
def test_label_prior_adds_its_log_to_the_logits(widths):
    prior = torch.tensor([6.0, 3.0, 1.0])
    skewed, plain = BayesianMLP(4, widths, 3, label_prior=prior), BayesianMLP(4, widths, 3)
    posterior = _random_posterior(4, widths, 3, torch.Generator().manual_seed(1))
    draws = {name: d.sample((2,)) for name, d in posterior.items()}
    x = torch.randn(5, 4)
    with pyro.poutine.block(), pyro.poutine.condition(data=draws):
        shifted, raw = skewed(x), plain(x)
    assert torch.allclose(shifted, raw + (prior / 10).log())


def test_label_prior_keeps_the_class_mix_out_of_the_weights(one_thread):
    """Uninformative inputs, labels 80/20: without the label prior the network learns the
    mix; with it the network's own scores stay balanced."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(400, 3, generator=generator)
    y = (torch.rand(400, generator=generator) < 0.2).long()
    counts = torch.bincount(y, minlength=2).float()
    balanced = BayesianMLP(3, (4,), 2)
    probs = {}
    for name, label_prior in (("plain", None), ("label_prior", counts)):
        model = BayesianMLP(3, (4,), 2, label_prior=label_prior)
        guide = AutoNormal(model, init_scale=0.01)
        train_svi(model, guide, x, y, num_epochs=20, batch_size=100, lr=0.05, seed=3)
        probs[name] = predictive_probs(balanced, normal_posterior(guide), x, 20).mean(0)
    assert probs["plain"][0] > 0.7
    assert abs(probs["label_prior"][0] - 0.5) < 0.1


@pytest.mark.parametrize(
    "label_prior",
    [[1.0, 2.0], [1.0, 0.0, 2.0], [1.0, -1.0, 2.0], [1.0, float("nan"), 1.0], ["a", "b", "c"]],
)
def test_label_prior_errors(label_prior):
    with pytest.raises(ValueError, match="label_prior"):
        BayesianMLP(4, (5,), 3, label_prior=label_prior)


def test_label_prior_is_a_constant(one_thread):
    """A prior computed from something that requires grad must not tie the model to a graph."""
    counts = torch.nn.Parameter(torch.tensor([3.0, 1.0, 1.0]))
    model = BayesianMLP(4, (5,), 3, label_prior=counts * 2)
    assert not model.log_label_prior.requires_grad
    copy.deepcopy(model)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    train_svi(model, AutoNormal(model), x, y, num_epochs=2, batch_size=10)


def test_training_a_written_back_guide_leaves_the_posterior_alone(one_thread):
    posterior = _random_posterior(4, (6,), 3, torch.Generator().manual_seed(5))
    before = {name: (d.loc.clone(), d.scale.clone()) for name, d in posterior.items()}
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    model = BayesianMLP(4, (6,), 3)
    train_svi(model, normal_guide(model, posterior), x, y, num_epochs=2, batch_size=10)
    values = {name: d.loc for name, d in posterior.items()}
    train_svi(model, delta_guide(model, values), x, y, num_epochs=2, batch_size=10)
    for name, (loc, scale) in before.items():
        assert torch.equal(posterior[name].loc, loc) and torch.equal(posterior[name].scale, scale)


def test_posterior_prior_replaces_the_priors_and_anchors_fine_tuning(one_thread):
    posterior = _random_posterior(4, (6,), 3, torch.Generator().manual_seed(6))
    model = BayesianMLP(4, (6,), 3)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    trace = pyro.poutine.trace(PosteriorPrior(posterior)(model)).get_trace(x, y)
    for name, d in posterior.items():
        site = trace.nodes[name]
        assert site["fn"].event_shape == d.batch_shape  # the site's event dims, as the model's
        assert torch.allclose(site["fn"].log_prob(site["value"]), d.log_prob(site["value"]).sum())

    def drift(wrap):
        guide = normal_guide(model, posterior)
        train_svi(wrap(model), guide, x, y, num_epochs=5, batch_size=10, lr=0.05)
        moved = normal_posterior(guide)
        return sum(float((moved[n].loc - d.loc).abs().mean()) for n, d in posterior.items())

    # the posterior (scales 0.05-0.25) holds the means near it; the Normal(0, 1) prior does not
    anchored, free = drift(PosteriorPrior(posterior)), drift(lambda m: m)
    assert 0 < anchored < 0.5 * free


def test_posterior_prior_matches_plates_and_torch_distributions():
    def model():
        with pyro.plate("p", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([3, 2]).to_event(1))

    given = torch.distributions.Normal(torch.zeros(3, 2), 0.5)  # plain torch is accepted
    trace = pyro.poutine.trace(PosteriorPrior({"z": given})(model)).get_trace()
    trace.compute_log_prob()
    site = trace.nodes["z"]
    assert site["fn"].batch_shape == (3,) and site["fn"].event_shape == (2,)
    assert site["log_prob"].shape == (3,)  # one term per plate entry, as the model's prior
    expected = given.log_prob(site["value"]).sum(-1)
    assert torch.allclose(site["log_prob"], expected)


def test_posterior_prior_errors():
    posterior = _random_posterior(4, (6,), 3, torch.Generator().manual_seed(7))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match=r"site 'hidden.0.weight'.*\(7, 4\)"):
        PosteriorPrior(posterior)(BayesianMLP(4, (7,), 3))(x, y)
    short = {"hidden.0.weight": dist.Normal(torch.zeros(4), 1.0)}  # [4] for a [6, 4] site
    with pytest.raises(ValueError, match="site 'hidden.0.weight'.*cannot build the new prior"):
        PosteriorPrior(short)(BayesianMLP(4, (6,), 3))(x, y)
    for point in (dist.Delta(torch.zeros(3), event_dim=1), dist.Delta(torch.zeros(3)).to_event(1)):
        with pytest.raises(ValueError, match="site 'output.bias'.*point estimate"):
            PosteriorPrior(dict(posterior, **{"output.bias": point}))


# ----- adapter -------------------------------------------------------------------------


@pytest.mark.parametrize("widths", [(7,), (6, 5)])
def test_write_back_round_trip(widths):
    posterior = _random_posterior(4, widths, 3, torch.Generator().manual_seed(1))
    model = BayesianMLP(4, widths, 3)
    back = normal_posterior(normal_guide(model, posterior))
    for name, d in posterior.items():
        assert torch.allclose(back[name].loc, d.loc) and torch.allclose(
            back[name].scale, d.scale, rtol=1e-5
        )
    values = {name: d.loc for name, d in posterior.items()}
    median = delta_guide(model, values).median()
    assert all(torch.allclose(median[name], v) for name, v in values.items())
    with pytest.raises(ValueError, match="hidden.0.weight"):
        normal_guide(BayesianMLP(4, (9,) * len(widths), 3), posterior)


@pytest.mark.parametrize("widths", [(7,), (6, 5)])
@pytest.mark.parametrize("point_scale", [None, 1.0])
def test_fusing_identical_clients_returns_the_client(widths, point_scale):
    posterior = _random_posterior(4, widths, 3, torch.Generator().manual_seed(2))
    fused = fuse_mlps([posterior] * 3, point_scale=point_scale)
    assert fused.model.widths == widths
    assert all(r.support.eq(3).all() for r in fused.result)
    x = torch.randn(13, 4)
    model = BayesianMLP(4, widths, 3)
    assert torch.allclose(
        _mean_logits(fused.model, fused.posterior, x), _mean_logits(model, posterior, x), atol=1e-5
    )
    if point_scale is None:  # the scales survive too (up to the permutation of units)
        fused_scales = sorted(fused.posterior["hidden.0.bias"].scale.tolist())
        assert np.allclose(
            fused_scales, sorted(posterior["hidden.0.bias"].scale.tolist()), rtol=1e-4
        )


@pytest.mark.parametrize("widths", [(7,), (6, 5)])
@pytest.mark.parametrize("point_scale", [None, 1.0])
def test_fusion_is_invariant_to_permuting_a_clients_units(widths, point_scale):
    generator = torch.Generator().manual_seed(4)
    base = _random_posterior(4, widths, 3, generator)
    clients = [
        {
            n: dist.Normal(d.loc + 0.3 * torch.randn(d.loc.shape, generator=generator), d.scale)
            for n, d in base.items()
        }
        for _ in range(3)
    ]
    permuted = list(clients)
    for layer, width in enumerate(widths):
        permuted[1] = _permute_units(permuted[1], layer, torch.randperm(width, generator=generator))
    x = torch.randn(17, 4)
    model = BayesianMLP(4, widths, 3)
    # the permuted client computes the same function ...
    assert torch.allclose(
        _mean_logits(model, clients[1], x), _mean_logits(model, permuted[1], x), atol=1e-5
    )
    # ... and the fused network is the same up to the order of its units
    a = fuse_mlps(clients, [1.0, 2.0, 3.0], point_scale=point_scale, seed=0)
    b = fuse_mlps(permuted, [1.0, 2.0, 3.0], point_scale=point_scale, seed=0)
    assert a.model.widths == b.model.widths
    assert torch.allclose(
        _mean_logits(a.model, a.posterior, x), _mean_logits(b.model, b.posterior, x), atol=1e-4
    )


def test_fused_widths_follow_the_price():
    generator = torch.Generator().manual_seed(5)
    clients = [_random_posterior(4, (6,), 3, generator) for _ in range(3)]
    cheap = fuse_mlps(clients, price=1e-3)
    dear = fuse_mlps(clients, price=1e9)
    assert cheap.model.widths == (18,)  # unrelated units: nothing is worth matching
    assert dear.model.widths == (6,)  # one global unit per local unit of a client
    assert dear.result[0].support.eq(3).all()


@pytest.mark.parametrize("widths", [(6,), (5, 4)])
@pytest.mark.parametrize("point_scale", [None, 1.0])
def test_unmatched_units_average_the_clients_logits(widths, point_scale):
    clients = _two_clients_one_output_bias(widths, seed=8)
    weights = [1.0, 3.0]
    fused = fuse_mlps(clients, weights, point_scale=point_scale, price=1e-6)
    assert fused.model.widths == tuple(2 * w for w in widths)  # every unit kept apart
    x = torch.randn(9, 4)
    model = BayesianMLP(4, widths, 3)
    logits = [_mean_logits(model, c, x).log() for c in clients]
    pooled = (0.25 * logits[0] + 0.75 * logits[1]).log_softmax(-1)
    assert torch.allclose(_mean_logits(fused.model, fused.posterior, x).log(), pooled, atol=1e-4)


def _raw_logits(model, posterior, x):
    means = {name: d.mean for name, d in posterior.items()}
    with torch.no_grad(), pyro.poutine.block(), pyro.poutine.condition(data=means):
        return model(x)


@pytest.mark.parametrize("widths", [(6,), (5, 4)])
@pytest.mark.parametrize("point_scale", [None, 1.0])
def test_class_counts_weight_each_class_logit_by_the_clients_that_saw_it(widths, point_scale):
    clients = _two_clients_one_output_bias(widths, seed=11)
    # different output biases of equal scale (their barycenter is then the weighted mean in
    # both directions): each class's bias comes from the clients that saw it, like its weights
    bias = clients[0]["output.bias"]
    clients[1]["output.bias"] = dist.Normal(bias.loc + torch.tensor([1.0, -2.0, 0.5]), bias.scale)
    counts = torch.tensor([[10.0, 0.0, 0.0], [30.0, 20.0, 0.0]])  # nobody saw class 2
    fused = fuse_mlps(clients, [1.0, 3.0], point_scale=point_scale, price=1e-6, class_counts=counts)
    x = torch.randn(9, 4)
    model = BayesianMLP(4, widths, 3)
    z = [_raw_logits(model, c, x) for c in clients]
    share = torch.tensor([[0.25, 0.0, 0.25], [0.75, 1.0, 0.75]])  # class 2: the client weights
    expected = share[0] * z[0] + share[1] * z[1]
    assert torch.allclose(_raw_logits(fused.model, fused.posterior, x), expected, atol=1e-4)
    # counts proportional to the weights in every class change nothing
    plain = fuse_mlps(clients, [1.0, 3.0], point_scale=point_scale, price=1e-6)
    same = fuse_mlps(
        clients, [1.0, 3.0], point_scale=point_scale, price=1e-6, class_counts=[[2.0] * 3, [6.0] * 3]
    )
    for name, d in plain.posterior.items():
        assert torch.allclose(d.mean, same.posterior[name].mean, atol=1e-6)
    assert torch.equal(counts, torch.tensor([[10.0, 0.0, 0.0], [30.0, 20.0, 0.0]]))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_class_counts_output_bias(direction):
    generator = torch.Generator().manual_seed(12)
    clients = [_random_posterior(4, (5,), 3, generator) for _ in range(2)]  # unequal scales
    plain = fuse_mlps(clients, [1.0, 3.0], direction=direction)
    same = fuse_mlps(clients, [1.0, 3.0], direction=direction, class_counts=[[2.0] * 3, [6.0] * 3])
    a, b = plain.posterior["output.bias"], same.posterior["output.bias"]
    torch.testing.assert_close(b.loc, a.loc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.scale, a.scale, rtol=1e-5, atol=1e-6)
    # class 0 seen only by client 0, class 1 only by client 1: their biases are taken whole
    skewed = fuse_mlps(clients, [1.0, 3.0], direction=direction, class_counts=[[5, 0, 1], [0, 5, 1]])
    bias = skewed.posterior["output.bias"]
    for c, j in ((0, 0), (1, 1)):
        torch.testing.assert_close(bias.loc[c], clients[j]["output.bias"].loc[c])
        torch.testing.assert_close(bias.scale[c], clients[j]["output.bias"].scale[c])
    assert bias.loc.dtype == torch.float32


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("point_scale", [None, 1.0])
def test_class_counts_in_matched_units(direction, point_scale):
    generator = torch.Generator().manual_seed(13)
    a = _random_posterior(4, (6,), 3, generator)
    a["output.weight"] = dist.Normal(a["output.weight"].loc, 0.1)
    b = dict(a)  # the same hidden units, different output weights of the same scale
    b["output.weight"] = dist.Normal(a["output.weight"].loc + torch.randn(3, 6, generator=generator), 0.1)
    counts = torch.tensor([[10.0, 10.0, 30.0], [30.0, 0.0, 10.0]])  # b never saw class 1
    fused = fuse_mlps(
        [a, b], direction=direction, point_scale=point_scale, price=1e9, class_counts=counts
    )
    assert fused.model.widths == (6,) and fused.result[0].support.eq(2).all()
    share = counts / counts.sum(0)  # both clients hold every unit: weights are the class shares
    expected = torch.zeros(3, 6)
    for j, client in enumerate([a, b]):  # client j's unit u is global unit assignments[j][u]
        expected[:, fused.result[0].assignments[j]] += share[j, :, None] * client["output.weight"].loc
    got = fused.posterior["output.weight"].mean
    assert torch.allclose(got, expected, atol=1e-5)
    order = fused.result[0].assignments[0]
    assert torch.allclose(got[1, order], a["output.weight"].loc[1], atol=1e-5)  # class 1: a's alone
    if point_scale is None:  # equal scales: the reverse barycenter keeps them, moment matching
        scale = fused.posterior["output.weight"].stddev  # widens them where the means differ
        assert torch.allclose(scale[1], torch.tensor(0.1), atol=1e-5)  # class 1: a's alone
        assert torch.allclose(scale, torch.tensor(0.1), atol=1e-5) == (direction == "reverse")
    with pytest.raises(ValueError, match="combine"):
        fuse_mlps([a, b], combine="product", class_counts=counts)


@pytest.mark.parametrize(
    "counts, match",
    [
        ([[1.0, 2.0, 3.0]], r"\[clients, classes\] = \[2, 3\]"),
        ([[1.0, 2.0], [3.0, 4.0]], r"\[clients, classes\] = \[2, 3\]"),
        ([[1.0, 2.0, 3.0], [1.0, -1.0, 0.0]], "client 1: class_counts"),
        ([[1.0, float("nan"), 3.0], [1.0, 1.0, 0.0]], "client 0: class_counts"),
    ],
)
def test_class_counts_errors(counts, match):
    generator = torch.Generator().manual_seed(12)
    clients = [_random_posterior(4, (6,), 3, generator) for _ in range(2)]
    with pytest.raises(ValueError, match=match):
        fuse_mlps(clients, class_counts=counts)


@pytest.mark.parametrize("point_scale", [None, 1.0])
def test_price_rules_and_scale(point_scale):
    generator = torch.Generator().manual_seed(9)
    clients = [_random_posterior(4, (6,), 3, generator) for _ in range(3)]
    prices = {
        rule: fuse_mlps(clients, point_scale=point_scale, price=rule).result[0].price
        for rule in PRICE_RULES + ("prior",)
    }
    # point estimates: the prior's scale is the units' own, so both rules agree
    if point_scale is not None:
        assert prices["location"] == pytest.approx(prices["prior"])
    else:  # "location": median over units of sum (loc / scale)**2 / 2 over row, bias, column

        def z2(d):
            return (d.loc / d.scale) ** 2

        units = [
            z2(c["hidden.0.weight"]).sum(-1)
            + z2(c["hidden.0.bias"])
            + z2(c["output.weight"]).sum(0)
            for c in clients
        ]
        expected = torch.cat(units).median().item() / 2
        assert prices["location"] == pytest.approx(expected, rel=1e-5)
        assert prices["prior"] != pytest.approx(prices["location"])
    low, high = (
        fuse_mlps(clients, point_scale=point_scale, price=Price(scale=s)).result[0] for s in (0.5, 4.0)
    )
    assert high.price == pytest.approx(8 * low.price)
    assert len(high.components) <= len(low.components)
    with pytest.raises(ValueError, match="unknown price rule 'median'"):
        fuse_mlps(clients, price="median")
    with pytest.raises(ValueError, match="scale must be a positive number"):
        Price(scale=0.0)
    spread = fuse_mlps(clients, price="spread").result[0].price
    assert fuse_mlps(clients, price=Price("spread", scale=2.0)).result[0].price == pytest.approx(2 * spread)


@pytest.mark.parametrize("widths", [(6,), (5, 4)])
def test_point_variant_does_not_depend_on_point_scale(widths):
    generator = torch.Generator().manual_seed(10)
    clients = [_random_posterior(4, widths, 3, generator) for _ in range(3)]
    a, b = (fuse_mlps(clients, [1.0, 2.0, 3.0], point_scale=s) for s in (0.1, 3.0))
    assert a.model.widths == b.model.widths
    for r, q in zip(a.result, b.result):
        assert all(torch.equal(x, y) for x, y in zip(r.assignments, q.assignments))
    for name, d in a.posterior.items():
        assert torch.allclose(d.mean, b.posterior[name].mean, atol=1e-5)


def test_adapter_errors_name_the_client():
    generator = torch.Generator().manual_seed(6)
    good = _random_posterior(4, (6,), 3, generator)
    other_inputs = _random_posterior(5, (6,), 3, generator)
    with pytest.raises(ValueError, match="client 1"):
        fuse_mlps([good, other_inputs])
    deeper = _random_posterior(4, (6, 6), 3, generator)
    with pytest.raises(ValueError, match="client 1"):
        fuse_mlps([good, deeper])
    missing = {k: v for k, v in good.items() if k != "output.bias"}
    with pytest.raises(ValueError, match="client 1"):
        fuse_mlps([good, missing])
    bad_bias = dict(good, **{"output.bias": dist.Normal(torch.zeros(4), 1.0)})
    with pytest.raises(ValueError, match=r"client 1: output.bias has shape \(4,\)"):
        fuse_mlps([good, bad_bias])
    wider = _random_posterior(4, (8,), 3, generator)
    with pytest.raises(ValueError, match="client 1"):
        naive_average([good, wider])


def test_naive_average_of_identical_clients():
    posterior = _random_posterior(4, (6,), 3, torch.Generator().manual_seed(7))
    average = naive_average([posterior, posterior], weights=[1.0, 3.0])
    for name, d in posterior.items():
        assert torch.allclose(average[name].loc, d.loc) and torch.allclose(
            average[name].scale, d.scale
        )


# ----- benchmark -----------------------------------------------------------------------


def test_benchmark_small_runs():
    if not _have(load_mnist):
        pytest.skip("MNIST not available")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bnn_fusion.py"), "--small", "--min-steps", "25"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    rows = {
        "fused",
        "fused_class_counts",
        "fused_point",
        "fused_point_class_counts",
        "naive_average",
        "ensemble",
        "local_best",
        "local_mean",
        "fused_finetuned",
        "fused_finetuned_model_prior",
        "pooled",
    }
    settings = [(r["layers"], r["label_prior"]) for r in results]
    assert settings == [(1, False), (2, False), (1, True)]
    for setting in results:
        assert setting["dataset"] == "mnist" and setting["split"] == "heterogeneous"
        # clients too small for 25 steps in the setting's epochs train for more epochs
        batches = [math.ceil(n / 50) for n in setting["client_sizes"]]  # per epoch
        assert setting["client_epochs"] == [max(setting["epochs"], math.ceil(25 / b)) for b in batches]
        assert setting["min_steps"] == 25
        assert any(e > setting["epochs"] for e in setting["client_epochs"])
        assert set(setting["rows"]) == rows
        for row in setting["rows"].values():
            assert 0.0 <= row["accuracy"] <= 1.0 and row["nll"] > 0
        assert (
            setting["rows"]["local_best"]["accuracy"] >= setting["rows"]["local_mean"]["accuracy"]
        )
        assert len(setting["rows"]["fused"]["width"]) == setting["layers"]
        # fusion must beat chance by a wide margin even at this size
        assert setting["rows"]["fused"]["accuracy"] > 0.3


