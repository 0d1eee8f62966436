import dataclasses
import json
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuideList,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.optim import Adam
from torch.distributions import constraints

import pyro_fusion
from pyro_fusion import FusedPosterior, FusedPrior, GuidePosterior, extract, fuse_posteriors, init_to_fused
from pyro_fusion.cli import main as cli_main


def mixture_model(K=3, data=None):
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
    with pyro.plate("components", K):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 10.0).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    noise = pyro.sample("noise", dist.Gamma(2.0, 2.0))
    return weights, loc, scale, noise


def set_autonormal(guide, K, seed):
    """Give an AutoNormal distinct, known parameters (as training would)."""
    gen = torch.Generator().manual_seed(seed)
    guide(K)
    with torch.no_grad():
        for name, p in guide.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return guide


def store_snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def assert_store_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("guide_type", [AutoNormal, AutoDiagonalNormal])
def test_extract_reads_locs_and_scales(guide_type):
    guide = set_autonormal(guide_type(mixture_model), 3, 0)
    post = extract(guide, 3, components={"loc": 0, "scale": 0}, simplex={"weights": [0]})
    assert len(post.components) == 3
    assert list(post.components.fields) == ["loc", "scale"]
    assert set(post.shared.fields) == {"noise"}
    loc_field = post.components["loc"]
    fam = loc_field.family
    if guide_type is AutoNormal:
        loc, scale = guide.locs.loc, guide.scales.loc
    else:
        median = guide.median()
        loc = median["loc"]
        scale = guide.scale[:6].reshape(3, 2)  # weights (2 unconstrained) come first? check below
    got_loc, got_scale = fam.loc_scale(loc_field.natural)
    torch.testing.assert_close(got_loc, loc.detach().reshape(3, 2))
    if guide_type is AutoNormal:
        torch.testing.assert_close(got_scale, scale.detach())
    # simplex site kept as a point value on the simplex
    axes, value = post.simplex["weights"]
    assert axes == (0,) and value.shape == (3,)
    torch.testing.assert_close(value.sum(), torch.tensor(1.0))


def test_autodiagonalnormal_layout_matches_median():
    """Pins the AutoContinuous packing order that extraction reconstructs."""
    guide = set_autonormal(AutoDiagonalNormal(mixture_model), 3, 1)
    post = extract(guide, 3, components={"loc": 0, "scale": 0}, simplex={"weights": [0]})
    median = guide.median()
    loc, _ = post.components["loc"].family.loc_scale(post.components["loc"].natural)
    torch.testing.assert_close(loc, median["loc"].detach())
    slog, _ = post.components["scale"].family.loc_scale(post.components["scale"].natural)
    torch.testing.assert_close(slog.exp().squeeze(-1), median["scale"].detach())
    torch.testing.assert_close(post.simplex["weights"][1], median["weights"].detach())


def test_extract_autodelta_and_guide_list():
    guide = AutoGuideList(mixture_model)
    guide.append(AutoNormal(poutine.block(mixture_model, expose=["loc", "weights"])))
    guide.append(AutoDelta(poutine.block(mixture_model, hide=["loc", "weights"])))
    guide(3)
    with pytest.raises(ValueError, match="point_scale"):
        extract(guide, 3, components={"loc": 0, "scale": 0}, simplex={"weights": [0]})
    post = extract(guide, 3, components={"loc": 0, "scale": 0}, simplex={"weights": [0]}, point_scale=0.5)
    assert post.sources == {"loc": "autonormal", "weights": "autonormal", "scale": "delta", "noise": "delta"}
    assert post.components["scale"].family.name == "point_mass"


def dirichlet_guide(K=3, V=5):
    conc = pyro.param("topic_conc", torch.ones(K, V) + torch.arange(V), constraint=constraints.positive)
    rate = pyro.param("rate_param", torch.full((K,), 2.0), constraint=constraints.positive)
    with pyro.plate("topic_plate", K):
        pyro.sample("topics", dist.Dirichlet(conc))
        pyro.sample("strength", dist.TransformedDistribution(dist.Gamma(3.0, rate), [dist.transforms.ExpTransform()]))


