"""The adapter protocol: every family reads, lays out, matches and writes back the same way, and
the front doors share one signature and return one type."""
import inspect

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_fusion
from pyro_fusion import (
    FusedModel,
    FusedPosterior,
    FusionAdapter,
    FusionResult,
    GuidePosterior,
    Layout,
    Price,
    extract,
    fuse_gmms,
    fuse_hmms,
    fuse_lda,
    fuse_mlps,
    fuse_posteriors,
)
from pyro_fusion.adapters import GMMAdapter, GuideAdapter, HMMAdapter, LDAAdapter, MLPAdapter
from pyro_fusion.adapters.base import FuseSettings
from pyro_fusion.adapters.bnn import (
    fused_layer,
    layer_units,
    match_layer,
    output_bias,
    output_columns,
    unit_components,
    write_mlp,
)
from pyro_fusion.components import Components
from pyro_fusion.fusion import fuse
from pyro_fusion.models.bnn import BayesianMLP, predictive_probs
from pyro_fusion.models.gmm import fit_gmm, gmm_sites
from pyro_fusion.models.hmm import FittedHMM, HMMParams
from pyro_fusion.models.lda import LDA

pytestmark = pytest.mark.usefixtures("one_thread")

FRONT_DOORS = [fuse_posteriors, fuse_gmms, fuse_hmms, fuse_lda, fuse_mlps]


def test_front_doors_share_one_signature():
    shapes = []
    for front_door in FRONT_DOORS:
        params = inspect.signature(front_door).parameters
        shapes.append([(p.name, p.kind, p.default if p.name != "direction" else None) for p in params.values()])
        assert params["direction"].default in ("reverse", "forward")
    assert all(shape == shapes[0] for shape in shapes)
    names = [name for name, _, _ in shapes[0]]
    assert names == [
        "local_models", "weights", "direction", "num_global", "price", "seed", "progress", "family_options"
    ]


@pytest.mark.parametrize("adapter, direction", [
    (GuideAdapter, "reverse"), (GMMAdapter, "reverse"), (HMMAdapter, "forward"), (LDAAdapter, "reverse"),
    (MLPAdapter, "reverse"),
])
def test_family_default_directions_are_the_front_doors(adapter, direction):
    front_door = {GuideAdapter: fuse_posteriors, GMMAdapter: fuse_gmms, HMMAdapter: fuse_hmms,
                  LDAAdapter: fuse_lda, MLPAdapter: fuse_mlps}[adapter]
    assert adapter.direction == direction == inspect.signature(front_door).parameters["direction"].default


# ----- one round trip (read -> fuse -> write) per family -------------------------------------


def mixture_model(K=3):
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
    with pyro.plate("components", K):
        pyro.sample("loc", dist.Normal(torch.zeros(2), 10.0).to_event(1))
    return weights


MIXTURE_LAYOUT = Layout({"loc": 0}, simplex={"weights": (0,)})


def trained_mixture_guide():
    guide = AutoNormal(mixture_model)
    guide()
    with torch.no_grad():
        guide.locs.loc.copy_(torch.tensor([[-5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]))
    return guide


def hmm_fit(seed, num_states=3, dim=2):
    g = torch.Generator().manual_seed(seed)
    loc = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])[:num_states, :dim]
    unconstrained = {
        "loc": dist.Normal(loc, torch.full((num_states, dim), 0.1)),
        "scale": dist.Normal(torch.zeros(num_states, dim), torch.full((num_states, dim), 0.1)),
    }
    counts = torch.rand(num_states, num_states, generator=g) + 5 * torch.eye(num_states)
    params = HMMParams(torch.full((num_states,), 1 / num_states), counts / counts.sum(-1, keepdim=True), loc,
                       torch.ones(num_states, dim))
    return FittedHMM(None, unconstrained, params, counts.sum(-1), torch.full((num_states,), 1.0 / num_states),
                     counts, [])


def lda_model(name, vocab=("a", "b", "c", "d")):
    model = LDA(3, vocab, name=name)
    topics = torch.full((3, len(vocab)), 0.1) + 20 * torch.eye(3, len(vocab))
    model.load_topic_posterior(dist.Dirichlet(topics))
    return model


def mlp_posterior(seed, widths=(4,)):
    g = torch.Generator().manual_seed(seed)
    model = BayesianMLP(3, widths, 2)
    return {n: dist.Normal(torch.randn(s, generator=g), 0.1 + 0.1 * torch.rand(s, generator=g))
            for n, s in model.site_shapes().items()}


