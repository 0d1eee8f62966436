import itertools

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pyro_fusion import Components, FusionResult, barycenter, fuse, kl_cost_matrix, price_of, spread_price
from pyro_fusion.price import COST_FLOOR
from pyro_fusion.expfam import DiagNormal, PointMass
from pyro_fusion.metrics import hausdorff
from pyro_fusion.synthetic import gaussian_atoms_problem

DIRECTIONS = ["reverse", "forward"]


def normal_client(loc, scale, dtype=torch.float64):
    loc = torch.as_tensor(loc, dtype=dtype)
    return Components.from_distributions({"loc": Normal(loc, torch.as_tensor(scale, dtype=dtype).expand_as(loc))})


def fused_means(result):
    return result.distributions()["loc"].mean


def assert_same_up_to_relabelling(a, b, atol):
    ma, mb = fused_means(a), fused_means(b)
    assert ma.shape == mb.shape
    d = torch.cdist(ma.double(), mb.double())
    assert d.min(1).values.max() < atol and d.min(0).values.max() < atol


def assert_objective_never_increases(result):
    obj = torch.tensor(result.objective, dtype=torch.float64)
    tol = 1e-9 * obj.abs().max()
    assert ((obj[1:] - obj[:-1]) <= tol).all(), (obj[1:] - obj[:-1]).max()


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("num_clients", [1, 2, 5])
@pytest.mark.parametrize("L", [1, 7])
def test_identical_clients_fuse_back(direction, num_clients, L):
    gen = torch.Generator().manual_seed(L)
    loc = torch.randn(L, 3, generator=gen, dtype=torch.float64) * 10
    scale = torch.rand(L, 3, generator=gen, dtype=torch.float64) + 0.1
    client = normal_client(loc, scale)
    result = fuse([client] * num_clients, direction=direction, price=1.0)
    assert result.num_global == L
    for a in result.assignments:
        assert torch.equal(a, result.assignments[0])
    fused = result.distributions()["loc"].base_dist
    order = result.assignments[0]
    torch.testing.assert_close(fused.loc[order], loc)
    torch.testing.assert_close(fused.scale[order], scale)
    assert (result.support == num_clients).all()
    assert result.converged


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_permuting_inside_a_client_changes_nothing(direction):
    problem = gaussian_atoms_problem(12, 6, 4, seed=3, dtype=torch.float64)
    base = fuse(problem.clients, direction=direction)
    perm = torch.randperm(len(problem.clients[2]), generator=torch.Generator().manual_seed(1))
    clients = list(problem.clients)
    clients[2] = clients[2].select(perm)
    permuted = fuse(clients, direction=direction)
    assert_same_up_to_relabelling(base, permuted, 1e-8)
    # the permuted client's components land on the same fused components
    torch.testing.assert_close(
        fused_means(permuted)[permuted.assignments[2]], fused_means(base)[base.assignments[2][perm]]
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_client_order_changes_nothing_when_optimum_is_unique(seed):
    problem = gaussian_atoms_problem(10, 5, 3, seed=0, dtype=torch.float64)
    ref = fuse(problem.clients, seed=0)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    other = fuse([problem.clients[i] for i in order], seed=seed)
    assert_same_up_to_relabelling(ref, other, 1e-8)


@pytest.mark.parametrize("price", [None, "spread"])
@pytest.mark.parametrize("noise", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_recovers_true_count(noise, direction, price):
    D = 3
    problem = gaussian_atoms_problem(
        20, 10, D, noise=noise, posterior_scale=noise, atom_scale=20.0, keep_prob=0.6, seed=7
    )
    result = fuse(problem.clients, direction=direction, price=price)
    assert result.num_global == len(problem.used_atoms) == 20
    assert hausdorff(fused_means(result), problem.used_atoms) < noise * D**0.5
    assert_objective_never_increases(result)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("price_scale", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("seed", range(3))
def test_objective_never_increases_on_hard_problems(direction, price_scale, seed):
    # overlapping atoms, noisy clients: many re-assignments happen
    problem = gaussian_atoms_problem(
        15, 8, 2, noise=1.0, posterior_scale=0.7, atom_scale=2.0, seed=seed, dtype=torch.float64
    )
    price = price_scale * price_of("closest-pair", problem.clients, direction=direction)
    result = fuse(problem.clients, direction=direction, price=price, seed=seed)
    assert len(result.objective) > len(problem.clients)
    assert_objective_never_increases(result)
    _check_result_consistent(problem.clients, result)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_parametric_mode(direction):
    problem = gaussian_atoms_problem(6, 5, 2, atom_scale=10.0, seed=1, dtype=torch.float64)
    result = fuse(problem.clients, direction=direction, num_global=8, seed=0)
    assert result.num_global == 8
    assert result.price is None
    assert_objective_never_increases(result)
    for client, a in zip(problem.clients, result.assignments):
        assert len(a.unique()) == len(client)
    with pytest.raises(ValueError, match="client 0 has 3 components, more than num_global=2"):
        fuse([normal_client(torch.zeros(3, 1), 1.0)], num_global=2)


def _check_result_consistent(clients, result):
    """Globals are the weighted barycenters of what is assigned to them; support is right."""
    M = result.num_global
    support = torch.zeros(M, dtype=torch.long)
    for a in result.assignments:
        assert len(a.unique()) == len(a), "a global takes at most one component per client"
        support.index_add_(0, a, torch.ones_like(a))
    assert torch.equal(support, result.support)
    assert (support > 0).all()
    for g in range(M):
        members = [c.select(a.eq(g).nonzero().squeeze(-1)) for c, a in zip(clients, result.assignments)]
        members = [m for m in members if len(m)]
        stacked = Components({"loc": (members[0]["loc"].family, torch.cat([m["loc"].natural for m in members]))})
        bary = barycenter(stacked, direction=result.direction).concat()[0]
        torch.testing.assert_close(result.components.concat()[g], bary.to(result.components.dtype))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_barycenter_is_stationary(direction, dtype):
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(5, 4, generator=gen, dtype=dtype)
    scale = torch.rand(5, 4, generator=gen, dtype=dtype) + 0.2
    comps = normal_client(loc, scale, dtype)
    w = torch.rand(5, generator=gen, dtype=dtype) + 0.1
    bary = barycenter(comps, w, direction=direction)
    fam = comps["loc"].family
    eta = bary["loc"].natural.detach().double().requires_grad_()
    etas = comps["loc"].natural.double()
    kl = fam.kl(eta, etas) if direction == "reverse" else fam.kl(etas, eta)
    (w.double() * kl).sum().backward()
    assert eta.grad.abs().max() < (1e-4 if dtype == torch.float32 else 1e-9)


def test_forward_barycenter_is_moment_matching():
    comps = normal_client(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [2.0]]))
    fused = barycenter(comps, direction="forward").distributions()["loc"].base_dist
    assert float(fused.loc) == pytest.approx(1.0)
    assert float(fused.scale.square()) == pytest.approx(0.5 * (1 + 4) + 1.0)  # E var + var E
    reverse = barycenter(comps, direction="reverse").distributions()["loc"].base_dist
    assert float(reverse.scale.square()) == pytest.approx(1 / (0.5 * (1 + 1 / 4)))  # harmonic


def test_point_estimates_fuse_like_means():
    fam = PointMass(event_shape=(2,), scale=0.1)
    a = Components({"w": (fam, fam.natural(torch.tensor([[0.0, 0.0], [5.0, 5.0]])))})
    b = Components({"w": (fam, fam.natural(torch.tensor([[5.1, 4.9], [0.1, -0.1]])))})
    result = fuse([a, b], price=10.0)
    assert result.num_global == 2
    values = fam.value(result.components["w"].natural)
    assert torch.allclose(values[result.assignments[0]], torch.tensor([[0.05, -0.05], [5.05, 4.95]]))


def test_product_combination_is_the_pooled_posterior():
    # conjugate Normal mean with known noise: each client's exact posterior from its own data
    prior_scale, noise = 3.0, 0.5
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(n, generator=gen, dtype=torch.float64) * noise + 1.5 for n in (5, 8, 3)]

    def posterior(x):
        precision = prior_scale**-2 + len(x) / noise**2
        return x.sum() / noise**2 / precision, precision**-0.5

    clients = [normal_client(torch.tensor([[posterior(x)[0]]]), posterior(x)[1]) for x in data]
    prior = normal_client(torch.zeros(1, 1), prior_scale)
    result = fuse(clients, prior=prior, combine="product", price=1e6)
    mean, scale = posterior(torch.cat(data))
    fused = result.distributions()["loc"].base_dist
    torch.testing.assert_close(fused.loc, torch.tensor([[mean]], dtype=torch.float64))
    torch.testing.assert_close(fused.scale, torch.tensor([[scale]], dtype=torch.float64))


