import doctest
import importlib
import json
import math

import pyro.distributions as pdist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, kl_divergence

from pyro_fusion.expfam import (
    Bernoulli,
    Beta,
    Categorical,
    DiagNormal,
    Dirichlet,
    Gamma,
    MultivariateNormal,
    NormalWishart,
    NormalWishartDistribution,
    PointMass,
    dirichlet_concentration,
    family_from_spec,
    family_of,
    gamma_shape,
    wishart_dof,
)

POINT_SCALE = 0.7


def _spd(shape, d, dtype):
    a = torch.randn(shape + (d, d), dtype=dtype)
    return a @ a.mT / d + 0.5 * torch.eye(d, dtype=dtype)


def _independent(base, n):
    return Independent(base, n) if n else base


# Each case: family from an event shape, a random torch distribution of that family with
# batch_shape == batch (components) and the family's event shape, and the parameters that
# identify a distribution of the family.
def _normal(ev, batch, dtype):
    shape = batch + ev
    loc, scale = torch.randn(shape, dtype=dtype), torch.rand(shape, dtype=dtype) + 0.3
    return _independent(torch.distributions.Normal(loc, scale), len(ev))


def _point(ev, batch, dtype):
    loc = torch.randn(batch + ev, dtype=dtype)
    return _independent(torch.distributions.Normal(loc, torch.full_like(loc, POINT_SCALE)), len(ev))


def _gamma(ev, batch, dtype):
    shape = batch + ev
    conc, rate = torch.rand(shape, dtype=dtype) * 4 + 0.2, torch.rand(shape, dtype=dtype) * 3 + 0.2
    return _independent(torch.distributions.Gamma(conc, rate), len(ev))


def _beta(ev, batch, dtype):
    shape = batch + ev
    a, b = torch.rand(shape, dtype=dtype) * 4 + 0.2, torch.rand(shape, dtype=dtype) * 4 + 0.2
    return _independent(torch.distributions.Beta(a, b), len(ev))


def _bernoulli(ev, batch, dtype):
    return _independent(torch.distributions.Bernoulli(logits=torch.randn(batch + ev, dtype=dtype) * 2), len(ev))


def _dirichlet(ev, batch, dtype):
    conc = torch.rand(batch + ev, dtype=dtype) * 4 + 0.2
    return _independent(torch.distributions.Dirichlet(conc), len(ev) - 1)


def _categorical(ev, batch, dtype):
    probs = torch.rand(batch + ev, dtype=dtype) + 0.05
    return _independent(torch.distributions.Categorical(probs=probs), len(ev) - 1)


def _mvn(ev, batch, dtype):
    d = ev[-1]
    loc = torch.randn(batch + ev, dtype=dtype)
    return _independent(torch.distributions.MultivariateNormal(loc, _spd(batch + ev[:-1], d, dtype)), len(ev) - 1)


def _normal_wishart(ev, batch, dtype):
    d, outer = ev[-1], batch + ev[:-1]
    kappa = torch.rand(outer, dtype=dtype) * 2 + 0.3
    nu = torch.rand(outer, dtype=dtype) * 4 + d - 0.5
    loc = torch.randn(outer + (d,), dtype=dtype)
    return _independent(NormalWishartDistribution(kappa, nu, loc, _spd(outer, d, dtype) / d), len(ev) - 1)


def _base(d):
    while isinstance(d, Independent):
        d = d.base_dist
    return d


CASES = {
    # name: (family class kwargs, random distribution, parameter names, event shapes)
    "normal": (DiagNormal, {}, _normal, ("loc", "scale"), [(), (3,), (2, 2)]),
    "point_mass": (PointMass, {"scale": POINT_SCALE}, _point, ("mean",), [(), (3,)]),
    "gamma": (Gamma, {}, _gamma, ("concentration", "rate"), [(), (3,), (2, 2)]),
    "beta": (Beta, {}, _beta, ("concentration1", "concentration0"), [(), (3,)]),
    "bernoulli": (Bernoulli, {}, _bernoulli, ("probs",), [(), (3,)]),
    "dirichlet": (Dirichlet, {}, _dirichlet, ("concentration",), [(3,), (2, 4)]),
    "categorical": (Categorical, {}, _categorical, ("probs",), [(3,), (2, 4)]),
    "mvn": (MultivariateNormal, {}, _mvn, ("loc", "covariance_matrix"), [(1,), (3,), (2, 2)]),
    "normal_wishart": (
        NormalWishart,
        {},
        _normal_wishart,
        ("kappa", "nu", "loc", "scale_matrix"),
        [(1,), (2,), (2, 3)],
    ),
}
BATCHES = [(), (4,), (2, 3)]
CASE_IDS = [
    pytest.param(name, ev, id=f"{name}-{'x'.join(map(str, ev)) or 'scalar'}")
    for name, case in CASES.items()
    for ev in case[4]
]


