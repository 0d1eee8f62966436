"""The price rules (pyro_fusion.price) and how fuse and the front doors take a price."""
import math

import pytest
import torch
from torch.distributions import Normal

from pyro_fusion import Components, Price, counterpart_price, default_price, fuse, price_of
from pyro_fusion.price import COST_FLOOR, RULES, closest_pair_price, counterpart_costs, prior_price
from pyro_fusion.synthetic import gaussian_atoms_problem


def client(locs, scale=1.0):
    loc = torch.as_tensor(locs, dtype=torch.float64).reshape(len(locs), -1)
    return Components.from_distributions({"x": Normal(loc, torch.full_like(loc, scale))})


def atoms(seed, num_atoms=20, num_clients=8, dim=4, **kwargs):
    return gaussian_atoms_problem(num_atoms, num_clients, dim, seed=seed, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_counterpart_price_is_homogeneous_in_the_costs(seed, direction):
    """Sharper posteriors (means s times farther apart for the same spreads: every KL between
    equal-spread components times s**2) give a price s**2 times larger, so the fused count does
    not depend on how much data each client had."""
    problem = atoms(seed)
    price = counterpart_price(problem.clients, direction=direction)
    for s in (0.1, 10.0):
        scaled = [
            Components.from_distributions({"loc": Normal(d.mean * s, d.stddev)})
            for d in (c.distributions()["loc"] for c in problem.clients)
        ]
        assert counterpart_price(scaled, direction=direction) == pytest.approx(s**2 * price, rel=1e-6)
        if direction == "reverse":  # (forward barycenters widen by the spread of their means)
            assert fuse(scaled).num_global == fuse(problem.clients).num_global


def test_counterpart_price_ignores_client_order_and_uniform_weights():
    clients = atoms(0).clients  # 8 clients: all are anchors and all are compared
    base = counterpart_price(clients)
    assert counterpart_price(clients[::-1]) == pytest.approx(base)
    assert counterpart_price(clients, weights=torch.full((8,), 5.0)) == pytest.approx(base)
    weights = torch.arange(1.0, 9.0)
    assert counterpart_price(clients, weights=weights) != pytest.approx(base)


def test_counterpart_price_follows_its_definition():
    a, b, c = client([0.0, 10.0]), client([1.0, 12.0]), client([0.5, 30.0, 11.0])
    first, second = counterpart_costs([a, b, c])
    m1, m2 = float(first[first >= COST_FLOOR].median()), float(second[second >= COST_FLOOR].median())
    expected = 1.5 * m1**0.25 * m2**0.75
    assert counterpart_price([a, b, c]) == pytest.approx(expected)
    assert counterpart_price([a, b, c], multiple=3.0, weight=0.0) == pytest.approx(3.0 * m1)
    assert counterpart_price([a, b, c], multiple=1.0, weight=1.0) == pytest.approx(m2)
    # runner-up costs come from the counterpart's own client: client b's other component
    assert set(second.tolist()) <= {
        float(v) for v in torch.cat([kl(x, y).flatten() for x in (a, b, c) for y in (a, b, c) if x is not y])
    }


def kl(a, b):
    from pyro_fusion import kl_cost_matrix

    return kl_cost_matrix(a, b).double()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("keep_prob", [None, 0.1])
def test_default_price_recovers_sparsely_shared_atoms(seed, keep_prob):
    """SPAHM's generator: atoms each client holds with probability p ~ Beta(1, 1) (or 0.1, so most
    pairs of clients share few atoms): the default rule finds every used atom and merges none."""
    problem = atoms(seed, num_atoms=60, num_clients=30, dim=10, keep_prob=keep_prob)
    result = fuse(problem.clients, seed=seed)
    assert result.num_global == len(problem.used_atoms)
    owners = [torch.cat([k[a == g] for k, a in zip(problem.kept, result.assignments)]).unique()
              for g in range(result.num_global)]
    assert all(len(o) == 1 for o in owners)  # each global holds one true atom


def test_rules_with_identical_components_stay_above_the_floor():
    twins = client([0.0, 0.0, 0.0])
    for rule in ("counterpart", "closest-pair", "spread"):
        assert price_of(rule, [twins, twins]) >= COST_FLOOR
    # two clients whose components coincide in pairs: the zero costs are left out of the medians
    a, b = client([0.0, 0.0, 5.0]), client([0.0, 5.0, 5.0])
    assert closest_pair_price([a, b]) == pytest.approx(12.5)


def test_one_client_needs_no_price():
    only = client([0.0, 3.0])
    assert counterpart_price([only]) == 1.0
    assert fuse([only]).num_global == 2


def test_prior_rule():
    a = client([1.0, 2.0, 3.0])
    prior = client([0.0])
    assert prior_price([a, a], prior) == pytest.approx(2.0)
    assert fuse([a, a], price="prior", prior=prior).price == pytest.approx(2.0)
    with pytest.raises(ValueError, match='"prior" needs'):
        fuse([a, a], price="prior")


def test_price_settings_and_scale():
    clients = atoms(1).clients
    for rule in RULES[:2]:
        base = price_of(rule, clients)
        assert fuse(clients, price=rule).price == pytest.approx(base)
        assert fuse(clients, price=Price(rule, scale=3.0)).price == pytest.approx(3 * base)
    assert price_of(None, clients) == price_of("counterpart", clients) == price_of(Price(), clients)
    assert fuse(clients, price=2.5).price == 2.5
    assert fuse(clients, num_global=max(len(c) for c in clients)).price is None


def test_spread_rule_reuses_its_last_fusion():
    clients = atoms(2).clients
    result = fuse(clients, price="spread")
    again = fuse(clients, price=result.price)
    assert result.num_global == again.num_global
    assert result.objective[-1] == pytest.approx(again.objective[-1], rel=1e-9)
    assert result.iterations == 1  # warm-started from the rule's own fusion at that price


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"price": True}, "price must be positive"),
        ({"price": [1.0]}, "price must be positive"),
        ({"price": math.nan}, "price must be positive"),
        ({"price": "median"}, "unknown price rule 'median'"),
        ({"price": Price("location")}, "unknown price rule 'location'"),
        ({"num_global": "4"}, "num_global must be a positive integer, got '4'"),
        ({"num_global": 2.0}, "num_global must be a positive integer"),
        ({"num_global": True}, "num_global must be a positive integer"),
        ({"seed": -1}, "seed must be a nonnegative integer, got -1"),
        ({"seed": 1.5}, "seed must be a nonnegative integer"),
        ({"max_sweeps": -2}, "max_sweeps must be a nonnegative integer"),
        ({"weights": ["a", "b"]}, "weights must be positive numbers"),
        ({"weights": [[1.0, 2.0]]}, None),
    ],
)
def test_fuse_arguments_are_checked(kwargs, match):
    a, b = client([0.0, 3.0]), client([0.5])
    if match is None:  # nested but the right count: accepted
        assert fuse([a, b], **kwargs).num_global >= 2
        return
    with pytest.raises(ValueError, match=match):
        fuse([a, b], **kwargs)