def test_extract_hand_written_guide():
    dirichlet_guide()
    before = store_snapshot()
    rng = torch.get_rng_state()
    post = extract(dirichlet_guide, components={"topics": 0, "strength": 0})
    assert post.components.families["topics"].name == "dirichlet"
    assert post.components.families["strength"].name == "gamma"
    assert post.sources["topics"] == "distribution"
    assert post.sources["strength"] == "transformed"  # read in the Gamma's space, before exp
    assert_store_equal(before, store_snapshot())
    assert torch.equal(rng, torch.get_rng_state())


def test_extract_hand_written_guide_must_not_create_params():
    with pytest.raises(ValueError, match="created parameters.*topic_conc"):
        extract(dirichlet_guide, components={"topics": 0})
    assert "topic_conc" not in pyro.get_param_store()


@pytest.mark.parametrize("guide_type", [AutoMultivariateNormal, AutoLowRankMultivariateNormal])
def test_non_mean_field_guides_are_rejected(guide_type):
    guide = guide_type(mixture_model)
    guide(3)
    with pytest.raises(ValueError, match=f"{guide_type.__name__} is not supported.*AutoNormal"):
        extract(guide, 3, components={"loc": 0})


def test_extract_never_changes_guide_or_store():
    guide = set_autonormal(AutoNormal(mixture_model), 3, 0)
    before = store_snapshot()
    extract(guide, 3, components={"loc": 0, "scale": 0}, simplex={"weights": [0]})
    assert_store_equal(before, store_snapshot())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"components": {"nope": 0}}, "site 'nope' is not a latent site"),
        ({"components": {"weights": 0}}, "site 'weights'.*list the site in simplex"),
        ({"components": {"loc": 0, "scale": 0}, "simplex": {"scale": [0]}}, "both in components and simplex"),
        ({"components": {"loc": 5}}, "site 'loc': dimension 5 out of range"),
        ({"components": {"loc": 1, "scale": 0}, "simplex": {"weights": [0]}}, "different numbers of components"),
        ({"components": {"loc": 0}, "weight": -1.0}, "weight must be positive"),
    ],
)
def test_extract_errors(kwargs, match):
    guide = set_autonormal(AutoNormal(mixture_model), 3, 0)
    with pytest.raises(ValueError, match=match):
        extract(guide, 3, **kwargs)


def test_extract_untrained_guide():
    with pytest.raises(ValueError, match="AutoNormal has not been run yet"):
        extract(AutoNormal(mixture_model), 3, components={"loc": 0})


def test_constrained_site_kl_is_invariant():
    """KL between two AutoNormal posteriors of a positive site, computed in unconstrained
    space by the cost matrix, equals the constrained-space KL (Monte Carlo)."""
    from pyro_fusion import kl_cost_matrix

    posts = []
    for seed in (0, 1):
        pyro.clear_param_store()
        guide = set_autonormal(AutoNormal(mixture_model), 3, seed)
        posts.append(extract(guide, 3, components={"scale": 0}, exclude=["loc", "weights", "noise"]))
    cost = kl_cost_matrix(posts[0].components, posts[1].components, "forward").double()
    transform = torch.distributions.biject_to(constraints.positive)
    p_loc, p_scale = posts[0].components["scale"].family.loc_scale(posts[0].components["scale"].natural)
    q_loc, q_scale = posts[1].components["scale"].family.loc_scale(posts[1].components["scale"].natural)
    p = dist.TransformedDistribution(dist.Normal(p_loc[0], p_scale[0]), [transform])
    q = dist.TransformedDistribution(dist.Normal(q_loc[1], q_scale[1]), [transform])
    y = p.sample((200000,))
    diff = (p.log_prob(y) - q.log_prob(y)).double()
    se = diff.std() / len(diff) ** 0.5
    assert abs(diff.mean() - cost[0, 1]) < 4 * se + 1e-6