def make(name, ev, batch=(4,), dtype=torch.float64):
    cls, kwargs, random_dist, _, _ = CASES[name]
    return cls(ev, **kwargs), random_dist(torch.Size(ev), torch.Size(batch), dtype)


@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("name,ev", CASE_IDS)
def test_distribution_round_trip(name, ev, batch):
    fam, dist = make(name, ev, batch)
    eta = fam.natural_from_distribution(dist)
    assert eta.shape == torch.Size(batch) + (fam.dim,)
    back = fam.distribution(eta)
    assert back.batch_shape == batch
    for param in CASES[name][3]:
        expected, got = getattr(_base(dist), param), getattr(_base(back), param)
        assert torch.allclose(got, expected.expand(got.shape), rtol=1e-10, atol=1e-10), param


@pytest.mark.parametrize("name,ev", [case for case in CASE_IDS if case.values[0] != "normal_wishart"])
def test_kl_matches_torch(name, ev):
    """Every pair torch has a closed form for (it has none for the Normal-Wishart: see below)."""
    fam, p = make(name, ev, (5,))
    _, q = make(name, ev, (5,))
    ours = fam.kl(fam.natural_from_distribution(p), fam.natural_from_distribution(q))
    assert ours.shape == (5,)
    assert torch.allclose(ours, kl_divergence(p, q), rtol=1e-6, atol=1e-6)


LOCATION_CASES = [case for case in CASE_IDS if case.values[0] in ("normal", "point_mass", "mvn")]


@pytest.mark.parametrize("name,ev", LOCATION_CASES)
def test_translation_moves_the_location_and_keeps_kl(name, ev):
    fam, p = make(name, ev, (5,))
    _, q = make(name, ev, (5,))
    eta_p, eta_q = fam.natural_from_distribution(p), fam.natural_from_distribution(q)
    loc = fam.location(eta_p)
    assert loc.shape == (5, max(1, math.prod(ev)))
    torch.testing.assert_close(loc.reshape(p.mean.shape), p.mean)
    shift = torch.randn(loc.shape[-1], dtype=torch.float64) * 100
    moved_p, moved_q = fam.translate(eta_p, shift), fam.translate(eta_q, shift)
    torch.testing.assert_close(fam.location(moved_p), loc - shift)
    torch.testing.assert_close(fam.kl(moved_p, moved_q), fam.kl(eta_p, eta_q), rtol=1e-9, atol=1e-9)
    # the same distribution, moved: only the location changes
    torch.testing.assert_close(fam.translate(moved_p, -shift), eta_p)


@pytest.mark.parametrize("name,ev", [case for case in CASE_IDS if case not in LOCATION_CASES])
def test_families_without_location(name, ev):
    fam, p = make(name, ev, (3,))
    eta = fam.natural_from_distribution(p)
    assert fam.location(eta) is None
    with pytest.raises(NotImplementedError, match="no location"):
        fam.translate(eta, torch.zeros(1))


@pytest.mark.filterwarnings("ignore:Low df values")  # torch's Wishart warns for D - 1 < nu < D
@pytest.mark.parametrize("name,ev", [("mvn", (2, 3)), ("normal_wishart", (2,)), ("normal_wishart", (2, 3))])
def test_kl_monte_carlo(name, ev):
    fam, p = make(name, ev, (3,))
    _, q = make(name, ev, (3,))
    num_samples = 10000
    x = p.sample((num_samples,))
    log_ratio = p.log_prob(x) - q.log_prob(x)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(num_samples)
    ours = fam.kl(fam.natural_from_distribution(p), fam.natural_from_distribution(q))
    assert ((ours - mc).abs() < 4 * se).all(), (ours, mc, se)


def test_normal_wishart_mean_params_monte_carlo():
    fam, p = make("normal_wishart", (3,), (2,))
    num_samples = 20000
    mu, lam = p.sample((num_samples,))
    stats = torch.cat(
        [
            (lam @ mu.unsqueeze(-1))[..., 0],
            (mu.unsqueeze(-2) @ lam @ mu.unsqueeze(-1))[..., 0],
            lam.flatten(-2),
            torch.logdet(lam).unsqueeze(-1),
        ],
        -1,
    )
    z = (stats.mean(0) - fam.mean_params(fam.natural_from_distribution(p))) / (stats.std(0) / math.sqrt(num_samples))
    assert z.abs().max() < 5, z


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=str)
@pytest.mark.parametrize("name,ev", CASE_IDS)
def test_mean_params_is_gradient_of_log_normalizer(name, ev, batch):
    fam, dist = make(name, ev, batch)
    eta = fam.natural_from_distribution(dist).requires_grad_()
    (grad,) = torch.autograd.grad(fam.log_normalizer(eta).sum(), eta)
    assert torch.allclose(fam.mean_params(eta.detach()), grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=str)