def test_warns_when_no_two_clients_share_a_component():
    a, b = client([0.0, 10.0]), client([0.2, 20.0])
    with pytest.warns(UserWarning, match="no two clients share a global component"):
        fuse([a, b], price=1e-3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fuse([a, b])
        fuse([a, b], num_global=4)
        fuse([a])


def test_default_price_is_deprecated():
    clients = atoms(0).clients
    with pytest.deprecated_call(match="default_price"):
        old = default_price(clients)
    assert old == price_of("closest-pair", clients)


def test_price_dataclass():
    assert Price() == Price(None, 1.0)
    for bad in (0.0, -1.0, math.inf, True, "2"):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            Price("counterpart", scale=bad)
    with pytest.raises(ValueError, match="rule must be a rule name"):
        Price(3.0)


@pytest.mark.parametrize("rule", [counterpart_price, closest_pair_price, counterpart_costs])
def test_rules_check_their_clients(rule):
    a = client([0.0, 3.0])
    other_field = Components.from_distributions({"y": Normal(torch.zeros(2, 1, dtype=torch.float64), 1.0)})
    wider = Components.from_distributions({"x": Normal(torch.zeros(2, 2, dtype=torch.float64), 1.0)})
    with pytest.raises(ValueError, match=r"client 1 has fields \['y'\]"):
        rule([a, other_field])
    with pytest.raises(ValueError, match="client 1, field 'x'.*event shapes"):
        rule([a, wider])
    with pytest.raises(ValueError, match="client 1: expected Components"):
        rule([a, "x"])


def test_prior_rule_checks_the_prior():
    a = client([1.0, 2.0])
    wider = Components.from_distributions({"x": Normal(torch.zeros(1, 2, dtype=torch.float64), 1.0)})
    for call in (lambda: prior_price([a, a], wider), lambda: price_of("prior", [a, a], prior=wider)):
        with pytest.raises(ValueError, match="client 1, field 'x'.*event shapes"):
            call()
    with pytest.raises(ValueError, match="prior must be one component, got 2"):
        prior_price([a], a)