def test_product_outside_the_domain_is_an_error():
    prior = normal_client(torch.zeros(1, 1), 0.1)  # prior much tighter than the posteriors
    clients = [normal_client(torch.zeros(1, 1), 1.0) for _ in range(3)]
    with pytest.raises(ValueError, match="combine='product'"):
        fuse(clients, prior=prior, combine="product", price=1.0)


def test_prior_price_recovers_count():
    problem = gaussian_atoms_problem(10, 6, 2, noise=0.1, posterior_scale=0.1, atom_scale=10.0, seed=2)
    prior = normal_client(torch.zeros(1, 2), 10.0, torch.float32)
    result = fuse(problem.clients, prior=prior, price="prior")
    assert result.num_global == len(problem.used_atoms)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N,M,D", [(1, 1, 1), (4, 6, 3), (9, 2, 5)])
def test_cost_matrix_matches_pairwise_kl(direction, dtype, N, M, D):
    gen = torch.Generator().manual_seed(N * M * D)
    p = Normal(torch.randn(N, D, generator=gen, dtype=dtype), torch.rand(N, D, generator=gen, dtype=dtype) + 0.3)
    q = Normal(torch.randn(M, D, generator=gen, dtype=dtype), torch.rand(M, D, generator=gen, dtype=dtype) + 0.3)
    cost = kl_cost_matrix(Components.from_distributions({"x": p}), Components.from_distributions({"x": q}), direction)
    assert cost.shape == (N, M) and cost.dtype == dtype
    for i, j in itertools.product(range(N), range(M)):
        pi = Normal(p.loc[i], p.scale[i])
        qj = Normal(q.loc[j], q.scale[j])
        ref = torch.distributions.kl_divergence(*((qj, pi) if direction == "reverse" else (pi, qj))).sum()
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert abs(float(cost[i, j] - ref)) < tol * (1 + float(ref))


