"""Bad inputs, as a careless user or a hostile client would give them: one row per input in
``BAD``. Each row calls one public entry point (family constructors and ``natural()``,
``Components``, ``extract``, ``fuse``/``fuse_posteriors``, write-back, every file reader, the
CLI, the adapters, the Flower reply path) and must raise the given exception type with a
message that names the offending thing (argument, site, field, file, client or node) and is
at most :data:`pyro_fusion.io.MAX_MESSAGE_CHARS` long; afterwards every tensor the caller
holds, the whole Pyro param store and every file in the test's folder must be bit-identical
(the snapshot helpers of ``test_inputs_untouched``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import pathlib
import re
import tempfile
import time
from typing import Any, Callable, Dict, NamedTuple

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safetensors import safe_open
from safetensors.torch import save_file

from pyro_fusion import Components, FusedPosterior, FusionResult, GuidePosterior, fuse_posteriors
from pyro_fusion.io import FORMAT, MAX_HEADER_CHARS, MAX_MESSAGE_CHARS, load_components, save_components
from pyro_fusion.expfam import Bernoulli, Beta, Categorical, DiagNormal, Dirichlet, Gamma, MultivariateNormal
from pyro_fusion.expfam import NormalWishart, PointMass, family_from_spec
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_fusion import FusedPrior, PosteriorPrior, extract, fuse, init_to_fused
from pyro_fusion.cli import main as cli_main
from pyro_fusion.adapters import fuse_hmms, fuse_lda, fuse_mlps
from pyro_fusion.models.lda import LDA
from test_inputs_untouched import (
    DATA,
    K,
    PARAM_STORE,
    assert_unchanged,
    client_posteriors,
    corpus,
    hmm_fits,
    mixed_clients,
    mixture_model,
    normal_clients,
    random_posterior,
    snapshot,
    train,
)

try:
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message
    from flwr.supercore.task_identity import TaskIdentity

    from pyro_fusion.flower import KLFusion, receive_global, wire
    from pyro_fusion.flower.strategy import MAX_REASON_CHARS
    from test_flower import corrupt_array, good_reply, npy, set_header, set_metric, train_messages
except (ImportError, pytest.skip.Exception):  # Flower is an optional dependency
    TaskIdentity = None

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def flower_task():
    """Flower messages can only be built inside a Flower task; pretend to be one."""
    if TaskIdentity is None:
        yield
        return
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class Bad(NamedTuple):
    """``inputs``: everything the caller holds; ``call``: the bad call; ``error``: the exception
    type it must raise; ``names``: a regex the message must match (what it must name);
    ``digest``: for inputs that hold no tensors (Flower messages), a function of their
    contents that must give the same value afterwards."""

    inputs: Any
    call: Callable[[], Any]
    error: type
    names: str
    digest: Callable[[], Any] = lambda: None


BAD: Dict[str, Callable[[pathlib.Path], Bad]] = {}


def bad(name: str):
    def register(factory):
        assert name not in BAD, name
        BAD[name] = factory
        return factory

    return register


def rows(prefix: str, table: Dict[str, Callable[[pathlib.Path], Bad]]) -> None:
    """Register one row per entry of ``table`` under ``prefix``."""
    for name, factory in table.items():
        bad(f"{prefix}: {name}")(factory)


def files_digest(folder: pathlib.Path) -> Dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- families: constructors and natural() --------------------------------------------------


def natural_row(family, names: str, *args, **kwargs):
    return lambda tmp_path: Bad((args, kwargs), lambda: family.natural(*args, **kwargs), ValueError, names)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


rows("natural", {
    "normal negative scale": natural_row(DiagNormal(), r"scale must be positive.*-1", t(0.0, 1.0), t(1.0, -1.0)),
    "normal zero scale": natural_row(DiagNormal(), r"scale must be positive", t(0.0), t(0.0)),
    "normal infinite scale": natural_row(DiagNormal(), r"scale must be positive and finite", t(0.0), t(math.inf)),
    "normal nan loc": natural_row(DiagNormal(), r"loc must be finite", t(math.nan), t(1.0)),
    "normal scale underflows precision": natural_row(
        DiagNormal(), r"loc and scale overflow torch.float64", t(0.0, dtype=torch.float64), t(1e-200, dtype=torch.float64)
    ),
    "point mass nan value": natural_row(PointMass((), scale=1.0), r"value must be finite", t(math.nan)),
    "point mass value overflows at its scale": natural_row(PointMass((), scale=1e-30), r"scale 1e-30 overflow", t(1.0)),
    "gamma negative concentration": natural_row(Gamma(), r"concentration must be positive", t(1.0, -1.0), t(1.0, 1.0)),
    "gamma zero rate": natural_row(Gamma(), r"rate must be positive", t(1.0), t(0.0)),
    "beta zero concentration0": natural_row(Beta(), r"concentration0 must be positive", t(1.0), t(0.0)),
    "dirichlet negative concentration": natural_row(Dirichlet((3,)), r"concentration must be positive", t(1.0, -1.0, 2.0)),
    "bernoulli p above one": natural_row(Bernoulli(), r"probs must be strictly between 0 and 1, got 1.5", t(1.5)),
    "bernoulli p zero": natural_row(Bernoulli(), r"probs must be strictly between 0 and 1", t(0.0)),
    "categorical zero probability": natural_row(Categorical((3,)), r"probs must be positive.*index \[2\]", t(0.5, 0.5, 0.0)),
    "mvn covariance not positive definite": natural_row(
        MultivariateNormal((2,)), r"covariance_matrix must be.*positive definite", torch.zeros(2), covariance_matrix=-torch.eye(2)
    ),
    "mvn precision not symmetric": natural_row(
        MultivariateNormal((2,)), r"precision_matrix must be.*symmetric", torch.zeros(2),
        precision_matrix=torch.tensor([[1.0, 2.0], [0.0, 1.0]]),
    ),
    "mvn nan loc": natural_row(
        MultivariateNormal((2,)), r"loc must be finite", t(math.nan, 0.0), covariance_matrix=torch.eye(2)
    ),
    "normal-wishart nu too small": natural_row(
        NormalWishart((2,)), r"nu must be .*greater than D - 1 = 1, got 0.5", t(1.0)[0], t(0.5)[0], torch.zeros(2), torch.eye(2)
    ),
    "normal-wishart negative kappa": natural_row(
        NormalWishart((2,)), r"kappa must be positive", t(-1.0)[0], t(4.0)[0], torch.zeros(2), torch.eye(2)
    ),
    "normal-wishart scale matrix not positive definite": natural_row(
        NormalWishart((2,)), r"scale_matrix must be", t(1.0)[0], t(4.0)[0], torch.zeros(2), -torch.eye(2)
    ),
})


def constructor_row(build: Callable[[], Any], names: str):
    return lambda tmp_path: Bad((), build, ValueError, names)


rows("family", {
    "negative event shape": constructor_row(lambda: DiagNormal((-2,)), r"DiagNormal event_shape.*-2"),
    "float event shape": constructor_row(lambda: Gamma((2.0,)), r"Gamma event_shape"),
    "dirichlet of one category": constructor_row(lambda: Dirichlet((1,)), r"Dirichlet.*size >= 2"),
    "mvn without a vector": constructor_row(lambda: MultivariateNormal(()), r"MultivariateNormal needs an event shape ending"),
    "normal-wishart of a string dimension": constructor_row(lambda: NormalWishart(("2",)), r"NormalWishart event_shape"),
    "bernoulli of a float dimension": constructor_row(lambda: Bernoulli((1.5,)), r"Bernoulli event_shape.*1\.5"),
    "beta of a negative dimension": constructor_row(lambda: Beta((-1,)), r"Beta event_shape.*-1"),
    "categorical of a string shape": constructor_row(lambda: Categorical("ab"), r"Categorical event_shape.*str"),
    "point mass of a bool dimension": constructor_row(lambda: PointMass((True,), scale=1.0), r"PointMass event_shape.*True"),
    "point mass infinite scale": constructor_row(lambda: PointMass((), scale=math.inf), r"point_scale.*inf"),
    "point mass scale whose square overflows": constructor_row(lambda: PointMass((), scale=1e200), r"point_scale.*1e\+200"),
    "point mass scale whose square underflows": constructor_row(lambda: PointMass((), scale=1e-200), r"point_scale.*1e-200"),
    "point mass bool scale": constructor_row(lambda: PointMass((), scale=True), r"point_scale.*bool"),
    "spec with negative event shape": constructor_row(
        lambda: family_from_spec({"family": "normal", "event_shape": [-2]}), r"event_shape.*-2"
    ),
    "spec with float event shape": constructor_row(
        lambda: family_from_spec({"family": "normal", "event_shape": [0.7]}), r"event_shape.*0.7"
    ),
    "spec with unknown key": constructor_row(
        lambda: family_from_spec({"family": "normal", "event_shape": [2], "scale": 1.0}), r"family 'normal'.*'scale'"
    ),
    "spec with string scale": constructor_row(
        lambda: family_from_spec({"family": "point_mass", "event_shape": [], "scale": "1"}), r"point_scale.*str"
    ),
    "spec not a mapping": constructor_row(lambda: family_from_spec(["normal"]), r"family spec must be a mapping"),
})


# ----- Components ------------------------------------------------------------------------------


def components_row(natural: torch.Tensor, names: str, family=DiagNormal((1,))):
    return lambda tmp_path: Bad(natural, lambda: Components({"x": (family, natural)}), ValueError, names)


rows("Components", {
    "float16": lambda tmp_path: Bad(
        (loc := torch.zeros(3, 2, dtype=torch.float16)),
        lambda: Components.from_distributions({"x": dist.Normal(loc, 1.0)}),
        ValueError, r"field 'x'.*float32 or float64.*float16",
    ),
    "bfloat16": components_row(torch.zeros(3, 2, dtype=torch.bfloat16), r"field 'x'.*bfloat16"),
    "int64": components_row(torch.zeros(3, 2, dtype=torch.int64), r"field 'x'.*int64"),
    "not a family": components_row(torch.zeros(3, 2), r"field 'x'.*ExponentialFamily.*str", family="normal"),
    "wrong width": components_row(torch.zeros(3, 3), r"field 'x'.*shape \[L, 2\]"),
})


# ----- extract ----------------------------------------------------------------------------------


def extract_row(names: str, guide_type=AutoNormal, **kwargs):
    """A trained guide of the mixture model (its parameters in the param store) read with bad
    ``extract`` arguments."""

    def factory(tmp_path):
        guide = train(guide_type(mixture_model), seed=0)
        return Bad(guide, lambda: extract(guide, K, DATA, **kwargs), ValueError, names)

    return factory


def negative_scale_guide(K=3):
    """A hand-written guide whose Normal scale is negative (validate_args=False)."""
    loc = pyro.param("hw_loc", torch.zeros(K, 2))
    scale = pyro.param("hw_scale", -torch.ones(K, 2))
    with pyro.plate("c", K):
        pyro.sample("x", dist.Normal(loc, scale, validate_args=False).to_event(1))


def hand_written_row(guide: Callable, names: str, **kwargs):
    def factory(tmp_path):
        guide()  # create its parameters, as training would
        return Bad(guide, lambda: extract(guide, components={"x": 0}, **kwargs), ValueError, names)

    return factory


rows("extract", {
    "simplex on a real-valued site": extract_row(
        r"site 'loc' listed in simplex=.*not on a simplex", components={"scale": 0}, simplex={"loc": [0]}
    ),
    "negative scale in a hand-written guide": hand_written_row(negative_scale_guide, r"site 'x': DiagNormal: scale must be positive"),
    "point_scale inf": extract_row(r"point_scale.*inf", AutoDelta, point_scale=math.inf, components={"loc": 0}),
    "point_scale 1e200": extract_row(r"point_scale.*1e\+200", AutoDelta, point_scale=1e200, components={"loc": 0}),
    "point_scale 1e-200": extract_row(r"point_scale.*1e-200", AutoDelta, point_scale=1e-200, components={"loc": 0}),
    "point_scale too small for float32 values": extract_row(
        r"site '\w+': PointMass.*scale 1e-30 overflow", AutoDelta, point_scale=1e-30, components={"loc": 0}
    ),
    "point_scale a string": extract_row(r"point_scale.*str", AutoDelta, point_scale="0.1", components={"loc": 0}),
    "component dim 0.5": extract_row(r"components\['loc'\] must be an int, got 0.5", components={"loc": 0.5}),
    "component dim true": extract_row(r"components\['loc'\] must be an int, got True", components={"loc": True}),
    "simplex axes not a list": extract_row(r"simplex\['weights'\] must be a list of ints, got 0", simplex={"weights": 0}),
    "exclude a bare string": extract_row(r"exclude must be a list of site names, got 'noise'", exclude="noise"),
    "weight true": extract_row(r"weight must be positive.*True", weight=True, components={"loc": 0}),
    "weight inf": extract_row(r"weight must be positive and finite.*inf", weight=math.inf, components={"loc": 0}),
    "weight a string": extract_row(r"weight must be positive.*'3'", weight="3", components={"loc": 0}),
    "unknown site": extract_row(r"site 'locs' is not a latent site", components={"locs": 0}),
})


# ----- fuse and fuse_posteriors -------------------------------------------------------------------


def fuse_row(names: str, clients: Callable = normal_clients, **kwargs):
    def factory(tmp_path):
        comps = clients()
        return Bad(comps, lambda: fuse(comps, **kwargs), ValueError, names)

    return factory


def fuse_posteriors_row(names: str, change: Callable = lambda posts: posts, **kwargs):
    def factory(tmp_path):
        posts = change(list(valid_posteriors()[0]))
        return Bad(posts, lambda: fuse_posteriors(posts, **kwargs), ValueError, names)

    return factory


rows("fuse", {
    "no clients": fuse_row(r"at least one client", clients=list),
    "a client that is not Components": fuse_row(r"client 1: expected Components, got str", clients=lambda: [normal_clients()[0], "x"]),
    "clients with other fields": fuse_row(r"client 1 has fields", clients=lambda: mixed_clients()[:1] + normal_clients()[:1]),
    "negative weight": fuse_row(r"client 1: weight must be positive", weights=[1.0, -1.0, 1.0]),
    "unknown direction": fuse_row(r"unknown direction 'up'", direction="up"),
    "num_global zero": fuse_row(r"num_global must be a positive integer", num_global=0),
    "negative price": fuse_row(r"price must be positive and finite.*got -1", price=-1.0),
    "unknown price rule": fuse_row(r"unknown price rule 'median'", price="median"),
    "unknown combine": fuse_row(r"unknown combine 'sum'", combine="sum"),
    "product without prior": fuse_row(r"combine=\"product\" needs the prior", combine="product"),
})
rows("fuse_posteriors", {
    "no clients": fuse_posteriors_row(r"at least one client", change=lambda posts: []),
    "clients of other models": fuse_posteriors_row(
        r"client 1: component_dims", change=lambda posts: [posts[0], dataclasses.replace(posts[1], component_dims={"loc": 0})]
    ),
    "negative simplex concentration": fuse_posteriors_row(r"simplex_concentration.*-1", simplex_concentration=-1.0),
    "NaN simplex concentration": fuse_posteriors_row(r"simplex_concentration.*nan", simplex_concentration=math.nan),
})


# ----- write-back: to_guide, init_to_fused, write_params, FusedPrior, PosteriorPrior -------------


def variant_model(noise: str = "gamma", scale: str = "lognormal"):
    """The mixture model with its ``noise`` site as a Gamma (the clients'), a Normal (another
    support) or absent, and its ``scale`` site positive (the clients') or real."""

    def model(K=K, data=None):
        pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
        with pyro.plate("components", K):
            pyro.sample("loc", dist.Normal(torch.zeros(2), 10.0).to_event(1))
            pyro.sample("scale", dist.LogNormal(0.0, 1.0) if scale == "lognormal" else dist.Normal(0.0, 1.0))
        if noise == "gamma":
            pyro.sample("noise", dist.Gamma(2.0, 2.0))
        elif noise == "normal":
            pyro.sample("noise", dist.Normal(0.0, 1.0))

    return model


def writeback_row(run: Callable, names: str):
    """``run(fused, num_global)`` with the fused mixture posterior."""

    def factory(tmp_path):
        fused = valid_posteriors()[1]
        return Bad(fused, lambda: run(fused, fused.num_global), ValueError, names)

    return factory


def traced(model, *args):
    return poutine.trace(model).get_trace(*args)


def guide_of_another_family(K=3):
    """A hand-written guide whose 'strength' site is the fused Gamma but whose 'topics' site is a
    Normal where the clients had a Dirichlet."""
    rate = pyro.param("rate_param", torch.full((K,), 2.0), constraint=dist.constraints.positive)
    loc = pyro.param("topic_loc", torch.zeros(K, 5))
    with pyro.plate("topic_plate", K):
        pyro.sample("strength", dist.TransformedDistribution(dist.Gamma(3.0, rate), [dist.transforms.ExpTransform()]))
        pyro.sample("topics", dist.Normal(loc, 1.0).to_event(1))


def write_params_row(guide: Callable, names: str):
    def factory(tmp_path):
        from test_guides import dirichlet_guide

        with pyro.get_param_store().scope():
            dirichlet_guide()
            posts = [extract(dirichlet_guide, components={"topics": 0, "strength": 0})] * 2
        fused = fuse_posteriors(posts).posterior
        guide(K=fused.num_global)  # the caller's trained parameters
        return Bad(fused, lambda: fused.write_params(guide, K=fused.num_global), ValueError, names)

    return factory


rows("write-back", {
    "to_guide, a model without a fused site": writeback_row(
        lambda fused, k: fused.to_guide(variant_model(noise="none"), k), r"sites \['noise'\] of the fused posterior are not latent sites"
    ),
    "to_guide, a site of another support": writeback_row(
        lambda fused, k: fused.to_guide(variant_model(noise="normal"), k), r"site 'noise': the model's support is Real.*GreaterThan\(0\)"
    ),
    "to_guide, a component site of another support": writeback_row(
        lambda fused, k: fused.to_guide(variant_model(scale="normal"), k), r"site 'scale': the model's support is Real"
    ),
    "to_guide, a model of another size": writeback_row(
        lambda fused, k: fused.to_guide(variant_model(), k + 1), r"site '\w+'.*size the model to \d components"
    ),
    "init_to_fused, a site of another support": writeback_row(
        lambda fused, k: AutoNormal(variant_model(noise="normal"), init_loc_fn=init_to_fused(fused))(k),
        r"site 'noise': the model's support is Real",
    ),
    "FusedPrior, a model without a fused site": writeback_row(
        lambda fused, k: traced(FusedPrior(fused)(variant_model(noise="none")), k), r"sites \['noise'\] are not latent sites"
    ),
    "FusedPrior, a site of another support": writeback_row(
        lambda fused, k: traced(FusedPrior(fused)(variant_model(noise="normal")), k), r"site 'noise': the model's support is Real"
    ),
    "PosteriorPrior, a tensor for a distribution": lambda tmp_path: Bad(
        (loc := torch.zeros(3)), lambda: PosteriorPrior({"loc": loc}), ValueError, r"site 'loc': expected a torch Distribution, got Tensor"
    ),
    "PosteriorPrior, a site the model lacks": lambda tmp_path: Bad(
        (prior := {"nope": dist.Normal(torch.zeros(3), 1.0)}),
        lambda: traced(PosteriorPrior(prior)(variant_model()), K), ValueError, r"sites \['nope'\] are not latent sites",
    ),
    "write_params into a guide of another family": write_params_row(
        guide_of_another_family, r"site 'topics': the guide samples a Normal, the fused posterior is a Dirichlet"
    ),
})


# ----- files: every reader -------------------------------------------------------------------

_CACHE: Dict[str, Any] = {}


def valid_posteriors():
    """Two clients' GuidePosteriors (mixture sites: component, simplex and shared) and their
    fusion (cached: each test checks its own snapshot)."""
    if "posts" not in _CACHE:
        posts = client_posteriors()
        _CACHE["posts"], _CACHE["fused"] = posts, fuse_posteriors(posts, price=1e4).posterior
    return _CACHE["posts"], _CACHE["fused"]


def save_valid(kind: str, path: str) -> None:
    posts, fused = valid_posteriors()
    {
        "guide": posts[0].save,
        "fused": fused.save,
        "result": fused.result.save,
        "components": lambda p: save_components(posts[0].components, p, {"who": "client 0"}),
    }[kind](path)


def raw_file(path: str):
    """The tensors and the header string of a safetensors file."""
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()[FORMAT]


#: the reader of each kind of file
READERS = {
    "guide": GuidePosterior.load,
    "fused": FusedPosterior.load,
    "result": FusionResult.load,
    "components": load_components,
}


def file_row(kind: str, change: Callable, names: str, reader: Callable = None):
    """A valid file of ``kind`` changed by ``change(tensors, header)`` (the header as a dict;
    ``change`` may return a new header, a dict or raw text), read by ``reader`` (default the
    kind's own); the message must name the file and match ``names``."""

    def factory(tmp_path):
        good = str(tmp_path / "good.safetensors")
        save_valid(kind, good)
        tensors, text = raw_file(good)
        header = json.loads(text)
        new = change(tensors, header)
        header = new if isinstance(new, (str, dict)) else header
        path = str(tmp_path / "bad.safetensors")
        save_file(tensors, path, metadata={FORMAT: header if isinstance(header, str) else json.dumps(header)})
        read = reader or READERS[kind]
        return Bad(path, lambda: read(path), ValueError, re.escape(path) + ".*" + names)

    return factory


def setter(*keys, value):
    """``change`` setting ``header[keys[0]][keys[1]]... = value``."""

    def change(tensors, header):
        node = header
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def remover(*keys):
    def change(tensors, header):
        node = header
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return change


def tensor_setter(key, value):
    def change(tensors, header):
        tensors[key] = value

    return change


DEEP = "[" * 100_000 + "]" * 100_000
DEEP_ENOUGH = json.dumps({"format": "pyro_fusion", "version": 1, "groups": {}, "metadata": {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}})

for _kind in READERS:  # item 1: one client's header must not raise RecursionError in any reader
    rows(f"{_kind} file", {
        "header nested 100,000 deep": file_row(_kind, lambda t, h: DEEP, r"nested deeper than 32 levels"),
        "header without metadata": file_row(_kind, remover("metadata"), r"lacks the keys \['metadata'\]"),
        "version 1.0": file_row(_kind, setter("version", value=1.0), r"unsupported format/version.*1\.0"),
        "version true": file_row(_kind, setter("version", value=True), r"unsupported format/version.*True"),
    })

rows("file", {
    "header nested 40 deep": file_row("guide", lambda t, h: DEEP_ENOUGH, r"nested deeper than 32 levels"),
    "header longer than the limit": file_row(
        "guide", lambda t, h: json.dumps({**h, "pad": "x" * MAX_HEADER_CHARS}), rf"characters; at most {MAX_HEADER_CHARS}"
    ),
    "NaN literal in the header": file_row("guide", setter("metadata", "weight", value=math.nan), r"NaN is not a JSON number"),
    "number out of range in the header": file_row(
        "guide", lambda t, h: json.dumps(h).replace('"weight": 10.0', '"weight": 1e999'), r"1e999 is out of range"
    ),
    "repeated key in the header": file_row(
        "guide", lambda t, h: json.dumps(h).replace('"version": 1', '"version": 1, "version": 1'), r"repeated key 'version'"
    ),
    "header is an array": file_row("guide", lambda t, h: "[1, 2]", r"header is an array of 2 entries"),
    "unknown header key": file_row("guide", setter("extra", value=1), r"unknown keys \['extra'\]"),
    "unknown metadata key": file_row("guide", setter("metadata", "comment", value="hi"), r"unknown keys \['comment'\]"),
    "component_dims 0.7": file_row("guide", setter("metadata", "component_dims", "loc", value=0.7), r"component_dims\['loc'\].*0\.7"),
    "component_dims true": file_row("guide", setter("metadata", "component_dims", "loc", value=True), r"component_dims\['loc'\].*True"),
    "component dim outside the site": file_row("guide", setter("metadata", "component_dims", "loc", value=5), r"component_dims\['loc'\] is 5"),
    "site shape of floats": file_row("guide", setter("metadata", "site_shapes", "noise", value=[1.5]), r"site_shapes\['noise'\]"),
    "unknown source": file_row("guide", setter("metadata", "sources", "noise", value="pickle"), r"sources\['noise'\].*'pickle'"),
    "simplex axis outside the site": file_row("guide", setter("metadata", "simplex_axes", "weights", value=[3]), r"simplex_axes\['weights'\]"),
    "simplex rows not summing to one": file_row(
        "guide", lambda t, h: t["extra/simplex/weights"].mul_(3.0), r"simplex site 'weights'.*sum to 1"
    ),
    "weight a string": file_row("guide", setter("metadata", "weight", value="10"), r"weight must be a positive number.*'10'"),
    "weight true": file_row("guide", setter("metadata", "weight", value=True), r"weight must be a positive number.*True"),
    "family spec with an extra key": file_row(
        "guide", setter("groups", "components", "loc", "scale", value=1.0), r"field components/loc: bad family spec"
    ),
    "support of an unknown site": file_row("guide", setter("metadata", "supports", "nope", value="Real"), r"supports\['nope'\]"),
    "support not a string": file_row("guide", setter("metadata", "supports", "noise", value=0), r"supports\['noise'\] is 0"),
    "float16 components": file_row(
        "components", lambda t, h: t.__setitem__("components/loc", t["components/loc"].half()), r"components/loc.*float16"
    ),
    "int64 components": file_row(
        "components", lambda t, h: t.__setitem__("components/loc", t["components/loc"].long()), r"components/loc.*int64"
    ),
    "stray tensor in a components file": file_row(
        "components", tensor_setter("weights", torch.zeros(3)), r"tensors \['weights'\] belong to no declared field"
    ),
    # item 3: a 600-byte file claiming two million clients is turned away before anything is built
    "two million clients": file_row("fused", setter("metadata", "result", "num_clients", value=2_000_000),
                                    r"declares 2000000 clients but only \d+ tensors"),
    "two million clients in a result": file_row("result", setter("metadata", "num_clients", value=2_000_000),
                                                r"declares 2000000 clients"),
    # item 8: a saved FusionResult is validated like a posterior
    "assignment out of range": file_row("result", tensor_setter("extra/assignment/0", torch.tensor([0, 99, -5])),
                                        r"assignment of client 0: global indices must lie in 0\.\.\d"),
    "float assignment": file_row("result", tensor_setter("extra/assignment/1", torch.tensor([0.0, 1.0, 2.0])),
                                 r"'extra/assignment/1': dtype torch.float32"),
    "two components on one global": file_row("result", tensor_setter("extra/assignment/0", torch.tensor([1, 1, 2])),
                                             r"assignment of client 0: two components share"),
    "NaN support": file_row("result", lambda t, h: t.__setitem__("extra/support", torch.full_like(t["extra/support"], math.nan, dtype=torch.float32)), r"'extra/support': dtype"),
    "support that does not count the clients": file_row(
        "result", lambda t, h: t["extra/support"].add_(1), r"support does not count"
    ),
    "objective with NaN": file_row("result", lambda t, h: t["extra/objective"].fill_(math.nan), r"'extra/objective': contains NaN"),
    "iterations a string": file_row("result", setter("metadata", "iterations", value="3"), r"result iterations.*'3'"),
    "converged as 1": file_row("result", setter("metadata", "converged", value=1), r"result converged must be true or false"),
    "negative price": file_row("result", setter("metadata", "price", value=-1.0), r"result price.*-1\.0"),
    "unknown direction": file_row("result", setter("metadata", "direction", value="sideways"), r"direction/combine.*'sideways'"),
    "fused posterior with a bad result": file_row("fused", setter("metadata", "result", "converged", value="yes"),
                                                  r"result converged must be true or false"),
})


# ----- the adapters ----------------------------------------------------------------------------


def hmm_row(change: Callable, names: str, **kwargs):
    """Two trained HMM clients, the second with ``change(fit)`` applied (a changed copy)."""

    def factory(tmp_path):
        fits = list(hmm_fits())
        fits[1] = change(fits[1])
        return Bad(fits, lambda: fuse_hmms(fits, restarts=1, **kwargs), ValueError, names)

    return factory


def replaced(name: str, make: Callable):
    return lambda fit: dataclasses.replace(fit, **{name: make(getattr(fit, name))})


def duplicated_word_ldas():
    """Two Dirichlet LDAs, the second over a vocabulary that repeats 'cat' (its topics have a
    column per entry, so the repeated word's second column would be dropped)."""
    models = []
    for j, vocab in enumerate([("ant", "bee", "cat"), ("cat", "dog", "cat")]):
        model = LDA(2, vocab, hidden=4, name=f"client{j}")
        model.load_topic_posterior(dist.Dirichlet(torch.rand(2, 3, generator=torch.Generator().manual_seed(j)) + 0.5))
        models.append(model)
    return models


def mlp_row(change: Callable, names: str, **kwargs):
    """Two BNN clients' posteriors (site -> Normal), the second with ``change(posterior)``."""

    def factory(tmp_path):
        posts = [random_posterior((3,), 0), random_posterior((2,), 1)]
        change(posts[1])
        return Bad(posts, lambda: fuse_mlps(posts, **kwargs), ValueError, names)

    return factory


def spoil_site(site: str, loc: float = 0.0, scale: float = 0.1):
    def change(post):
        d = post[site]
        post[site] = dist.Normal(torch.full_like(d.loc, loc), torch.full_like(d.scale, scale), validate_args=False)

    return change


rows("fuse_hmms", {
    "NaN transition counts": hmm_row(replaced("transition_counts", lambda c: c.clone().fill_(math.nan)),
                                     r"client 1: transition_counts must be finite and nonnegative"),
    "negative transition counts": hmm_row(replaced("transition_counts", lambda c: c - c.max()),
                                          r"client 1: transition_counts must be finite and nonnegative"),
    "2x2 counts for 3 states": hmm_row(replaced("transition_counts", lambda c: c[:2, :2].clone()),
                                       r"client 1: transition_counts must have shape \(3, 3\).*got \(2, 2\)"),
    "occupancy of length 4": hmm_row(replaced("occupancy", lambda c: torch.cat([c, c[:1]])),
                                     r"client 1: occupancy must have shape \(3,\).*got \(4,\)"),
    "negative initial counts": hmm_row(replaced("initial_counts", lambda c: -c - 1), r"client 1: initial_counts"),
    "NaN min_occupancy": hmm_row(lambda fit: fit, r"min_occupancy must be a nonnegative number, got nan", min_occupancy=math.nan),
    "prior not an HMMPrior": hmm_row(lambda fit: fit, r"prior must be an HMMPrior, got dict", prior={"stickiness": 1.0}),
})
rows("fuse_lda", {
    "a vocabulary repeating a word": lambda tmp_path: Bad(
        (models := duplicated_word_ldas()), lambda: fuse_lda(models, num_global=2), ValueError,
        r"client 1: the vocabulary repeats 1 words, e.g. \['cat'\]",
    ),
})
rows("fuse_mlps", {
    "NaN weight": mlp_row(spoil_site("hidden.0.weight", loc=math.nan), r"client 1, site 'hidden.0.weight': its mean has NaN"),
    "negative scale": mlp_row(spoil_site("output.weight", scale=-0.1), r"client 1, site 'output.weight': its scale must be positive"),
    "a tensor for a site": mlp_row(lambda post: post.__setitem__("output.bias", torch.zeros(3)),
                                   r"client 1, site 'output.bias': expected a distribution, got Tensor"),
    "point_scale inf": mlp_row(lambda post: None, r"point_scale.*inf", point_scale=math.inf),
    "prior_scale zero": mlp_row(lambda post: None, r"prior_scale.*got 0", prior_scale=0.0),
})
rows("fuse_posteriors", {
    "a client that is neither a guide nor a posterior": fuse_posteriors_row(
        r"client 1: expected a trained guide or a GuidePosterior, got int", change=lambda posts: [posts[0], 3]
    ),
})


# ----- the command line ------------------------------------------------------------------------


class CliFailed(Exception):
    """``pyro-fusion`` exited with a nonzero status; the message is its stderr."""


def run_cli(*args: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
    if code != 0:
        raise CliFailed(f"exit status {code}: {err.getvalue()}")


def cli_row(build: Callable, names: str):
    """``build(tmp_path, clients)`` gives the CLI arguments, ``clients`` two valid client files."""

    def factory(tmp_path):
        clients = [str(tmp_path / f"client{j}.safetensors") for j in range(2)]
        for path, post in zip(clients, valid_posteriors()[0]):
            post.save(path)
        args = build(tmp_path, clients)
        return Bad((), lambda: run_cli(*args), CliFailed, names)

    return factory


def deep_client(tmp_path, clients):
    deep = str(tmp_path / "deep.safetensors")
    save_file({"components/loc": torch.zeros(3, 4)}, deep, metadata={FORMAT: DEEP})
    return ["fuse", clients[0], deep, "-o", str(tmp_path / "out.safetensors")]


def pickle_client(tmp_path, clients):
    evil = str(tmp_path / "evil.pt")
    torch.save({"x": 1}, evil)
    return ["fuse", clients[0], evil, "-o", str(tmp_path / "out.safetensors")]


rows("CLI", {
    "output into a missing folder": cli_row(
        lambda tmp, c: ["fuse", *c, "-o", str(tmp / "nope" / "out.safetensors")], r"the folder .*nope does not exist"
    ),
    "output onto a folder": cli_row(lambda tmp, c: ["fuse", *c, "-o", str(tmp)], r"-o .*: is a folder"),
    "output onto a client file": cli_row(lambda tmp, c: ["fuse", *c, "-o", c[1]], r"is the client file .*client1\.safetensors"),
    "a single client": cli_row(lambda tmp, c: ["fuse", c[0], "-o", str(tmp / "out.safetensors")], r"at least two client files, got 1"),
    "a client header nested 100,000 deep": cli_row(deep_client, r"deep\.safetensors: header nested deeper than 32"),
    "a pickle": cli_row(pickle_client, r"evil\.pt: not a pyro_fusion safetensors file"),
    "price NaN": cli_row(lambda tmp, c: ["fuse", *c, "-o", str(tmp / "o.safetensors"), "--price", "nan"], r"--price.*'nan'"),
    "num-global zero": cli_row(lambda tmp, c: ["fuse", *c, "-o", str(tmp / "o.safetensors"), "--num-global", "0"], r"--num-global.*'0'"),
    "negative seed": cli_row(lambda tmp, c: ["fuse", *c, "-o", str(tmp / "o.safetensors"), "--seed", "-1"], r"--seed.*'-1'"),
})


# ----- Flower: replies to the strategy and the global posterior a client receives --------------


def content_digest(contents) -> str:
    """A digest of Flower message contents: every array's bytes and every config and metric."""
    h = hashlib.sha256()
    for content in contents:
        for name in sorted(content):
            record = content[name]
            if isinstance(record, ArrayRecord):
                for key in sorted(record):
                    a = record[key]
                    h.update(f"{name}/{key}:{a.dtype}:{a.shape}:{a.stype}".encode() + a.data)
            else:
                h.update(f"{name}:{sorted(record.items())!r}".encode())
    return h.hexdigest()


def reply_row(change: Callable, names: str, **strategy_kwargs):
    """Node 13's reply changed by ``change(content)``, aggregated with two good replies: the
    round must go on with nodes 11 and 12; the call raises the rejection reason as a ValueError."""

    def factory(tmp_path):
        strategy = KLFusion(max_width=100, max_num_examples=1000, **strategy_kwargs)
        replies = [good_reply(m) for m in train_messages(strategy)]
        change(replies[-1].content)

        def call():
            arrays, _ = strategy.aggregate_train(1, replies)
            assert arrays is not None and set(strategy.assignments[1]) == {11, 12}, "the round must go on"
            for rejection in strategy.rejections[1]:
                assert rejection.node_id == 13 and len(rejection.reason) <= MAX_REASON_CHARS
                raise ValueError(rejection.reason)

        return Bad(strategy, call, ValueError, "node 13.*" + names, lambda: content_digest(r.content for r in replies))

    return factory


def global_row(change: Callable, names: str):
    """A client receiving a round-2 message whose global posterior ``change(content)`` spoiled:
    a ValueError naming the server, and the client's param store left as it was."""

    def factory(tmp_path):
        strategy = KLFusion(max_width=100, max_num_examples=1000)
        arrays, _ = strategy.aggregate_train(1, [good_reply(m) for m in train_messages(strategy)])
        message = train_messages(strategy, 2, arrays=arrays)[0]
        message.content[wire.HEADER_KEY] = wire.header_record(strategy._header, 2)  # its own copy
        change(message.content)
        return Bad((), lambda: receive_global(message), ValueError, "server.*" + names,
                   lambda: content_digest([message.content]))

    return factory


def set_raw_header(text: str):
    def change(content):
        content[wire.HEADER_KEY][wire.HEADER_FIELD] = text

    return change


def huge_npy_header(a):
    """An array whose .npy header claims 10**13 elements (np.load would try to allocate them)."""
    buffer = npy(a).data
    fake = buffer.replace(repr(tuple(a.shape)).encode(), b"(10000000000000,)".ljust(len(repr(tuple(a.shape)))))
    return Array(dtype=str(a.dtype), shape=(10**13,), stype="numpy.ndarray", data=fake)


def float64_far_loc(a):
    """Normal natural parameters (m / s^2, -1 / (2 s^2)) with loc 1e200 and scale 1, float64."""
    far = np.empty(a.shape, dtype=np.float64)
    far[:, 0::2], far[:, 1::2] = 1e200, -0.5
    return npy(far)


if TaskIdentity is not None:
    rows("Flower reply", {
        # item 1
        "header nested 100,000 deep": reply_row(set_raw_header(DEEP), r"nested deeper than 32"),
        # item 2
        "npy header claiming 1e13 elements": reply_row(
            corrupt_array("components/loc", huge_npy_header), r"array 'components/loc'.*\(10000000000000,\)"
        ),
        "data shorter than declared": reply_row(corrupt_array("components/loc", lambda a: Array(
            dtype="float32", shape=tuple(a.shape), stype="numpy.ndarray", data=npy(a).data[:-4])), r"bytes of data for shape"),
        # item 3
        "result metadata in a reply": reply_row(
            set_header(lambda h: h["metadata"].__setitem__("result", {"num_clients": 2_000_000})), r"unknown keys \['result'\]"
        ),
        # item 4: in-domain but extreme
        "float32 natural parameters of 1e30": reply_row(
            corrupt_array("components/loc", lambda a: npy(a * np.float32(1e30))), r"field 'loc': its KL cost terms.*too extreme"
        ),
        "float64 loc 1e200": reply_row(corrupt_array("components/loc", float64_far_loc), r"field 'loc': its KL cost terms"),
        "extreme shared field under a custom fuser": reply_row(
            corrupt_array("shared/noise", lambda a: npy(a * np.float32(1e30))), r"field 'noise'.*forward KL|field 'noise'",
            fuser=lambda posts, weights: fuse_posteriors(posts, weights, price=1.0),
        ),
        # item 8, in replies
        "component_dims 0.7": reply_row(
            set_header(lambda h: h["metadata"]["component_dims"].__setitem__("loc", 0.7)), r"component_dims\['loc'\].*0\.7"
        ),
        "version true": reply_row(set_header(lambda h: h.__setitem__("version", True)), r"unsupported format/version"),
        "server round true": reply_row(lambda c: c[wire.HEADER_KEY].__setitem__(wire.ROUND_FIELD, True), r"round must be"),
        "header an int": reply_row(lambda c: c[wire.HEADER_KEY].__setitem__(wire.HEADER_FIELD, 7), r"header is 7"),
        "point mass of scale 1e-200": reply_row(set_header(lambda h: h["metadata"]["site_families"].__setitem__(
            "loc", {"family": "point_mass", "event_shape": [], "scale": 1e-200})), r"site 'loc'.*point_scale"),
        # the strategy averages metrics: a list beside a number would have failed the round
        "metric a list": reply_row(lambda c: c[wire.METRICS_KEY].__setitem__("loss", [1.0, 2.0]), r"metric 'loss'"),
        "metric NaN": reply_row(lambda c: c[wire.METRICS_KEY].__setitem__("loss", math.nan), r"metric 'loss'.*nan"),
        "num-examples a list": reply_row(set_metric([50]), r"num-examples must be an int.*\[50\]"),
    })
    rows("Flower global", {
        "header nested 100,000 deep": global_row(set_raw_header(DEEP), r"nested deeper than 32"),
        "two million clients": global_row(
            set_header(lambda h: h["metadata"]["result"].__setitem__("num_clients", 2_000_000)), r"declares 2000000 clients"
        ),
        "npy header claiming 1e13 elements": global_row(
            corrupt_array("global/loc", huge_npy_header), r"array 'global/loc'.*10000000000000"
        ),
        "server round a float": global_row(
            lambda c: c[wire.HEADER_KEY].__setitem__(wire.ROUND_FIELD, 2.0), r"server round must be a nonnegative int, got 2\.0"
        ),
    })


# ----- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input(name, tmp_path):
    pyro.param("caller.sentinel", torch.arange(3.0))  # a parameter of the caller's own
    row = BAD[name](tmp_path)
    roots = {"inputs": row.inputs, "param_store": PARAM_STORE}
    before, files, digest = snapshot(roots), files_digest(tmp_path), row.digest()
    with pytest.raises(row.error) as info:
        row.call()
    message = str(info.value)
    assert re.search(row.names, message), message
    assert len(message) <= MAX_MESSAGE_CHARS, f"{len(message)} characters"
    assert_unchanged(before, roots)
    assert files_digest(tmp_path) == files, "files were modified"
    assert row.digest() == digest, "messages were modified"


def test_the_table_is_large():
    assert len(BAD) >= 80


# ----- mutated files: a clean rejection within a bounded amount of work -----------------------

#: CPU seconds a reader may spend on one small mutated file: a bound on the work per file (the
#: issue's 600-byte file took 14-18 s), not a speed target, so it is far above the few
#: milliseconds a read takes
WORK_BOUND_S = 2.0

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**7), 10**7) | st.sampled_from([2_000_000, 0.7, 1.0, -1, 0])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def json_paths(node, path=()):
    """Every path (keys and indices) to a value inside a JSON document."""
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from json_paths(child, path + (key,))