def client_guides(num_clients, K=3, permute=True):
    """J clients whose AutoNormal posteriors are permutations of one guide."""
    pyro.clear_param_store()
    ref = set_autonormal(AutoNormal(mixture_model), K, 0)
    posts = [extract(ref, K, components={"loc": 0, "scale": 0}, simplex={"weights": [0]}, weight=10.0)]
    for j in range(1, num_clients):
        perm = torch.randperm(K, generator=torch.Generator().manual_seed(j)) if permute else torch.arange(K)
        p = posts[0]
        comps = p.components.select(perm)
        axes, w = p.simplex["weights"]
        posts.append(dataclasses.replace(p, components=comps, simplex={"weights": (axes, w[perm])}))
    return ref, posts


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("num_clients", [1, 4])
def test_identical_clients_round_trip_to_guide(direction, num_clients):
    ref, posts = client_guides(num_clients)
    ref_locs = {n: getattr(ref.locs, n).detach().clone() for n in ("loc", "scale", "noise")}
    ref_scales = {n: getattr(ref.scales, n).detach().clone() for n in ("loc", "scale", "noise")}
    ref_weights = posts[0].simplex["weights"][1]
    fused = fuse_posteriors(posts, direction=direction).posterior
    assert fused.num_global == 3
    order = fused.result.assignments[0]
    guide = fused.to_guide(mixture_model, fused.num_global)
    for n in ("loc", "scale"):
        torch.testing.assert_close(getattr(guide.locs, n).detach()[order], ref_locs[n])
        torch.testing.assert_close(getattr(guide.scales, n).detach()[order], ref_scales[n])
    torch.testing.assert_close(guide.locs.noise.detach(), ref_locs["noise"])
    torch.testing.assert_close(guide.scales.noise.detach(), ref_scales["noise"])
    torch.testing.assert_close(guide.median()["weights"].detach()[order], ref_weights, atol=1e-5, rtol=1e-5)
    # the clients' own guide is untouched
    torch.testing.assert_close(ref.locs.loc.detach(), ref_locs["loc"])