def test_save_load_round_trip(tmp_path):
    problem = gaussian_atoms_problem(6, 3, 2, seed=0)
    result = fuse(problem.clients)
    path = str(tmp_path / "result.safetensors")
    result.save(path)
    loaded = FusionResult.load(path)
    assert loaded.num_global == result.num_global
    torch.testing.assert_close(loaded.components.concat(), result.components.concat())
    for a, b in zip(loaded.assignments, result.assignments):
        assert torch.equal(a, b)
    assert loaded.objective == result.objective and loaded.direction == result.direction


def test_load_rejects_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="evil.pt.*never"):
        FusionResult.load(str(path))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        FusionResult.load(str(tmp_path / "missing.safetensors"))


# ----- bad inputs ------------------------------------------------------------------------


def _good():
    return [normal_client(torch.zeros(2, 3), 1.0), normal_client(torch.ones(2, 3), 1.0)]


def _with_eta(eta):
    return Components({"loc": (DiagNormal((3,)), eta)})


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: _good() + [_with_eta(torch.full((2, 6), float("nan")))], "client 2, field 'loc'.*NaN"),
        (lambda: _good() + [_with_eta(torch.full((2, 6), float("inf")))], "client 2, field 'loc'.*NaN or inf"),
        (lambda: _good() + [_with_eta(torch.ones(2, 6))], "client 2, field 'loc'.*scales must be positive"),
        (lambda: _good() + [normal_client(torch.zeros(2, 4), 1.0)], "client 2, field 'loc'.*event shapes"),
        (lambda: _good() + [_with_eta(torch.zeros(0, 6))], "client 2 has zero components"),
        (
            lambda: _good() + [Components({"loc": (PointMass((3,), 1.0), torch.zeros(2, 3))})],
            "client 2, field 'loc'.*family point_mass differs",
        ),
        (
            lambda: _good() + [Components.from_distributions({"mean": Normal(torch.zeros(2, 3), 1.0)})],
            "client 2 has fields",
        ),
    ],
)
def test_bad_clients(make, match):
    clients = make()
    before = [c.concat().clone() for c in clients]
    with pytest.raises(ValueError, match=match):
        fuse(clients, price=1.0)
    for c, b in zip(clients, before):
        assert torch.equal(c.concat(), b, ) if not torch.isnan(b).any() else torch.isnan(c.concat()).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"direction": "sideways"}, "unknown direction 'sideways'"),
        ({"weights": [1.0, -1.0]}, "client 1: weight must be positive"),
        ({"weights": [1.0]}, "got 1 weights for 2 clients"),
        ({"price": -1.0}, "price must be positive"),
        ({"num_global": 0}, "num_global must be a positive integer"),
        ({"combine": "max"}, "unknown combine"),
        ({"combine": "product"}, "needs the prior"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fuse(_good(), **kwargs)


def test_fusion_does_not_modify_inputs():
    problem = gaussian_atoms_problem(8, 4, 2, seed=0)
    before = [c.concat().clone() for c in problem.clients]
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    fuse(problem.clients, weights, direction="forward")
    for c, b in zip(problem.clients, before):
        assert torch.equal(c.concat(), b)
    assert torch.equal(weights, torch.tensor([1.0, 2.0, 3.0, 4.0]))


# ----- every family ----------------------------------------------------------------------

FAMILY_CASES = [pytest.param(name, ev, id=f"{name}-{ev}") for name, ev in [
    ("normal", (2,)), ("point_mass", (3,)), ("gamma", (2,)), ("beta", ()), ("bernoulli", (3,)),
    ("dirichlet", (4,)), ("categorical", (2, 3)), ("mvn", (2,)), ("normal_wishart", (2,)),
]]


def family_components(name, ev, L, seed):
    from test_expfam import make

    torch.manual_seed(seed)
    family, d = make(name, ev, (L,))
    return Components({"f": (family, family.natural_from_distribution(d).reshape(L, family.dim))})


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name,ev", FAMILY_CASES)
def test_cost_matrix_every_family(name, ev, direction):
    a, b = family_components(name, ev, 4, 0), family_components(name, ev, 3, 1)
    cost = kl_cost_matrix(a, b, direction)
    fam = a["f"].family
    eta_a, eta_b = a["f"].natural.unsqueeze(1), b["f"].natural.unsqueeze(0)
    ref = fam.kl(eta_b, eta_a) if direction == "reverse" else fam.kl(eta_a, eta_b)
    torch.testing.assert_close(cost, ref, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name,ev", FAMILY_CASES)
def test_identical_clients_every_family(name, ev, direction):
    client = family_components(name, ev, 5, 2)
    perms = [torch.randperm(5, generator=torch.Generator().manual_seed(j)) for j in range(3)]
    result = fuse([client.select(p) for p in perms], direction=direction)
    assert result.num_global == 5
    for p, a in zip(perms, result.assignments):
        torch.testing.assert_close(result.components.concat()[a], client.concat()[p], atol=1e-7, rtol=1e-7)
    assert_objective_never_increases(result)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name,ev", FAMILY_CASES)
def test_objective_never_increases_every_family(name, ev, direction):
    clients = [family_components(name, ev, L, seed) for seed, L in enumerate([3, 5, 4, 2, 5])]
    price = price_of("closest-pair", clients, direction=direction)
    result = fuse(clients, direction=direction, price=price)
    assert_objective_never_increases(result)
    for client, a in zip(clients, result.assignments):
        assert len(a.unique()) == len(client)


# ----- properties ------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    dim=st.integers(1, 3),
    spread=st.floats(0.5, 5.0),
    price=st.floats(0.05, 50.0),
    direction=st.sampled_from(DIRECTIONS),
    seed=st.integers(0, 2**16),
)
def test_fusion_invariants(sizes, dim, spread, price, direction, seed):
    gen = torch.Generator().manual_seed(seed)
    clients = [
        normal_client(torch.randn(L, dim, generator=gen, dtype=torch.float64) * spread,
                      torch.rand(L, dim, generator=gen, dtype=torch.float64) + 0.2)
        for L in sizes
    ]
    result = fuse(clients, direction=direction, price=price, seed=seed)
    assert_objective_never_increases(result)
    _check_result_consistent(clients, result)
    assert max(sizes) <= result.num_global <= sum(sizes)
    # the recorded objective is F evaluated from scratch at the final assignment
    total = sum(
        float(kl_cost_matrix(c, result.components, direction)[torch.arange(len(c)), a].sum())
        for c, a in zip(clients, result.assignments)
    )
    assert result.objective[-1] == pytest.approx(total + price * result.num_global, rel=1e-9, abs=1e-9)


def close_pair_never_together(seed):
    """Atoms A, B far apart and C close to A; clients hold {A, B} or {B, C}, never A and C."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.tensor([[0.0, 0.0], [20.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    clients = []
    for j in range(10):
        held = atoms[[0, 1]] if j < 6 else atoms[[1, 2]]
        loc = held + 0.1 * torch.randn(held.shape, generator=gen, dtype=torch.float64)
        clients.append(normal_client(loc, 0.1))
    return clients


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spread_price_separates_close_components_no_client_holds_together(direction, seed):
    clients = close_pair_never_together(seed)
    # every client's closest pair is far apart, so that price merges A and C ...
    assert fuse(clients, direction=direction, seed=seed).num_global == 2
    # ... while the spread between versions of one atom keeps them apart
    result = fuse(clients, direction=direction, price="spread", seed=seed)
    assert result.num_global == 3
    assert result.price == pytest.approx(spread_price(clients, direction=direction, seed=seed))
    assert_objective_never_increases(result)


def test_spread_price_invariances():
    problem = gaussian_atoms_problem(8, 5, 2, noise=0.2, posterior_scale=0.2, seed=4, dtype=torch.float64)
    clients = problem.clients
    base = spread_price(clients)
    assert base > 0
    assert spread_price(clients[::-1]) == pytest.approx(base)
    shuffled = [Components({n: (f.family, f.natural.flip(0)) for n, f in c.fields.items()}) for c in clients]
    assert spread_price(shuffled) == pytest.approx(base)
    assert spread_price(clients, weights=torch.full((5,), 7.0)) == pytest.approx(base)
    assert fuse(clients, price="spread").price == pytest.approx(base)
    # a random subset of rows starts the search from a similar estimate
    assert spread_price(clients, max_rows=len(torch.cat([c.concat() for c in clients])) - 1) > 0


def lower_median(values):
    return torch.cat(values).sort().values[(sum(map(len, values)) - 1) // 2]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_spread_price_follows_its_definition(direction):
    problem = gaussian_atoms_problem(8, 5, 2, noise=0.2, posterior_scale=0.2, seed=5, dtype=torch.float64)
    clients = problem.clients
    # start: 40 x the lower median cost of a component to the nearest one of another client
    nearest = [
        kl_cost_matrix(c, others_of(clients, j), direction).min(-1).values for j, c in enumerate(clients)
    ]
    start = 40 * lower_median(nearest)
    # one re-estimation: 40 x the lower median cost of a component to its global, over globals
    # that two or more clients share, after fusing at the start price
    result = fuse(clients, direction=direction, price=float(start))
    member = []
    for c, a in zip(clients, result.assignments):
        cost = kl_cost_matrix(c, result.components, direction).gather(-1, a[:, None]).squeeze(-1)
        member.append(cost[result.support[a] >= 2])
    assert spread_price(clients, direction=direction, iterations=1) == pytest.approx(
        40 * float(lower_median(member)), rel=1e-6
    )


def others_of(clients, j):
    """All components of the clients other than ``j``, as one Components."""
    d = [c.distributions()["loc"] for i, c in enumerate(clients) if i != j]
    return normal_client(torch.cat([x.mean for x in d]), torch.cat([x.stddev for x in d]))
    # identical clients: every nearest cost is 0; the floor keeps the price positive
    assert spread_price([clients[0]] * 3) > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"multiple": 0.0}, "multiple must be positive"),
        ({"multiple": float("inf")}, "multiple must be positive"),
        ({"iterations": 0}, "iterations must be >= 1"),
    ],
)
def test_spread_price_errors(kwargs, match):
    problem = gaussian_atoms_problem(4, 3, 2, seed=0)
    with pytest.raises(ValueError, match=match):
        spread_price(problem.clients, **kwargs)
    with pytest.raises(ValueError, match="at least two clients"):
        spread_price(problem.clients[:1])
    with pytest.raises(ValueError, match="client 1"):
        spread_price([problem.clients[0], normal_client(torch.zeros(2, 3), 1.0)])
    with pytest.raises(ValueError, match="unknown price rule 'nearest'"):
        fuse(problem.clients, price="nearest")


def test_fusion_docstring_examples():
    import doctest

    import pyro_fusion.fusion

    result = doctest.testmod(pyro_fusion.fusion, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


# ----- warm starts ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("num_global", [None, 12])
def test_warm_start_from_a_converged_result_takes_one_sweep(direction, num_global):
    problem = gaussian_atoms_problem(10, 6, 3, noise=0.3, posterior_scale=0.3, seed=2, dtype=torch.float64)
    kwargs = dict(direction=direction, num_global=num_global, price=None if num_global else 20.0)
    cold = fuse(problem.clients, **kwargs)
    assert cold.converged
    warm = fuse(problem.clients, init=cold, **kwargs)
    assert warm.iterations == 1 and warm.converged and warm.info["updates"] == 0
    for a, b in zip(warm.assignments, cold.assignments):
        assert torch.equal(a, b)
    assert warm.objective[0] == pytest.approx(cold.objective[-1], rel=1e-12)
    assert_objective_never_increases(warm)
    # a list of assignments with any global labels (here shifted, with gaps) is the same start
    relabelled = fuse(problem.clients, init=[3 * a + 100 for a in cold.assignments], **kwargs)
    for a, b in zip(relabelled.assignments, cold.assignments):
        assert torch.equal(a, b)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("factor", [0.05, 20.0])
def test_warm_start_after_a_price_change(direction, factor):
    problem = gaussian_atoms_problem(
        15, 8, 2, noise=1.0, posterior_scale=0.7, atom_scale=2.0, seed=1, dtype=torch.float64
    )
    price = price_of("closest-pair", problem.clients, direction=direction)
    first = fuse(problem.clients, direction=direction, price=price)
    warm = fuse(problem.clients, direction=direction, price=factor * price, init=first)
    assert warm.converged
    assert_objective_never_increases(warm)
    _check_result_consistent(problem.clients, warm)
    assert (warm.num_global < first.num_global) == (factor > 1)


def test_warm_start_parametric_seeds_unused_globals():
    problem = gaussian_atoms_problem(6, 5, 2, atom_scale=10.0, seed=1, dtype=torch.float64)
    start = [torch.arange(len(c)) for c in problem.clients]
    used = len(torch.cat(start).unique())
    result = fuse(problem.clients, num_global=used + 2, init=start)
    assert result.num_global == used + 2
    assert_objective_never_increases(result)
    spread = [torch.arange(len(c)) + 2 * j for j, c in enumerate(problem.clients)]
    used = len(torch.cat(spread).unique())
    with pytest.raises(ValueError, match=f"init uses {used} global components, more than num_global={used - 1}"):
        fuse(problem.clients, num_global=used - 1, init=spread)


@pytest.mark.parametrize(
    "init, match",
    [
        (lambda a: a[:-1], "init: expected a FusionResult or a list of 3 assignments"),
        (lambda a: torch.zeros(3, 2), "init: expected a FusionResult or a list of 3 assignments"),
        (lambda a: [a[0], a[1].double(), a[2]], "init: client 1: expected a 1-D integer tensor"),
        (lambda a: [a[0], a[1], a[2] - 10], "init: client 2: negative global index"),
        (lambda a: [a[0], torch.zeros_like(a[1]), a[2]], "init: client 1 assigns two of its components"),
        (lambda a: [a[0], a[1][:1], a[2]], "init: client 1 has 2 components, its assignment 1"),
    ],
)
def test_bad_warm_starts(init, match):
    clients = _good() + [normal_client(torch.full((2, 3), 2.0), 1.0)]
    start = [torch.arange(2), torch.arange(2), torch.arange(2)]
    with pytest.raises(ValueError, match=match):
        fuse(clients, price=1.0, init=init(start))


# ----- convergence, costs, threads -----------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_duplicated_components_converge(direction):
    # every client holds one component twice: exchanging the two copies changes nothing
    gen = torch.Generator().manual_seed(0)
    clients = []
    for j in range(5):
        loc = torch.randn(3, 2, generator=gen, dtype=torch.float64) + torch.tensor([[0.0, 0], [9, 0], [9, 0]])
        loc[2] = loc[1]
        clients.append(normal_client(loc, 0.5))
    result = fuse(clients, direction=direction, price=5.0)
    assert result.converged and result.iterations <= 3
    assert_objective_never_increases(result)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("combine", ["average", "product"])
def test_costs_are_the_objective(direction, combine):
    problem = gaussian_atoms_problem(8, 5, 2, noise=0.3, posterior_scale=0.3, seed=3, dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    prior = normal_client(torch.zeros(1, 2), 100.0)
    result = fuse(problem.clients, weights, direction=direction, price=10.0, prior=prior, combine=combine)
    w = weights / weights.mean()
    total = sum(float(w[j] * c.sum()) for j, c in enumerate(result.costs))
    assert result.objective[-1] == pytest.approx(total + 10.0 * result.num_global, rel=1e-9)
    if combine == "average":  # against the returned components
        for client, a, cost in zip(problem.clients, result.assignments, result.costs):
            full = kl_cost_matrix(client, result.components, direction)
            torch.testing.assert_close(cost, full[torch.arange(len(a)), a])


def test_num_threads_is_restored():
    problem = gaussian_atoms_problem(6, 3, 2, seed=0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fuse(problem.clients, price=1.0)
        assert torch.get_num_threads() == 2
        fuse(problem.clients, price=1.0, num_threads=None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_blocks_give_the_sequential_result(monkeypatch):
    """Matching in-memory clients in blocks (one GEMM, dirty columns refreshed) is exactly
    the client-by-client computation."""
    import pyro_fusion.fusion as engine

    problem = gaussian_atoms_problem(30, 40, 3, noise=0.5, posterior_scale=0.3, atom_scale=3.0, seed=5)
    blocked = fuse(problem.clients, price=3.0)
    monkeypatch.setattr(engine, "BLOCK_ROWS", 1)
    single = fuse(problem.clients, price=3.0)
    assert blocked.iterations == single.iterations > 1
    for a, b in zip(blocked.assignments, single.assignments):
        assert torch.equal(a, b)
    assert blocked.objective == pytest.approx(single.objective, rel=1e-6)


# ----- streamed clients and devices ----------------------------------------------------------


def test_lazy_clients_are_read_one_at_a_time():
    import weakref

    from pyro_fusion import LazyClients

    problem = gaussian_atoms_problem(10, 6, 3, noise=0.3, posterior_scale=0.3, seed=4, dtype=torch.float64)
    alive, peak, reads = set(), [0], [0]

    def load(j):
        client = Components({"loc": (problem.clients[j]["loc"].family, problem.clients[j]["loc"].natural.clone())})
        key = object()
        alive.add(key)
        weakref.finalize(client, alive.discard, key)
        peak[0] = max(peak[0], len(alive))
        reads[0] += 1
        return client

    for direction in DIRECTIONS:
        streamed = fuse(LazyClients(range(6), load), direction=direction, price=20.0)
        held = fuse(problem.clients, direction=direction, price=20.0)
        assert streamed.num_global == held.num_global
        for a, b in zip(streamed.assignments, held.assignments):
            assert torch.equal(a, b)
        assert streamed.objective == pytest.approx(held.objective, rel=1e-9)
    assert peak[0] <= 2  # the client being matched, and at most one not yet collected
    assert reads[0] > 2 * 6  # read again on every visit


def test_lazy_clients_are_checked_when_read():
    from pyro_fusion import LazyClients

    clients = _good() + [_with_eta(torch.full((2, 6), float("nan")))]
    with pytest.raises(ValueError, match="client 2, field 'loc'.*NaN"):
        fuse(LazyClients(clients, lambda c: c), price=1.0)
    with pytest.raises(ValueError, match="client 1 has 3 components, more than num_global=2"):
        fuse(LazyClients([clients[0], normal_client(torch.zeros(3, 3), 1.0)], lambda c: c), num_global=2)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_device_option_on_cpu(direction):
    problem = gaussian_atoms_problem(8, 4, 2, seed=0)
    default = fuse(problem.clients, direction=direction, price=5.0)
    explicit = fuse(problem.clients, direction=direction, price=5.0, device="cpu")
    assert explicit.components.concat().device.type == "cpu"
    torch.testing.assert_close(explicit.components.concat(), default.components.concat())
    assert explicit.objective == default.objective


# ----- numerics --------------------------------------------------------------------------------


def far_problem(ratio, dim, mode, seed=0, num_atoms=8, num_clients=6):
    """Atoms ``ratio`` scales from the origin (a shared offset, or spread that far); versions
    of one atom 1 nat apart."""
    gen = torch.Generator().manual_seed(seed)
    if mode == "offset":
        atoms = ratio + 20 * torch.randn(num_atoms, dim, generator=gen, dtype=torch.float64)
    else:
        atoms = ratio * torch.randn(num_atoms, dim, generator=gen, dtype=torch.float64)
    locs = []
    for _ in range(num_clients):
        keep = torch.randperm(num_atoms, generator=gen)[: num_atoms - 2]
        locs.append(atoms[keep] + torch.randn(len(keep), dim, generator=gen, dtype=torch.float64) / dim**0.5)
    return locs


@pytest.mark.parametrize("mode", ["offset", "spread"])
@pytest.mark.parametrize("ratio", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("dim", [10, 1000])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_float32_cost_matrix_far_from_the_origin(mode, ratio, dim, direction):
    locs = far_problem(ratio, dim, mode)
    local = normal_client(locs[0].float(), 1.0, torch.float32)
    global_ = normal_client(locs[1].float(), 1.05, torch.float32)
    cost = kl_cost_matrix(local, global_, direction)
    assert cost.dtype == torch.float32
    # exact KL of the float32 parameters as stored
    p = Normal(*(t[:, None] for t in DiagNormal((dim,)).loc_scale(local.concat().double())))
    q = Normal(*(t[None] for t in DiagNormal((dim,)).loc_scale(global_.concat().double())))
    exact = kl_divergence(*((q, p) if direction == "reverse" else (p, q))).sum(-1)
    assert float(((cost.double() - exact).abs() / exact).max()) <= 1e-3
    assert float(exact.min()) < 10  # close pairs were tested


@pytest.mark.parametrize("mode", ["offset", "spread"])
@pytest.mark.parametrize("ratio", [1e4, 1e6])
@pytest.mark.parametrize("dim", [10, 1000])
def test_float32_fusion_far_from_the_origin(mode, ratio, dim):
    locs = far_problem(ratio, dim, mode)
    results = [
        fuse([normal_client(loc.to(dtype), 1.0, dtype) for loc in locs], price=20.0)
        for dtype in (torch.float32, torch.float64)
    ]
    for result in results:
        assert result.num_global == 8
        assert_objective_never_increases(result)
    for a, b in zip(*(r.assignments for r in results)):
        assert torch.equal(a, b)


def _extreme_client(eta):
    return Components({"loc": (DiagNormal((3,)), eta)})


@pytest.mark.parametrize(
    "bad, dtype",
    [
        (torch.tensor([[1e30, -1.0] * 3, [0.0, -1.0] * 3]), torch.float32),  # float32 log-normalizer overflows
        (torch.tensor([[1e160, -5e9] * 3, [0.0, -1.0] * 3], dtype=torch.float64), torch.float64),
    ],
)
def test_clients_whose_costs_overflow_are_named(bad, dtype):
    clients = [c.with_natural(c.concat().to(dtype)) for c in _good()] + [_extreme_client(bad)]
    with pytest.raises(ValueError, match="client 2: component 0 has KL cost terms that are not finite"):
        fuse(clients, price=1.0)
    with pytest.raises(ValueError, match="client 2: component 0"):
        fuse(clients)  # before the default price rule runs


def test_a_rule_price_that_is_not_positive_is_an_error(monkeypatch):
    import pyro_fusion.fusion as engine

    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        monkeypatch.setattr(engine, "_counterpart_price", lambda *args, bad=bad, **kwargs: bad)
        with pytest.raises(ValueError, match=f"the counterpart price rule gave {bad}"):
            fuse(_good())


@pytest.mark.parametrize("rule", ["counterpart", "closest-pair"])
def test_rule_price_of_identical_components_is_the_floor(rule):
    client = normal_client(torch.zeros(3, 2, dtype=torch.float32), 1.0, torch.float32)
    assert price_of(rule, [client, client]) == COST_FLOOR
    assert fuse([client, client], price=rule).num_global == 3


def test_large_products_pick_the_faster_thread_count():
    from pyro_fusion.threads import LARGE_GEMM, GemmThreads, engine_threads, gemm_threads

    chooser = GemmThreads(threads=2, trials=1, revisit=4)
    chooser.samples = {1: [2.0], 2: [1.0]}  # two threads measured faster
    assert [chooser.choose() for _ in range(4)] == [2, 2, 2, 1]  # and one thread retried
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with engine_threads(1):
            assert torch.get_num_threads() == 1
            with gemm_threads(LARGE_GEMM):
                assert torch.get_num_threads() in (1, 2)
            with gemm_threads(LARGE_GEMM - 1):  # small products stay on one thread
                assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("module", ["cost", "threads", "synthetic"])
def test_engine_module_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"pyro_fusion.{module}"), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 1 and result.failed == 0