@pytest.mark.parametrize("name,ev", CASE_IDS)
def test_mean_natural_round_trip(name, ev, batch):
    fam, dist = make(name, ev, batch)
    eta = fam.natural_from_distribution(dist)
    mu = fam.mean_params(eta)
    back = fam.natural_from_mean(mu)
    assert torch.allclose(back, eta, rtol=1e-8, atol=1e-8)
    assert torch.allclose(fam.mean_params(back), mu, rtol=1e-8, atol=1e-8)
    assert mu is not eta and torch.equal(fam.natural_from_distribution(dist), eta)  # inputs untouched


@pytest.mark.parametrize("name,ev", CASE_IDS)
def test_float32(name, ev):
    fam, dist = make(name, ev, (2, 3), torch.float32)
    eta = fam.natural_from_distribution(dist)
    assert eta.dtype == torch.float32
    mu = fam.mean_params(eta)
    back = fam.natural_from_mean(mu)
    kl = fam.kl(eta, eta.flip(0))
    for out in (mu, back, kl, fam.log_normalizer(eta)):
        assert out.dtype == torch.float32 and out.isfinite().all()
    assert torch.allclose(back, eta, rtol=1e-3, atol=1e-3)
    eta64 = eta.double()
    assert torch.allclose(kl.double(), fam.kl(eta64, eta64.flip(0)), rtol=1e-3, atol=1e-3)
    assert fam.distribution(eta).batch_shape == (2, 3)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), case=st.sampled_from(CASE_IDS))
def test_kl_nonnegative_and_zero_on_diagonal(seed, case):
    name, ev = case.values
    torch.manual_seed(seed)
    fam, p = make(name, ev, (6,))
    _, q = make(name, ev, (6,))
    eta_p, eta_q = fam.natural_from_distribution(p), fam.natural_from_distribution(q)
    assert (fam.kl(eta_p, eta_q) >= -1e-10).all()
    assert fam.kl(eta_p, eta_p).abs().max() < 1e-10


# Newton solvers: converged to 1e-8 over wide ranges.
@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-6, 10), min_size=1, max_size=8))
def test_gamma_shape_solver(log_shapes):
    a = torch.tensor(log_shapes, dtype=torch.float64).exp()
    got = gamma_shape(torch.digamma(a) - a.log())
    assert torch.allclose(got, a, rtol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(-4, 4), min_size=3, max_size=3), min_size=1, max_size=6))
def test_dirichlet_solver(log_conc):
    alpha = torch.tensor(log_conc, dtype=torch.float64).exp()
    mean_log = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
    assert torch.allclose(dirichlet_concentration(mean_log), alpha, rtol=1e-8)
    assert torch.allclose(dirichlet_concentration(mean_log.float()).double(), alpha, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(1e-3, 1e4), min_size=1, max_size=6), st.integers(1, 5))
def test_wishart_dof_solver(excess, d):
    nu = torch.tensor(excess, dtype=torch.float64) + d - 1
    i = torch.arange(d, dtype=torch.float64)
    gap = torch.digamma((nu.unsqueeze(-1) - i) / 2).sum(-1) - d * (nu / 2).log()
    assert torch.allclose(wishart_dof(gap, d), nu, rtol=1e-8)


def test_solvers_without_solution_give_nan():
    assert gamma_shape(torch.tensor([0.0, 0.1, -0.1])).isnan().tolist() == [True, True, False]
    bad = torch.tensor([[0.0, -1.0], [-1.0, -1.0]])  # logsumexp >= 0 in the first row
    assert dirichlet_concentration(bad).isnan().all(-1).tolist() == [True, False]
    assert wishart_dof(torch.tensor([0.5, -0.5]), 2).isnan().tolist() == [True, False]


# Domain checks: (coordinate statistic index, value) that puts coordinate 0 outside the domain.
BAD_VALUES = {
    "normal": [(1, 0.5), (1, 0.0)],
    "gamma": [(0, -1.0), (1, 0.5)],
    "beta": [(0, 0.0), (1, -1.0)],
    "dirichlet": [(1, -0.5)],
    "mvn": [("eta2", 5.0)],
    "normal_wishart": [("kappa", 0.5), ("kappa", 0.0), ("nu", -0.5), ("eta3", 10.0)],
}


