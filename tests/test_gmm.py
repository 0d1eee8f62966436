"""Tests of the Pyro Gaussian mixture helpers, the GMM tutorials and the paper benchmark."""
import json
import math
import os
import runpy
import sys

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import constraints

from pyro_fusion import extract, fuse_posteriors
from pyro_fusion.metrics import hausdorff
from pyro_fusion.models.gmm import (
    GMMPrior,
    fit_gmm,
    gmm_model,
    gmm_sites,
    kmeans_init_values,
    prior_component,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CENTRES = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])


pytestmark = pytest.mark.usefixtures("one_thread")


def clustered(num_points: int, num_clusters: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_points) % num_clusters
    return CENTRES[labels] + 0.5 * torch.randn(num_points, 2, generator=gen)


@pytest.mark.parametrize("correlated", [True, False])
@pytest.mark.parametrize("K", [1, 3])
def test_gmm_model_sites(correlated, K):
    prior = GMMPrior(correlated=correlated)
    trace = poutine.trace(gmm_model).get_trace(torch.randn(7, 2), K, prior)
    plates = ("components", "data")
    shapes = {n: tuple(s["value"].shape) for n, s in trace.nodes.items() if s["type"] == "sample" and n not in plates}
    expected = {"weights": (K,), "locs": (K, 2), "scales": (K, 2), "obs": (7, 2)}
    if correlated:
        expected["corr"] = (K, 2, 2)
    assert shapes == expected
    assert set(gmm_sites(prior)["components"]) == set(expected) - {"weights", "obs"}


@pytest.mark.parametrize(
    "data, prior, match",
    [(torch.randn(5), GMMPrior(), r"\[N, D\]"), (torch.randn(5, 1), GMMPrior(), "correlated=False")],
)
def test_gmm_model_errors(data, prior, match):
    with pytest.raises(ValueError, match=match):
        gmm_model(data, 2, prior)


@pytest.mark.parametrize("correlated", [True, False])
def test_kmeans_init_values_are_valid(correlated):
    values = kmeans_init_values(clustered(60, 3), 3, correlated=correlated)
    assert values["locs"].shape == values["scales"].shape == (3, 2)
    assert (values["scales"] > 0).all()
    assert torch.allclose(values["weights"].sum(), torch.tensor(1.0))
    assert ("corr" in values) == correlated
    if correlated:
        assert constraints.corr_cholesky.check(values["corr"]).all()


@pytest.mark.parametrize("correlated", [True, False])
def test_fit_gmm_recovers_means(correlated):
    data = clustered(150, 3)
    guide = fit_gmm(data, 3, num_steps=60, prior=GMMPrior(correlated=correlated))
    locs = guide.median(data, 3, GMMPrior(correlated=correlated))["locs"]
    assert hausdorff(locs, CENTRES) < 0.3


def test_fit_gmm_replaces_an_earlier_autonormal():
    fit_gmm(clustered(60, 3), 3, num_steps=5)
    guide = fit_gmm(clustered(60, 2), 2, num_steps=5)
    assert guide.locs.locs.shape == (2, 2)
    assert pyro.param("AutoNormal.locs.locs").shape == (2, 2)


@pytest.mark.parametrize(
    "data, K", [(torch.full((10, 2), float("nan")), 2), (torch.randn(10), 2), (torch.randn(4, 2), 5)]
)
def test_fit_gmm_errors(data, K):
    with pytest.raises(ValueError, match="fit_gmm"):
        fit_gmm(data, K, num_steps=1)


def test_prior_component_moments():
    prior = GMMPrior(loc_scale=3.0, scale_loc=2.0, scale_scale=0.5)
    state = torch.random.get_rng_state()
    component = prior_component(prior, 2, num_samples=20000)
    assert torch.equal(state, torch.random.get_rng_state())
    dists = component.distributions()
    assert list(dists) == ["locs", "scales", "corr"]
    expected = {"locs": (0.0, 3.0), "scales": (math.log(2.0), 0.5), "corr": (0.0, math.pi / math.sqrt(12))}
    for name, (mean, std) in expected.items():
        assert torch.allclose(dists[name].mean, torch.tensor(mean), atol=0.05 * std + 0.02)
        assert torch.allclose(dists[name].stddev, torch.tensor(std), rtol=0.05)


def test_identical_clients_fuse_to_their_guide():
    data = clustered(90, 3)
    guide = fit_gmm(data, 3, num_steps=30)
    post = extract(guide, **gmm_sites(), weight=len(data))
    locs = guide.locs.locs.detach().clone()
    fused = fuse_posteriors([post, post, post]).posterior
    assert fused.num_global == 3
    assert all(sorted(a.tolist()) == [0, 1, 2] for a in fused.result.assignments)
    assert hausdorff(fused.loc_scale("locs")[0], locs) < 1e-4


def _run_script(path, monkeypatch, capsys, argv=()):
    monkeypatch.setenv("PYRO_FUSION_SMALL", "1")
    monkeypatch.setattr(sys, "argv", [path, *argv])
    runpy.run_path(os.path.join(ROOT, path), run_name="__main__")
    return capsys.readouterr().out


def test_gmm_fusion_tutorial_runs(monkeypatch, capsys):
    out = _run_script("tutorials/gmm_fusion.py", monkeypatch, capsys)
    assert "global components: 3" in out
    assert "global components with price='spread': 3" in out
    distance = float(out.split("Hausdorff distance to the true means:")[1].split()[0])
    assert distance < 0.5


def test_warm_start_tutorial_runs(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PYRO_FUSION_OUTPUT", str(tmp_path))
    png = tmp_path / "warm_start.png"
    out = _run_script("tutorials/warm_start.py", monkeypatch, capsys)
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == {"cold_steps_to_target", "warm_steps_to_target"}
    assert result["warm_steps_to_target"] is not None and result["cold_steps_to_target"] is not None
    assert result["warm_steps_to_target"] <= result["cold_steps_to_target"]
    assert png.stat().st_size > 0


def test_gmm_paper_benchmark_small(monkeypatch, capsys):
    out = _run_script("benchmarks/gmm_paper.py", monkeypatch, capsys, ["--small"])
    result = json.loads(out)
    keys = {"L", "seed", "true", "found", "hausdorff", "ot", "kmeans_hausdorff", "kmeans_ot"}
    assert result["runs"] and all(keys <= set(run) for run in result["runs"])
    assert all(run["found"] >= 1 and run["hausdorff"] >= 0 for run in result["runs"])
    assert set(result["summary"]) == {str(run["L"]) for run in result["runs"]}
