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
