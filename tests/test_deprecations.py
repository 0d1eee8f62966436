"""Every deprecated name warns (naming its replacement) and still works for one release."""
import importlib
import sys
import warnings

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_fusion

#: old module attribute -> the object it now is (module:attribute paths)
MOVED = {
    "pyro_fusion:load_result": "pyro_fusion.fusion:FusionResult.load",
    "pyro_fusion.io:encode_posterior": "pyro_fusion.posterior:encode_posterior",
    "pyro_fusion.io:decode_posterior": "pyro_fusion.posterior:decode_posterior",
    "pyro_fusion.io:save_posterior": "pyro_fusion.posterior:save_posterior",
    "pyro_fusion.io:load_posterior": "pyro_fusion.posterior:load_posterior",
    "pyro_fusion.io:load_result": "pyro_fusion.fusion:FusionResult.load",
    "pyro_fusion.models.lda:Corpus": "pyro_fusion.datasets.corpus:Corpus",
    "pyro_fusion.models.lda:topic_word_matrix": "pyro_fusion.metrics.topics:topic_word_matrix",
    "pyro_fusion.models.lda:split_halves": "pyro_fusion.metrics.topics:split_halves",
    "pyro_fusion.models.lda:fold_in": "pyro_fusion.metrics.topics:fold_in",
    "pyro_fusion.models.lda:document_completion": "pyro_fusion.metrics.topics:document_completion",
    "pyro_fusion.models.lda:umass_coherence": "pyro_fusion.metrics.topics:umass_coherence",
    "pyro_fusion.models.lda:top_words": "pyro_fusion.metrics.topics:top_words",
    "pyro_fusion.models.gmm:kmeans": "pyro_fusion.models.clustering:kmeans",
    "pyro_fusion.adapters.lda:naive_average": "pyro_fusion.adapters.lda:average_topics_by_index",
    "pyro_fusion.adapters.hmm:FusedHMM": "pyro_fusion.adapters.base:FusedModel",
    "pyro_fusion.adapters.bnn:FusedMLP": "pyro_fusion.adapters.base:FusedModel",
}


def resolve(path):
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_moved_name_warns_and_is_the_new_object(old, new):
    module, _, attr = old.partition(":")
    with pytest.warns(DeprecationWarning, match=f"{module}.{attr} is deprecated.*use {new.replace(':', '.')}"):
        got = getattr(importlib.import_module(module), attr)
    assert got == resolve(new)  # bound classmethods compare equal, not identical


def test_moved_names_are_not_listed_as_public():
    for old in MOVED:
        module, _, attr = old.partition(":")
        assert attr not in getattr(importlib.import_module(module), "__all__", ())


def test_unknown_attribute_still_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pyro_fusion.io.nope


def test_old_extract_module_still_extracts_and_the_function_survives_its_import():
    def model():
        with pyro.plate("components", 3):
            pyro.sample("loc", pyro.distributions.Normal(torch.zeros(2), 1.0).to_event(1))

    guide = AutoNormal(model)
    guide()
    sys.modules.pop("pyro_fusion.extract", None)
    try:
        with pytest.warns(DeprecationWarning, match="pyro_fusion.extract is deprecated.*pyro_fusion.readout"):
            from pyro_fusion.extract import extract as old_extract
        # importing the old module rebinds the package attribute: it still extracts
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert old_extract is pyro_fusion.readout.extract
            assert len(pyro_fusion.extract(guide, components={"loc": 0}).components) == 3
    finally:
        pyro_fusion.extract = pyro_fusion.readout.extract


def test_hmm_kmeans_init_warns_and_returns_centres():
    frames = torch.cat([torch.full((10, 2), -3.0), torch.full((10, 2), 3.0)])
    with pytest.warns(DeprecationWarning, match="kmeans_init is deprecated"):
        centres = pyro_fusion.models.hmm.kmeans_init(frames, 2, torch.Generator().manual_seed(0))
    assert sorted(centres[:, 0].tolist()) == [-3.0, 3.0]


def test_rename_kwargs_maps_the_old_keyword():
    from pyro_fusion.deprecation import rename_kwargs

    @rename_kwargs("f", {"rounds": "num_rounds"})
    def f(num_rounds=1):
        return num_rounds

    with pytest.warns(DeprecationWarning, match=r"f\(rounds=...\) is deprecated.*num_rounds="):
        assert f(rounds=3) == 3
    with pytest.raises(TypeError, match="both rounds="):
        f(rounds=3, num_rounds=4)


# ----- phase 2: the front doors' old shapes and the old vocabulary ---------------------------


def mlp_posterior(seed):
    from pyro_fusion.models.bnn import BayesianMLP

    g = torch.Generator().manual_seed(seed)
    return {n: pyro.distributions.Normal(torch.randn(s, generator=g), 0.2)
            for n, s in BayesianMLP(3, (4,), 2).site_shapes().items()}


def test_fuse_mlps_old_price_keywords_map_to_price():
    from pyro_fusion import Price, fuse_mlps

    posts = [mlp_posterior(0), mlp_posterior(1)]
    for old, new in [({"price_rule": "prior"}, Price("prior")), ({"price_scale": 3.0}, Price(None, 3.0)),
                     ({"price_rule": "location", "price_scale": 0.5}, Price("location", 0.5))]:
        with pytest.warns(DeprecationWarning, match=r"fuse_mlps\(price_rule=..., price_scale=...\)"):
            got = fuse_mlps(posts, **old).result[0].price
        assert got == fuse_mlps(posts, price=new).result[0].price
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="unknown price_rule 'median'"):
        fuse_mlps(posts, price_rule="median")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="price_scale must be positive"):
        fuse_mlps(posts, price_scale=0.0)
    with pytest.warns(DeprecationWarning, match="use price= alone"):  # an explicit price won before, too
        assert fuse_mlps(posts, price=0.5, price_rule="prior").result[0].price == 0.5