def _stat_index(name, key, d):
    if isinstance(key, int):
        return key
    return {"eta2": d, "kappa": d, "eta3": d + 1, "nu": -1}[key]


@pytest.mark.parametrize(
    "name,ev,bad",
    [(name, ev, bad) for name, case in CASES.items() for ev in case[4] for bad in BAD_VALUES.get(name, [])],
)
def test_invalid_parameters_detected(name, ev, bad):
    fam, dist = make(name, ev, (3,))
    eta = fam.natural_from_distribution(dist)
    assert not fam.invalid(eta).any()
    fam.check(eta, "client 0, field 'x'")
    corrupted = eta.clone()
    index = _stat_index(name, bad[0], ev[-1] if ev else 1)
    corrupted[1].view(fam.num_coords, fam.stat_dim)[-1, index] = bad[1]
    assert fam.invalid(corrupted).tolist() == [False, True, False]
    with pytest.raises(ValueError, match=r"client 2, field 'trans'.*index \[1\].*" + fam.domain_hint[:10]):
        fam.check(corrupted, "client 2, field 'trans'")


@pytest.mark.parametrize("name,ev", CASE_IDS)
def test_check_rejects_nonfinite_and_wrong_size(name, ev):
    fam, dist = make(name, ev, (3,))
    eta = fam.natural_from_distribution(dist)
    eta[2, 0] = math.nan
    with pytest.raises(ValueError, match="client 1, field 'w'.*NaN"):
        fam.check(eta, "client 1, field 'w'")
    with pytest.raises(ValueError, match="client 1.*size"):
        fam.check(eta[..., 1:], "client 1")


@pytest.mark.parametrize("name,ev", CASE_IDS)
def test_spec_round_trip(name, ev):
    fam, _ = make(name, ev)
    spec = json.loads(json.dumps(fam.spec()))
    assert family_from_spec(spec) == fam
    assert spec["family"] == fam.name


def test_family_from_spec_unknown():
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        family_from_spec({"family": "nope", "event_shape": []})


@pytest.mark.parametrize(
    "dist,expected",
    [
        (torch.distributions.Normal(torch.zeros(4, 3), 1.0), DiagNormal((3,))),
        (pdist.Normal(torch.zeros(4, 2, 3), 1.0).to_event(1), DiagNormal((2, 3))),
        (torch.distributions.Gamma(torch.ones(4), 1.0), Gamma(())),
        (pdist.Gamma(torch.ones(4, 2), 1.0), Gamma((2,))),
        (torch.distributions.Beta(torch.ones(4, 2), 1.0), Beta((2,))),
        (pdist.Bernoulli(logits=torch.zeros(4, 5)), Bernoulli((5,))),
        (torch.distributions.Dirichlet(torch.ones(4, 3)), Dirichlet((3,))),
        (pdist.Dirichlet(torch.ones(4, 5, 5)), Dirichlet((5, 5))),
        (torch.distributions.Categorical(torch.ones(4, 6)), Categorical((6,))),
        (pdist.Categorical(torch.ones(4, 2, 6)), Categorical((2, 6))),
        (torch.distributions.OneHotCategorical(torch.ones(4, 6)), Categorical((6,))),
        (torch.distributions.MultivariateNormal(torch.zeros(4, 2), torch.eye(2)), MultivariateNormal((2,))),
        (pdist.MultivariateNormal(torch.zeros(4, 3, 2), torch.eye(2)), MultivariateNormal((3, 2))),
        (
            NormalWishartDistribution(torch.ones(4), torch.full((4,), 3.0), torch.zeros(4, 2), torch.eye(2)),
            NormalWishart((2,)),
        ),
        (pdist.Delta(torch.zeros(4, 3)), PointMass((3,), scale=0.5)),
    ],
)
def test_family_of(dist, expected):
    fam = family_of(dist, point_scale=0.5)
    assert fam == expected
    eta = fam.natural_from_distribution(dist)
    assert eta.shape == (4, fam.dim)


def test_family_of_rejects_unknown_and_delta_without_scale():
    with pytest.raises(ValueError, match="Laplace is not a supported"):
        family_of(torch.distributions.Laplace(torch.zeros(3), 1.0))
    with pytest.raises(ValueError, match="point_scale"):
        family_of(pdist.Delta(torch.zeros(3)))