def test_fused_guide_runs_in_svi_without_warnings():
    _, posts = client_guides(3)
    fused = fuse_posteriors(posts).posterior
    guide = fused.to_guide(mixture_model, fused.num_global)

    def model_with_data(K):
        _, loc, _, noise = mixture_model(K)
        pyro.sample("obs", dist.Normal(loc.sum(), noise), obs=torch.tensor(1.0))

    svi = SVI(model_with_data, guide, Adam({"lr": 0.01}), Trace_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses = [svi.step(fused.num_global) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_to_guide_checks_the_model_size():
    _, posts = client_guides(2)
    fused = fuse_posteriors(posts).posterior
    with pytest.raises(ValueError, match="site '(weights|loc)'.*size the model to 3 components"):
        fused.to_guide(mixture_model, 4)


def test_init_to_fused_and_fused_prior():
    _, posts = client_guides(2)
    fused = fuse_posteriors(posts).posterior
    guide = AutoDiagonalNormal(mixture_model, init_loc_fn=init_to_fused(fused))
    median = guide.median() if guide.prototype_trace else None
    guide(3)
    median = guide.median()
    loc, _ = fused.loc_scale("loc")
    torch.testing.assert_close(median["loc"].detach(), loc)
    torch.testing.assert_close(median["weights"].detach(), fused.simplex["weights"][1], atol=1e-5, rtol=1e-5)

    with FusedPrior(fused):
        trace = poutine.trace(mixture_model).get_trace(3)
    prior = trace.nodes["loc"]["fn"]
    loc, scale = fused.loc_scale("loc")
    x = trace.nodes["loc"]["value"]
    ref = dist.Normal(loc, scale).log_prob(x).sum(-1)
    torch.testing.assert_close(prior.log_prob(x), ref)
    s = trace.nodes["scale"]["value"]
    sloc, sscale = fused.loc_scale("scale")
    torch.testing.assert_close(
        trace.nodes["scale"]["fn"].log_prob(s), dist.LogNormal(sloc, sscale).log_prob(s)
    )
    # an autoguide built on the model under the fused prior still constrains the site
    guide = AutoNormal(FusedPrior(fused)(mixture_model), init_loc_fn=init_to_fused(fused))
    guide(3)
    assert (guide.median()["scale"] > 0).all()
    torch.testing.assert_close(guide.median()["scale"].detach(), sloc.exp())
    expanded = trace.nodes["scale"]["fn"].expand((2, 3))
    assert expanded.support is trace.nodes["scale"]["fn"].support and expanded.batch_shape == (2, 3)
    with pytest.raises(ValueError, match="not fused sites"):
        FusedPrior(fused, sites=["weights"])
    with pytest.raises(ValueError, match="site 'loc'.*size the model to 3"):
        with FusedPrior(fused):
            mixture_model(5)
    # a one-component fused posterior is not broadcast over a model of three
    _, one = client_guides(2, K=1)
    single = fuse_posteriors(one, price=1.0).posterior
    with pytest.raises(ValueError, match=r"site 'loc'.*batch shape \(3,\).*\(1,\).*size the model to 1"):
        FusedPrior(single)(mixture_model)(3)


def test_fused_prior_of_a_hand_written_guide():
    def topic_model(K=3, V=5):
        with pyro.plate("topic_plate", K):
            pyro.sample("topics", dist.Dirichlet(torch.ones(V)))
            pyro.sample("strength", dist.LogNormal(0.0, 1.0))

    dirichlet_guide()
    post = extract(dirichlet_guide, components={"topics": 0, "strength": 0})
    fused = fuse_posteriors([post, post]).posterior
    K = fused.num_global
    trace = poutine.trace(FusedPrior(fused)(topic_model)).get_trace(K)
    topics = trace.nodes["topics"]
    assert topics["fn"].batch_shape == (K,) and topics["fn"].event_shape == (5,)
    expected = fused.site_distribution("topics").log_prob(topics["value"])
    torch.testing.assert_close(topics["fn"].log_prob(topics["value"]), expected)
    # strength was fused in the Gamma's space, before the guide's exp: it keeps the model's prior
    assert isinstance(trace.nodes["strength"]["fn"], dist.LogNormal)
    with pytest.raises(ValueError, match=r"sites \['strength'\].*transform"):
        FusedPrior(fused, sites=["strength"])


def test_write_params_of_a_hand_written_guide():
    dirichlet_guide()
    posts = [extract(dirichlet_guide, components={"topics": 0, "strength": 0})] * 2
    fused = fuse_posteriors(posts).posterior
    pyro.clear_param_store()
    written = fused.write_params(dirichlet_guide, K=fused.num_global)
    assert written == {"topics": {"concentration": "topic_conc"}, "strength": {"rate": "rate_param"}}
    order = fused.result.assignments[0]
    torch.testing.assert_close(pyro.param("topic_conc").detach()[order], torch.ones(3, 5) + torch.arange(5))


def test_save_load_posteriors_and_cli(tmp_path, capsys):
    _, posts = client_guides(3)
    paths = []
    for j, p in enumerate(posts):
        paths.append(str(tmp_path / f"client{j}.safetensors"))
        p.save(paths[-1])
    loaded = GuidePosterior.load(paths[1])
    torch.testing.assert_close(loaded.components.concat(), posts[1].components.concat())
    assert loaded.simplex["weights"][0] == (0,) and loaded.weight == 10.0
    out = str(tmp_path / "fused.safetensors")
    assert cli_main(["fuse", *paths, "-o", out, "--direction", "forward"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_global"] == 3 and summary["support"] == [3, 3, 3]
    fused = FusedPosterior.load(out)
    direct = fuse_posteriors(posts, direction="forward").posterior
    torch.testing.assert_close(fused.result.components.concat(), direct.result.components.concat())
    torch.testing.assert_close(fused.simplex["weights"][1], direct.simplex["weights"][1])
    guide = fused.to_guide(mixture_model, fused.num_global)
    assert guide.locs.loc.shape == (3, 2)
    # bad files: a pickle and a missing file are named, nothing is unpickled
    evil = tmp_path / "evil.pt"
    torch.save({"x": 1}, evil)
    assert cli_main(["fuse", paths[0], str(evil), "-o", out]) == 2
    assert "evil.pt" in capsys.readouterr().err
    assert cli_main(["fuse", paths[0], str(tmp_path / "nope.safetensors"), "-o", out]) == 2
    assert "nope.safetensors" in capsys.readouterr().err
    # the price: a number or a rule
    for rule in ("spread", "closest-pair"):
        assert cli_main(["fuse", *paths, "-o", out, "--price", rule]) == 0
        assert json.loads(capsys.readouterr().out)["num_global"] == fuse_posteriors(posts, price=rule).num_global
    assert cli_main(["fuse", *paths, "-o", out, "--price", "1e9"]) == 0
    assert json.loads(capsys.readouterr().out)["num_global"] == 3
    with pytest.raises(SystemExit):
        cli_main(["fuse", *paths, "-o", out, "--price", "cheap"])
    assert "expected a positive finite number or a rule of ('counterpart'" in capsys.readouterr().err


def test_fused_guide_can_be_extracted_for_the_next_round():
    _, posts = client_guides(3)
    fused = fuse_posteriors(posts).posterior
    guide = fused.to_guide(mixture_model, fused.num_global)
    again = extract(guide, fused.num_global, components={"loc": 0, "scale": 0}, simplex={"weights": [0]})
    torch.testing.assert_close(again.components.concat(), fused.result.components.concat())
    torch.testing.assert_close(again.shared.concat(), fused.shared.concat())


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-fusion {pyro_fusion.__version__}"


# ----- hand-written guides: simplex sites whose size follows the number of components ---------------


def weighted_guide(prefix, locs, weights):
    """A hand-written guide of one party: Normal component locations and Dirichlet mixture weights,
    under parameter names of its own (the parties share one param store here)."""
    K = len(locs)

    def guide():
        loc = pyro.param(f"{prefix}_loc", locs.clone())
        concentration = pyro.param(f"{prefix}_conc", weights.clone(), constraint=constraints.positive)
        with pyro.plate("components", K):
            pyro.sample("locs", dist.Normal(loc, 0.1))
        pyro.sample("weights", dist.Dirichlet(concentration))

    guide()  # creates its parameters (stands for training)
    return guide


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_weights_fuse_across_parties_of_different_sizes(dtype):
    guides = [
        weighted_guide("a", torch.tensor([0.0, 10.0], dtype=dtype), torch.tensor([30.0, 10.0], dtype=dtype)),
        weighted_guide("b", torch.tensor([10.1, 20.0, 0.1], dtype=dtype),
                       torch.tensor([10.0, 10.0, 20.0], dtype=dtype)),
    ]
    fused = fuse_posteriors(guides, components={"locs": 0}, price=5.0)
    assert fused.num_global == 3
    axes, weights = fused.posterior.simplex["weights"]
    assert axes == (0,) and weights.shape == (3,) and weights.dtype == dtype
    assert fused.posterior.site_families["weights"].event_shape == (3,)
    # rebuilt from the matched components: the weight of global g sums its parties' mean weights
    expected = torch.zeros(3, dtype=torch.float64)
    for guide_weights, assignment in zip(([30.0, 10.0], [10.0, 10.0, 20.0]), fused.assignments):
        mean = torch.tensor(guide_weights, dtype=torch.float64) / sum(guide_weights)
        expected.index_add_(0, assignment, mean)
    torch.testing.assert_close(weights.double(), expected / expected.sum(), rtol=1e-3, atol=1e-4)


def test_mixture_weights_of_read_posteriors_say_what_to_pass():
    posts = [extract(weighted_guide(p, torch.arange(float(K)), torch.ones(K)), components={"locs": 0})
             for p, K in (("a", 2), ("b", 3))]
    with pytest.raises(ValueError, match=r"site 'weights' .* extract\(\.\.\., simplex=\{'weights': \[0\]\}\)"):
        fuse_posteriors(posts)
    posts = [extract(weighted_guide(p, torch.arange(float(K)), torch.ones(K)), components={"locs": 0},
                     simplex={"weights": [0]}) for p, K in (("a", 2), ("b", 3))]
    fused = fuse_posteriors(posts, price=5.0)
    assert fused.posterior.simplex["weights"][1].shape == (fused.num_global,)