def test_fused_model_old_attributes_and_tuple_unpacking():
    from pyro_fusion import fuse_mlps

    posts = [mlp_posterior(0), mlp_posterior(1)]
    fused = fuse_mlps(posts)
    with pytest.warns(DeprecationWarning, match="FusedModel.results is deprecated.*FusedModel.result"):
        assert fused.results is fused.result
    with pytest.warns(DeprecationWarning, match="unpacking"):
        model, guide, posterior, results = fused  # the old FusedMLP NamedTuple
    assert (model, guide, posterior, results) == (fused.model, fused.guide, fused.posterior, fused.result)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fused.nope


def test_fuse_lda_tuple_unpacking_warns():
    from pyro_fusion import fuse_lda
    from pyro_fusion.models.lda import LDA

    models = []
    for name in ("a", "b"):
        models.append(LDA(2, ("x", "y", "z"), name=name))
        models[-1].load_topic_posterior(pyro.distributions.Dirichlet(torch.ones(2, 3) + torch.eye(2, 3)))
    fused = fuse_lda(models)
    with pytest.warns(DeprecationWarning, match="unpacking"):
        model, result = fused
    assert model is fused.model and result is fused.result


def hmm_fit():
    from pyro_fusion.models.hmm import FittedHMM, HMMParams

    loc = torch.tensor([[-3.0], [3.0]])
    unconstrained = {"loc": pyro.distributions.Normal(loc, 0.1),
                     "scale": pyro.distributions.Normal(torch.zeros(2, 1), 0.1)}
    counts = torch.tensor([[9.0, 1.0], [1.0, 9.0]])
    params = HMMParams(torch.full((2,), 0.5), counts / 10, loc, torch.ones(2, 1))
    return FittedHMM(None, unconstrained, params, torch.tensor([10.0, 0.5]), torch.tensor([1.0, 0.0]), counts, [])


def test_fuse_hmms_old_shapes():
    from pyro_fusion import fuse_hmms
    from pyro_fusion.models.hmm import HMMPrior

    fit, prior = hmm_fit(), HMMPrior(stickiness=5.0)
    with pytest.warns(DeprecationWarning, match=r"fuse_hmms\(fits, prior\) is deprecated"):
        old = fuse_hmms([fit, fit], prior, restarts=1, price=1.0)
    new = fuse_hmms([fit, fit], prior=prior, restarts=1, price=1.0)
    assert torch.equal(old.params.trans, new.params.trans)
    with pytest.warns(DeprecationWarning, match="FusedModel.num_states"):
        assert old.num_states == 1
    with pytest.warns(DeprecationWarning, match="FusedModel.states"):
        assert [s.tolist() for s in old.states] == [[0], [0]]  # state 1 was pruned


def test_guide_front_door_delegates_the_old_fused_posterior_attributes():
    from pyro_fusion import fuse_posteriors

    def model(K=2):
        with pyro.plate("components", K):
            pyro.sample("loc", pyro.distributions.Normal(torch.zeros(2), 1.0).to_event(1))

    guide = AutoNormal(model)
    guide()
    fused = fuse_posteriors([extract_loc(guide)] * 2)
    with pytest.warns(DeprecationWarning, match="FusedModel.to_guide is deprecated.*FusedModel.posterior.to_guide"):
        written = fused.to_guide(model, 2)
    assert written.median()["loc"].shape == (2, 2)
    with pytest.warns(DeprecationWarning, match="FusedModel.site_shapes"):
        assert fused.site_shapes == fused.posterior.site_shapes


def extract_loc(guide):
    return pyro_fusion.extract(guide, components={"loc": 0})


def test_refine_hmm_rounds_and_run_demo_steps():
    from pyro_fusion.adapters.hmm import refine_hmm
    from pyro_fusion.apps.mocap import run_demo

    params = hmm_fit().params
    with pytest.warns(DeprecationWarning, match=r"refine_hmm\(rounds=...\)"):
        refined, lls = refine_hmm(params, [[torch.randn(6, 1)]], rounds=2)
    assert len(lls) == 2
    for old, match in (({"steps": 0}, "num_steps must be"), ({"em_rounds": -1}, "num_rounds must be")):
        with pytest.warns(DeprecationWarning, match="run_demo"), pytest.raises(ValueError, match=match):
            run_demo(out=None, progress=False, **old)


@pytest.mark.parametrize("flag, value, match", [("--steps", "0", "num_steps must be"),
                                                ("--em-rounds", "-1", "num_rounds must be")])
def test_cli_old_demo_flags(flag, value, match):
    from pyro_fusion.cli import main

    with pytest.warns(DeprecationWarning, match=f"pyro-fusion demo {flag}"), pytest.raises(ValueError, match=match):
        main(["demo", "--out", "unused", flag, value])


@pytest.mark.parametrize("old", ["PYRO_FUSION_SMOKE", "PYRO_FUSION_TUTORIAL_SMALL"])
def test_old_small_environment_variables(old, monkeypatch):
    from pyro_fusion.apps import small_run

    monkeypatch.delenv("PYRO_FUSION_SMALL", raising=False)
    assert small_run() is False
    monkeypatch.setenv(old, "1")
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*PYRO_FUSION_SMALL"):
        assert small_run() is True
    monkeypatch.setenv("PYRO_FUSION_SMALL", "0")  # the new variable wins, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert small_run() is False