def mutate_header(data, header):
    """Replace, delete or add one value anywhere in the header, or mangle its text."""
    paths = list(json_paths(header))
    path = data.draw(st.sampled_from(paths[1:]))
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add", "text"]))
    if action == "replace":
        parent[path[-1]] = data.draw(JSON_VALUES)
    elif action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=6))] = data.draw(JSON_VALUES)
    elif action == "text":
        text = json.dumps(header)
        cut = data.draw(st.integers(0, len(text)))
        return text[:cut] + data.draw(st.sampled_from(["", "[", "{", "]]", "\\", '"', "NaN", "1e999", "[" * 5000]))
    return header


TENSOR_CHANGES = {
    "float16": lambda t: t.half() if t.is_floating_point() else t.double(),
    "int64": lambda t: t.long(),
    "float64": lambda t: t.double(),
    "drop a row": lambda t: t[:-1],
    "add a row": lambda t: torch.cat([t, t[:1]]),
    "flatten": lambda t: t.reshape(-1),
    "add a dim": lambda t: t.unsqueeze(0),
    "nan": lambda t: t.double().fill_(math.nan),
    "negate": lambda t: -t,
    "scale by 1e30": lambda t: t * 1e30,
}


def mutate_tensors(data, tensors):
    action = data.draw(st.sampled_from(["change", "drop", "add"]))
    key = data.draw(st.sampled_from(sorted(tensors)))
    if action == "change":
        tensors[key] = TENSOR_CHANGES[data.draw(st.sampled_from(sorted(TENSOR_CHANGES)))](tensors[key]).contiguous()
    elif action == "drop":
        del tensors[key]
    else:
        tensors[data.draw(st.sampled_from(["extra/assignment/9", "components/evil", "global/x", "x"]))] = tensors[key].clone()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(READERS)), where=st.sampled_from(["header", "tensors", "both"]))