def test_natural_constructors():
    loc, cov = torch.tensor([1.0, -1.0]), torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    mvn = MultivariateNormal((2,))
    eta = mvn.natural(loc, covariance_matrix=cov)
    assert torch.allclose(eta, mvn.natural(loc, precision_matrix=torch.linalg.inv(cov)))
    assert torch.allclose(mvn.distribution(eta).covariance_matrix, cov, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        mvn.natural(loc)
    with pytest.raises(ValueError, match="2 x 2 matrices"):
        mvn.natural(torch.zeros(2), covariance_matrix=torch.eye(3))
    with pytest.raises(ValueError, match="loc of shape"):
        MultivariateNormal((2, 3)).natural(torch.zeros(4, 3), covariance_matrix=torch.eye(3))
    with pytest.raises(ValueError, match="logits of shape"):
        Categorical((2, 3)).natural_from_distribution(torch.distributions.Categorical(logits=torch.zeros(4, 3)))
    nw = NormalWishart((2,))
    eta = nw.natural(torch.tensor(2.0), torch.tensor(5.0), loc, cov)
    kappa, nu, m, w = nw.params(eta)
    assert torch.allclose(kappa, torch.tensor(2.0)) and torch.allclose(nu, torch.tensor(5.0))
    assert torch.allclose(m, loc, atol=1e-6) and torch.allclose(w, cov, atol=1e-5)
    shared = NormalWishart((3, 2)).natural(torch.ones(3), torch.full((3,), 5.0), torch.zeros(3, 2), cov)
    assert torch.allclose(NormalWishart((3, 2)).params(shared)[3], cov.expand(3, 2, 2), atol=1e-5)
    with pytest.raises(ValueError, match="loc of shape"):
        NormalWishart((3, 2)).natural(torch.ones(3), torch.full((3,), 5.0), torch.zeros(2), cov)
    # documented mean parameters of the Normal-Wishart
    mu = nw.mean_params(eta)
    assert torch.allclose(mu[2:3], 2 / 2.0 + 5 * loc @ cov @ loc)
    expected_log_det = torch.digamma(torch.tensor([5.0, 4.0]) / 2).sum() + 2 * math.log(2) + torch.logdet(cov)
    assert torch.allclose(mu[-1], expected_log_det)
    cat = Categorical((3,))
    eta = cat.natural(torch.tensor([2.0, 1.0, 1.0]))  # normalised on the way in
    assert torch.allclose(cat.mean_params(eta), torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(Bernoulli().natural(torch.tensor(0.5)), torch.zeros(1))
    gamma = Gamma((3,))  # scalar parameters broadcast against the event shape
    assert torch.equal(gamma.natural(torch.full((2, 3), 2.0), torch.tensor(1.0)), gamma.natural(torch.full((2, 3), 2.0), torch.ones(2, 3)))
    with pytest.raises(ValueError, match="at least|>= 2"):
        Dirichlet((1,))


def test_categorical_average_is_normalised_geometric_mean():
    cat = Categorical((3,))
    p, q = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.6, 0.3, 0.1])
    average = 0.5 * (cat.natural(p) + cat.natural(q))
    geometric = (p * q).sqrt()
    assert torch.allclose(cat.distribution(average).probs, geometric / geometric.sum())
    assert torch.allclose(cat.kl(cat.natural(p), average), (p * (p.log() - (geometric / geometric.sum()).log())).sum())


def test_normal_wishart_distribution_shapes_and_log_prob():
    d = NormalWishartDistribution(torch.tensor([1.0, 2.0]), torch.tensor(4.0), torch.zeros(2, 3), torch.eye(3))
    assert d.batch_shape == (2,) and d.event_shape == (3,)
    mu, lam = d.rsample((5,))
    assert mu.shape == (5, 2, 3) and lam.shape == (5, 2, 3, 3)
    manual = torch.distributions.Wishart(d.nu, covariance_matrix=d.scale_matrix).log_prob(lam)
    manual = manual + torch.distributions.MultivariateNormal(
        d.loc, precision_matrix=d.kappa[:, None, None] * lam
    ).log_prob(mu)
    assert torch.allclose(d.log_prob((mu, lam)), manual)
    assert d.expand((4, 2)).batch_shape == (4, 2)
    with pytest.raises(ValueError, match="nu > D - 1"):
        NormalWishartDistribution(torch.tensor(1.0), torch.tensor(1.5), torch.zeros(3), torch.eye(3))


@pytest.mark.parametrize("module", ["base", "normal", "gamma", "dirichlet", "discrete", "gaussian", "vector", "registry"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"pyro_fusion.expfam.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