FAMILIES = {
    "guide": (lambda: GuideAdapter(components={"loc": 0}, simplex={"weights": [0]}, model=mixture_model,
                                   model_args=lambda k: (k,)),
              lambda: [trained_mixture_guide()] * 2, 3),
    "gmm": (GMMAdapter, lambda: [extract(fit_gmm(torch.randn(30, 2) + 3, 2, num_steps=3), **gmm_sites())] * 2, 2),
    "hmm": (lambda: HMMAdapter(restarts=2), lambda: [hmm_fit(0)] * 2, 3),
    "lda": (LDAAdapter, lambda: [lda_model("x"), lda_model("y")], 3),
    "mlp": (MLPAdapter, lambda: [mlp_posterior(0)] * 3, [4]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_identical_clients_round_trip_through_the_protocol(family):
    make_adapter, make_clients, local_size = FAMILIES[family]
    adapter, clients = make_adapter(), make_clients()
    assert isinstance(adapter, FusionAdapter)
    # the three verbs one at a time ...
    layout = adapter.layout(clients[0])
    assert isinstance(layout, Layout) and layout.components
    local = adapter.read(clients)
    assert len(local) == len(clients)
    settings = FuseSettings(adapter.direction)
    matched = adapter.match(local, None, settings)
    fused = adapter.write(matched, local, settings)
    # ... and together: the same fused model
    again = adapter.fuse(clients)
    for out in (fused, again):
        assert isinstance(out, FusedModel)
        assert out.num_global == local_size  # identical clients: nothing is split or merged
        results = out.result if isinstance(out.result, list) else [out.result]
        assert all(isinstance(r, FusionResult) and bool(r.support.eq(len(clients)).all()) for r in results)
    assert torch.equal(
        (fused.result if family != "mlp" else fused.result[0]).components.concat(),
        (again.result if family != "mlp" else again.result[0]).components.concat(),
    )


def test_guide_round_trip_writes_a_guide_of_the_global_model():
    guide = trained_mixture_guide()
    fused = fuse_posteriors([guide, guide], components={"loc": 0}, simplex={"weights": [0]},
                            model=mixture_model, model_args=lambda k: (k,))
    assert isinstance(fused.posterior, FusedPosterior) and fused.model is mixture_model
    assert torch.allclose(fused.guide.median()["loc"], guide.median()["loc"][fused.assignments[0].argsort()])
    # already-read clients pass through; without model= there is no guide
    post = extract(guide, **MIXTURE_LAYOUT.extract_kwargs())
    assert isinstance(post, GuidePosterior)
    plain = fuse_posteriors([post, guide], components={"loc": 0}, simplex={"weights": [0]})
    assert plain.guide is None and plain.num_global == 3
    assert GuideAdapter().layout(post) == MIXTURE_LAYOUT


def test_gmm_round_trip_gives_a_model_and_guide_that_take_the_data():
    data = torch.cat([torch.randn(40, 2) * 0.3 - 3, torch.randn(40, 2) * 0.3 + 3])
    post = extract(fit_gmm(data, 2, num_steps=30), **gmm_sites(), weight=len(data))
    fused = fuse_gmms([post, post])
    assert fused.num_global == 2
    median = fused.guide.median(data)
    assert median["locs"].shape == (2, 2) and median["weights"].shape == (2,)
    trace = pyro.poutine.trace(pyro.poutine.replay(fused.model, pyro.poutine.trace(fused.guide).get_trace(data)))
    assert trace.get_trace(data).nodes["locs"]["value"].shape == (2, 2)


def test_hmm_round_trip_keeps_the_clients_hmm_and_marks_pruned_states():
    fit = hmm_fit(0)
    fit.occupancy[1] = 0.5  # below min_occupancy: pruned
    fused = fuse_hmms([fit, fit], restarts=2)
    assert fused.num_global == 2 and fused.model.keywords["num_states"] == 2
    for a in fused.assignments:
        assert a[1] == -1 and sorted(a[[0, 2]].tolist()) == [0, 1]
    kept = fused.assignments[0][[0, 2]]
    torch.testing.assert_close(fused.params.loc[kept], fit.params.loc[[0, 2]])
    assert set(fused.posterior) == {"loc", "log_scale"}


def test_lda_round_trip_writes_an_lda_over_the_union_vocabulary():
    fused = fuse_lda([lda_model("x", ("a", "b", "c", "d")), lda_model("y", ("a", "b", "c", "e"))], name="g")
    assert isinstance(fused.model, LDA) and fused.model.vocab == ("a", "b", "c", "d", "e")
    assert fused.guide is fused.model.guide and set(fused.posterior) == {"topic_words"}
    assert fused.num_global == 3


def test_mlp_round_trip_predicts_like_the_client():
    posterior = mlp_posterior(1, widths=(5, 3))
    fused = fuse_mlps([posterior, posterior], progress=True)
    assert fused.model.widths == (5, 3) and fused.num_global == [5, 3]
    x = torch.randn(7, 3)

    def means(post):
        return {n: dist.Delta(d.mean, event_dim=d.mean.dim()) for n, d in post.items()}

    torch.testing.assert_close(
        predictive_probs(fused.model, means(fused.posterior), x),
        predictive_probs(BayesianMLP(3, (5, 3), 2), means(posterior), x),
        atol=1e-5, rtol=1e-5,
    )
    layout = MLPAdapter().layout(posterior)
    assert layout.components["output.weight"] == 1 and layout.stages["hidden.1.weight"] == 1


def test_a_new_family_plugs_in_by_subclassing():
    class PointCloud(FusionAdapter):
        family = "point cloud"

        def read(self, local_models):
            return [Components.from_distributions({"x": dist.Normal(x, 0.1)}) for x in local_models]

        def layout(self, local_model):
            return Layout({"x": 0})

        def write(self, result, local, settings):
            return FusedModel(result.distributions(), result, params=result.distributions()["x"].mean)

    clouds = [torch.tensor([[0.0], [10.0]]), torch.tensor([[10.1], [20.0]])]
    fused = PointCloud().fuse(clouds, price=5.0)
    assert fused.num_global == 3 and sorted(fused.params.squeeze(-1).round().tolist()) == [0.0, 10.0, 20.0]


# ----- the shared settings -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"direction": "sideways"}, "direction"),
    ({"num_global": 0}, "num_global"),
    ({"num_global": "4"}, "num_global"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
])
def test_settings_are_validated_first(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fuse_lda([lda_model("x")], **kwargs)


def test_per_layer_values_only_for_layerwise_families():
    with pytest.raises(ValueError, match="one value per stage is for layer-wise families"):
        fuse_lda([lda_model("x"), lda_model("y")], num_global=[3])
    with pytest.raises(ValueError, match=r"price needs one value per stage \(2\)"):
        fuse_mlps([mlp_posterior(0, (3, 3))] * 2, price=[1.0])
    widths = fuse_mlps([mlp_posterior(0, (3, 3))] * 2, num_global=[4, None]).num_global
    assert widths[0] == 4


def test_unknown_family_options_are_refused():
    with pytest.raises(ValueError, match="unknown options"):
        fuse_lda([lda_model("x")], price_rule="location")
    with pytest.raises(ValueError, match="model_args= needs model="):
        GuideAdapter(model_args=(3,))
    with pytest.raises(ValueError, match="restarts"):
        HMMAdapter(restarts=0)


def test_price_setting():
    assert Price().rule is None and Price("spread").scale == 1.0
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="scale"):
            Price("location", scale=bad)
    with pytest.raises(ValueError, match="rule"):
        Price(3.0)
    models = [lda_model("x"), lda_model("y")]
    assert fuse_lda(models, price=Price("spread")).result.price == fuse_lda(models, price="spread").result.price
    spread = fuse_lda(models, price="spread").result.price
    assert fuse_lda(models, price=Price("spread", scale=2.0)).result.price == pytest.approx(2 * spread)
    default = fuse_lda(models).result.price
    assert fuse_lda(models, price=Price(scale=0.5)).result.price == pytest.approx(default / 2)
    assert fuse_lda(models, price="counterpart").result.price == default
    for bad in ("location", "nope", Price("nope")):  # "location" is fuse_mlps's own rule
        with pytest.raises(ValueError, match="unknown price rule"):
            fuse_lda(models, price=bad)


# ----- the pieces of fuse_mlps --------------------------------------------------------------


def test_layer_units_reindex_the_incoming_rows_through_the_previous_layer():
    posterior = mlp_posterior(2, widths=(2, 3))
    first = layer_units(posterior, 0, prior_scale=1.0)
    assert set(first) == {"weight", "bias"}  # not the last layer: no outgoing columns
    second = layer_units(posterior, 1, prior_scale=2.0, assignment=torch.tensor([3, 0]), num_previous=4)
    loc, scale = second["weight"]
    assert loc.shape == (3, 4) and set(second) == {"weight", "bias", "out"}
    torch.testing.assert_close(loc[:, [3, 0]], posterior["hidden.1.weight"].loc)
    assert bool((loc[:, [1, 2]] == 0).all()) and bool((scale[:, [1, 2]] == 2.0).all())
    torch.testing.assert_close(second["out"][0], posterior["output.weight"].loc.T)


def test_match_layer_price_rules():
    units = [layer_units(mlp_posterior(s), 0, 1.0) for s in range(3)]
    kwargs = dict(num_global=None, prior_scale=1.0, point_scale=None, direction="reverse", seed=0)
    location = match_layer(units, None, price="location", **kwargs).price
    default = match_layer(units, None, price=None, **kwargs).price
    assert default == match_layer(units, None, price="counterpart", **kwargs).price != pytest.approx(location)
    assert match_layer(units, None, price=Price("location", 3.0), **kwargs).price == pytest.approx(3 * location)
    assert match_layer(units, None, price=Price("prior"), **kwargs).price != pytest.approx(location)
    assert match_layer(units, None, price=0.25, **kwargs).price == 0.25
    fixed = match_layer(units, None, price=Price("prior"), **dict(kwargs, num_global=6))
    assert fixed.price is None and fixed.num_global == 6


def test_fused_layer_cuts_connections_no_client_has():
    clients = [unit_components({"weight": (torch.full((1, 2), float(j)), torch.ones(1, 2)),
                                "bias": (torch.zeros(1), torch.ones(1))}) for j in range(2)]
    result = fuse(clients, price=1e-6)  # every unit its own global
    previous = [torch.tensor([0]), torch.tensor([1])]  # each client had one of 2 previous globals
    layer = fused_layer(result, previous, 2, absent_scale=1e-3)
    loc, scale = layer["weight"]
    g0, g1 = result.assignments[0][0], result.assignments[1][0]
    assert loc[g0, 1] == 0 and scale[g0, 1] == 1e-3 and loc[g1, 0] == 0 and scale[g1, 0] == 1e-3
    assert scale[g0, 0] == pytest.approx(1.0) and loc[g1, 1] == pytest.approx(1.0)


def test_output_columns_and_bias_weight_by_client_share_or_class():
    posts = [mlp_posterior(0), mlp_posterior(1)]
    units = [layer_units(p, 0, 1.0) for p in posts]
    result = fuse([unit_components(u) for u in units], price=1e-6)  # no merging: each unit once
    assert result.num_global == 8
    loc, _ = output_columns(result, units, [1.0, 3.0], None, "reverse", 1e-3)
    order = torch.cat(result.assignments)
    share = torch.tensor([0.25] * 4 + [0.75] * 4).unsqueeze(-1)  # a unit's client's share of the weight
    torch.testing.assert_close(loc[order], torch.cat([u["out"][0] for u in units]) * share)
    # per class: class 0 seen by client 0 only, so client 1's units have no connection to it
    loc, scale = output_columns(result, units, None, torch.tensor([[5.0, 1.0], [0.0, 1.0]]), "reverse", 1e-3)
    client1 = result.assignments[1]
    assert bool((loc[client1, 0] == 0).all()) and bool((scale[client1, 0] == 1e-3).all())
    torch.testing.assert_close(loc[result.assignments[0], 0], units[0]["out"][0][:, 0])
    bias_loc, _ = output_bias([posts[0], posts[0]], None, None, "reverse")
    torch.testing.assert_close(bias_loc, posts[0]["output.bias"].loc)


def test_write_mlp_sizes_the_network_from_the_fused_sites():
    fused = {n: (d.loc, d.scale) for n, d in mlp_posterior(3, widths=(4, 2)).items()}
    model, guide, posterior = write_mlp(fused, 3, 2, prior_scale=1.0, point=False)
    assert model.widths == (4, 2) and set(posterior) == set(model.site_names())
    torch.testing.assert_close(guide.median()["hidden.1.weight"], fused["hidden.1.weight"][0])
    _, point_guide, point_posterior = write_mlp(fused, 3, 2, prior_scale=1.0, point=True)
    assert all(isinstance(d, dist.Delta) for d in point_posterior.values())


def test_front_doors_are_exported():
    for front_door in FRONT_DOORS:
        assert getattr(pyro_fusion, front_door.__name__) is front_door
        assert front_door.__name__ in pyro_fusion.__all__
