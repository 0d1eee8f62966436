import itertools
import json
import os
import runpy

import pytest
import torch

from pyro_fusion.adapters.hmm import em_update, fuse_hmms, hmm_components, hmm_statistics, refine_hmm
from pyro_fusion import spread_price
from pyro_fusion.metrics import best_matching_accuracy
from pyro_fusion.apps.mocap import pooled_standardiser, run_demo, window_features
from pyro_fusion.models.hmm import (
    HMMParams,
    HMMPrior,
    decode,
    fit_gaussian_hmm,
    forward_backward,
    viterbi,
)

TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "tutorials", "mocap_hmm.py")


def random_hmm(num_states, num_steps, seed):
    g = torch.Generator().manual_seed(seed)
    log_init = torch.randn(num_states, generator=g, dtype=torch.float64).log_softmax(-1)
    log_trans = torch.randn(num_states, num_states, generator=g, dtype=torch.float64).log_softmax(-1)
    log_obs = torch.randn(num_steps, num_states, generator=g, dtype=torch.float64)
    return log_init, log_trans, log_obs


def path_scores(log_init, log_trans, log_obs):
    """Log joint of every state path, by enumeration: ``{path: score}``."""
    num_steps, num_states = log_obs.shape
    scores = {}
    for path in itertools.product(range(num_states), repeat=num_steps):
        score = log_init[path[0]] + log_obs[0, path[0]]
        for t in range(1, num_steps):
            score = score + log_trans[path[t - 1], path[t]] + log_obs[t, path[t]]
        scores[path] = score
    return scores