def test_mutated_files_are_rejected_cleanly(data, kind, where):
    """A valid file with one mutation of its header (any value, anywhere, or its text) or of
    its tensors (dtype, shape, presence, values) is read or rejected with a short ValueError
    naming the file, within a bounded amount of work: never another exception."""
    with tempfile.TemporaryDirectory() as folder:
        good = f"{folder}/good.safetensors"
        save_valid(kind, good)
        tensors, text = raw_file(good)
        header = json.loads(text)
        if where in ("header", "both"):
            header = mutate_header(data, header)
        if where in ("tensors", "both"):
            mutate_tensors(data, tensors)
        path = f"{folder}/mutated.safetensors"
        save_file(tensors, path, metadata={FORMAT: header if isinstance(header, str) else json.dumps(header)})
        start = time.process_time()
        try:
            READERS[kind](path)
        except ValueError as e:
            assert str(e).startswith(path), str(e)
            assert len(str(e)) <= MAX_MESSAGE_CHARS
        assert time.process_time() - start < WORK_BOUND_S


# ----- mutated replies: the round goes on, the reply is accepted or cleanly rejected ----------

if TaskIdentity is not None:
    ARRAY_CHANGES = {
        "float64": lambda a, junk: npy(a.astype(np.float64)),
        "int64": lambda a, junk: npy(a.astype(np.int64)),
        "float16 bytes declared float32": lambda a, junk: Array(
            dtype="float32", shape=a.shape, stype="numpy.ndarray", data=npy(a.astype(np.float16)).data),
        "drop a row": lambda a, junk: npy(a[:-1]),
        "add a row": lambda a, junk: npy(np.concatenate([a, a[:1]])),
        "flatten": lambda a, junk: npy(a.reshape(-1)),
        "Fortran order": lambda a, junk: npy(np.asfortranarray(a)),
        "truncated bytes": lambda a, junk: Array(dtype=str(a.dtype), shape=a.shape, stype="numpy.ndarray",
                                                 data=npy(a).data[: len(junk)]),
        "junk bytes": lambda a, junk: Array(dtype=str(a.dtype), shape=a.shape, stype="numpy.ndarray", data=junk),
        "junk after the header": lambda a, junk: Array(dtype=str(a.dtype), shape=a.shape, stype="numpy.ndarray",
                                                       data=npy(a).data[:128] + junk),
        "declared shape lies": lambda a, junk: Array(dtype=str(a.dtype), shape=(a.shape[0] + 1,) + a.shape[1:],
                                                     stype="numpy.ndarray", data=npy(a).data),
        "npy header claiming 1e13 elements": lambda a, junk: huge_npy_header(a),
        "scale by 1e30": lambda a, junk: npy(a * np.float32(1e30)),
        "scale by 1e-30": lambda a, junk: npy(a * np.float32(1e-30)),
        "nan": lambda a, junk: npy(np.full_like(a, np.nan)),
        "negate": lambda a, junk: npy(-a),
    }
    ROUND_VALUES = st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.booleans(), st.text(max_size=5))
    METRIC_VALUES = st.one_of(
        st.integers(-5, 2000), st.floats(allow_nan=True), st.lists(st.floats(-2, 2), max_size=3), st.lists(st.integers(0, 9), max_size=3)
    )

    def mutate_reply(data, content):
        """One mutation of a reply: its header (JSON values anywhere, or its text), one array,
        a metric or the round."""
        part = data.draw(st.sampled_from(["header", "array", "metric", "round", "records"]))
        if part == "header":
            header = mutate_header(data, json.loads(content[wire.HEADER_KEY][wire.HEADER_FIELD]))
            content[wire.HEADER_KEY][wire.HEADER_FIELD] = header if isinstance(header, str) else json.dumps(header)
        elif part == "array":
            arrays = content[wire.ARRAYS_KEY]
            key = data.draw(st.sampled_from(sorted(arrays)))
            change = data.draw(st.sampled_from(sorted(ARRAY_CHANGES)))
            arrays[key] = ARRAY_CHANGES[change](arrays[key].numpy(), data.draw(st.binary(max_size=64)))
        elif part == "metric":
            name = data.draw(st.sampled_from([wire.NUM_EXAMPLES, "loss"]))
            try:
                content[wire.METRICS_KEY][name] = data.draw(METRIC_VALUES)
            except TypeError:  # Flower itself refuses the value
                pass
        elif part == "round":
            content[wire.HEADER_KEY][wire.ROUND_FIELD] = data.draw(ROUND_VALUES)
        else:
            name = data.draw(st.sampled_from(sorted(content)))
            del content[name]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), direction=st.sampled_from(["reverse", "forward"]))
    def test_mutated_reply_never_aborts_the_round(data, direction):
        """Node 13's reply with one mutation is accepted or rejected with a short reason naming
        it, within a bounded amount of work; nodes 11 and 12 are always fused."""
        strategy = KLFusion(max_width=100, max_num_examples=1000, fuse_kwargs={"direction": direction, "price": 1.0})
        replies = [good_reply(m) for m in train_messages(strategy)]
        mutate_reply(data, replies[-1].content)
        start = time.process_time()
        arrays, metrics = strategy.aggregate_train(1, replies)
        assert time.process_time() - start < WORK_BOUND_S
        assert arrays is not None and {11, 12} <= set(strategy.assignments[1])
        for rejection in strategy.rejections[1]:
            assert rejection.node_id == 13 and rejection.reason.startswith("node 13")
            assert len(rejection.reason) <= MAX_REASON_CHARS