@pytest.mark.parametrize("num_states,num_steps", [(1, 4), (2, 5), (3, 4), (4, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_viterbi_matches_brute_force(num_states, num_steps, seed):
    hmm = random_hmm(num_states, num_steps, seed)
    scores = path_scores(*hmm)
    best = max(scores.values())
    path = tuple(viterbi(*hmm).tolist())
    assert len(path) == num_steps
    assert torch.allclose(scores[path], best)


@pytest.mark.parametrize("num_states,num_steps", [(2, 5), (3, 4)])
def test_forward_backward_matches_brute_force(num_states, num_steps):
    hmm = random_hmm(num_states, num_steps, seed=3)
    scores = path_scores(*hmm)
    paths = torch.tensor(list(scores))
    log_joint = torch.stack(list(scores.values()))
    log_z = log_joint.logsumexp(0)
    weights = (log_joint - log_z).exp()
    marginals = torch.stack(
        [(weights[:, None] * (paths[:, t, None] == torch.arange(num_states))).sum(0) for t in range(num_steps)]
    )
    counts = torch.zeros(num_states, num_states, dtype=torch.float64)
    for t in range(1, num_steps):
        counts.index_put_((paths[:, t - 1], paths[:, t]), weights, accumulate=True)
    post = forward_backward(*hmm)
    assert torch.allclose(post.log_likelihood, log_z)
    assert torch.allclose(post.marginals, marginals)
    assert torch.allclose(post.transition_counts, counts)


def two_state_sequence(num_steps, seed, dim=3):
    g = torch.Generator().manual_seed(seed)
    states = (torch.arange(num_steps) // 10) % 2
    means = torch.tensor([-2.0, 2.0])[states, None].expand(-1, dim)
    return means + 0.3 * torch.randn(num_steps, dim, generator=g), states


@pytest.fixture(scope="module")
def small_fit():
    x, states = two_state_sequence(60, seed=0)
    return fit_gaussian_hmm([x], num_states=3, num_steps=100, seed=0), x, states


def test_fit_recovers_two_states(small_fit):
    fit, x, states = small_fit
    path = fit.decode(x)
    assert best_matching_accuracy(path, states) > 0.95
    assert fit.losses[-1] < fit.losses[0]
    # float32 forward-backward: the sums of 60 marginals are exact to a few units in the 5th digit
    assert torch.allclose(fit.occupancy.sum(), torch.tensor(60.0), rtol=1e-4, atol=0.0)
    assert torch.allclose(fit.transition_counts.sum(), torch.tensor(59.0), rtol=1e-4, atol=0.0)


def test_hmm_components_round_trip(small_fit):
    fit, _, _ = small_fit
    kept = torch.tensor([2, 0])
    comps = hmm_components(fit, kept)
    dists = comps.distributions()
    assert len(comps) == 2
    assert torch.allclose(dists["loc"].mean, fit.unconstrained["loc"].loc[kept], atol=1e-5)
    assert torch.allclose(dists["loc"].stddev, fit.unconstrained["loc"].scale[kept], atol=1e-5)
    # the log_scale field is AutoNormal's unconstrained Normal: its median is the fitted scale
    assert torch.allclose(dists["log_scale"].mean.exp(), fit.params.scale[kept], atol=1e-5)


@pytest.mark.parametrize("num_clients", [2, 3])
def test_fuse_identical_hmms_returns_the_model(small_fit, num_clients):
    fit, x, _ = small_fit
    fused = fuse_hmms([fit] * num_clients, min_occupancy=1.0)
    kept = fit.occupied(1.0)
    assert fused.num_global == len(kept)
    for a in fused.assignments:
        assert torch.equal(a, fused.assignments[0])
    glob = fused.assignments[0][kept]
    assert torch.allclose(fused.params.loc[glob], fit.params.loc[kept], atol=1e-4)
    assert torch.allclose(fused.params.scale[glob], fit.params.scale[kept], atol=1e-4)
    xi = fit.transition_counts[kept][:, kept]
    assert torch.allclose(fused.params.trans[glob][:, glob], xi / xi.sum(-1, keepdim=True), atol=1e-5)
    assert torch.equal(decode(fused.params, x), fused.assignments[0][fit.decode(x)])


def test_fuse_hmms_spread_price_is_shared_by_the_restarts(small_fit):
    fit, _, _ = small_fit
    fused = fuse_hmms([fit] * 3, price="spread", restarts=3)
    kept = hmm_components(fit, fit.occupied(1.0))
    assert fused.result.price == pytest.approx(spread_price([kept] * 3, direction="forward"))
    assert fused.num_global == len(kept)


def test_fuse_hmms_rejects_bad_input(small_fit):
    fit, _, _ = small_fit
    with pytest.raises(ValueError, match="restarts"):
        fuse_hmms([fit, fit], restarts=0)
    with pytest.raises(ValueError, match="client 0: no state"):
        fuse_hmms([fit, fit], min_occupancy=1e9)


def two_state_params(shift=0.0, dim=3):
    return HMMParams(
        init=torch.tensor([0.5, 0.5]),
        trans=torch.tensor([[0.9, 0.1], [0.1, 0.9]]),
        loc=torch.tensor([[-2.0], [2.0]]).expand(-1, dim) + shift,
        scale=torch.ones(2, dim),
    )


def test_statistics_of_clients_add_up_to_one_client_holding_everything():
    xs = [two_state_sequence(40, seed)[0] for seed in range(3)]
    params = two_state_params(0.5)
    separate = [hmm_statistics(params, [x]) for x in xs]
    together = hmm_statistics(params, xs)
    for field, value in zip(together._fields, together):
        torch.testing.assert_close(sum(getattr(s, field) for s in separate), value)
    assert abs(float(together.occupancy.sum()) - 120.0) < 1e-2
    assert abs(float(together.transition_counts.sum()) - 117.0) < 1e-2
    a = em_update(params, separate)
    b = em_update(params, [together])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_refine_hmm_recovers_the_emissions_and_raises_the_likelihood():
    clients = [[two_state_sequence(60, seed)[0]] for seed in range(4)]
    start = two_state_params(shift=1.0)._replace(scale=torch.full((2, 3), 2.0))
    params, log_likelihoods = refine_hmm(start, clients, HMMPrior(), num_rounds=8)
    assert len(log_likelihoods) == 8
    assert all(b >= a - 1e-3 * abs(a) for a, b in zip(log_likelihoods, log_likelihoods[1:]))
    assert log_likelihoods[-1] > log_likelihoods[0] + 100
    torch.testing.assert_close(params.loc, torch.tensor([[-2.0], [2.0]]).expand(-1, 3), atol=0.1, rtol=0)
    torch.testing.assert_close(params.scale, torch.full((2, 3), 0.3), atol=0.05, rtol=0)
    torch.testing.assert_close(params.trans.sum(-1), torch.ones(2))
    assert params.trans.diagonal().min() > 0.8
    # the inputs are left as they were
    torch.testing.assert_close(start.loc, two_state_params(shift=1.0).loc)
    assert refine_hmm(start, clients, num_rounds=0) == (start, [])


def test_em_update_keeps_unvisited_states():
    x = two_state_sequence(40, 0)[0]
    params = HMMParams(
        init=torch.full((3,), 1 / 3),
        trans=torch.full((3, 3), 1 / 3),
        loc=torch.tensor([[-2.0] * 3, [2.0] * 3, [50.0] * 3]),
        scale=torch.ones(3, 3),
    )
    new = em_update(params, [hmm_statistics(params, [x])])
    torch.testing.assert_close(new.loc[2], params.loc[2])
    torch.testing.assert_close(new.scale[2], params.scale[2])


def test_em_rejects_bad_input():
    params = two_state_params()
    with pytest.raises(ValueError, match="sequence 0 has shape"):
        hmm_statistics(params, [torch.zeros(5, 2)])
    with pytest.raises(ValueError, match="at least one sequence"):
        hmm_statistics(params, [])
    with pytest.raises(ValueError, match="client 1's occupancy has shape"):
        other = HMMParams(torch.ones(3) / 3, torch.full((3, 3), 1 / 3), torch.zeros(3, 3), torch.ones(3, 3))
        em_update(params, [hmm_statistics(params, [torch.zeros(4, 3)]), hmm_statistics(other, [torch.zeros(4, 3)])])
    with pytest.raises(ValueError, match="at least one client"):
        em_update(params, [])
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        refine_hmm(params, [[torch.zeros(4, 3)]], num_rounds=-1)
    with pytest.raises(ValueError, match=r"client 1: hmm_statistics: sequence 0 has shape \(5, 2\)"):
        refine_hmm(params, [[torch.zeros(4, 3)], [torch.zeros(5, 2)]])
    with pytest.raises(ValueError, match="sequence 1 has shape"):
        hmm_statistics(params, [torch.zeros(4, 3), torch.zeros(0, 3)])
    good = hmm_statistics(params, [torch.zeros(4, 3)])
    with pytest.raises(ValueError, match="client 0's sum_squares has shape"):
        em_update(params, [good._replace(sum_squares=torch.zeros(3))])


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="one D"):
        fit_gaussian_hmm([torch.zeros(5, 2), torch.zeros(5, 3)], num_states=2)
    with pytest.raises(ValueError, match="num_states"):
        fit_gaussian_hmm([torch.zeros(5, 2)], num_states=0)


def test_features_and_standardiser():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(t, 2, generator=g) * 3 + 1 for t in (20, 30)]
    feats = [window_features(x, 4) for x in seqs]
    assert feats[0].shape == (20, 4)
    assert torch.allclose(feats[0][5, :2], seqs[0][3:7].mean(0))
    mean, std = pooled_standardiser(feats)
    pooled = torch.cat(feats)
    assert torch.allclose(mean, pooled.mean(0), atol=1e-5)
    assert torch.allclose(std, pooled.std(0, unbiased=False), atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        window_features(seqs[0], 1)


def test_run_demo_two_sequences(tmp_path):
    metrics = run_demo(seed=0, out=str(tmp_path), num_steps=40, sequences=[0, 1], progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "mocap_segmentation.png").stat().st_size > 0
    for row in ("fused", "fused_em", "pooled", "kmeans", "local_mean", "local_on_all_best", "local_on_all_mean"):
        assert set(saved[row]) >= {"one_minus_hamming", "ari", "num_states"}
        assert 0.0 <= saved[row]["one_minus_hamming"] <= 1.0
        assert saved[row] == pytest.approx(metrics[row])
    assert metrics["fused"]["num_states"] >= 1
    assert metrics["seconds"] > 0
    assert len(metrics["em_log_likelihoods"]) == 10
    best, mean = metrics["local_on_all_best"], metrics["local_on_all_mean"]
    assert best["one_minus_hamming"] >= mean["one_minus_hamming"]
    assert best["num_states"] <= 8  # one local model's states


def test_demo_command_says_where_it_wrote(tmp_path, capsys):
    from pyro_fusion.cli import main

    assert main(["demo", "--out", str(tmp_path), "--num-steps", "3", "--num-rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'metrics.json'} and {tmp_path / 'mocap_segmentation.png'}" in out
    assert "fused_em" in out and (tmp_path / "mocap_segmentation.png").stat().st_size > 0


def test_demo_without_matplotlib_stops_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util

    import pyro_fusion.apps.mocap as mocap
    from pyro_fusion.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    monkeypatch.setattr(mocap, "load_mocap6", lambda: pytest.fail("the demo started working"))
    assert main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'pyro-fusion[plot]'" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs", [{"num_steps": 0}, {"sequences": [0, 6]}, {"sequences": []}, {"num_rounds": -1}]
)
def test_run_demo_rejects_bad_input(kwargs):
    with pytest.raises(ValueError, match="run_demo"):
        run_demo(out=None, progress=False, **kwargs)


def test_tutorial_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_FUSION_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(TUTORIAL, run_name="__main__")


def test_em_keeps_the_variance_of_raw_float32_features():
    # features far from 0: sums of squares in float32 would cancel the variance away
    x, _ = two_state_sequence(200, 0)
    offset = 3000.0
    params = two_state_params(shift=offset)
    stats = hmm_statistics(params, [x + offset])
    assert all(value.dtype == torch.float64 for value in stats)
    reference = em_update(
        HMMParams(*(p.double() for p in params)),
        [hmm_statistics(HMMParams(*(p.double() for p in params)), [x.double() + offset])],
    )
    new = em_update(params, [stats])
    assert all(value.dtype == torch.float32 for value in new)
    torch.testing.assert_close(new.scale, reference.scale.float(), rtol=1e-2, atol=0)
    torch.testing.assert_close(new.loc, reference.loc.float(), rtol=1e-5, atol=0)
