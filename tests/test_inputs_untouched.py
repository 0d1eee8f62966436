"""The project rule "nothing the caller passed in (guides, param store, tensors) is modified",
checked for the functions exported by ``pyro_fusion`` and for the adapters' and models' fusion
and write-back entry points, and for the scoring helpers that should only read their inputs
(metrics, predictive evaluation, HMM decoding, LDA evaluation): one case each in ``CASES``.

Each case builds small valid inputs and a ``run`` that calls the entry point (plus, for
results that are functions or messengers, the use they are made for: building and training
a guide, tracing a model). :func:`collect` finds every tensor reachable from the inputs
(containers, NamedTuples, dataclasses, distributions, modules' state dicts and attributes,
pyro_fusion objects) and from the whole Pyro param store; after ``run`` each must be
bit-identical (values, shape, dtype, ``requires_grad``) and still be reachable by the same
path. Where the result is a new object (fused posteriors, guides, statistics, ...), no tensor
reachable from it may share memory with an input tensor, so editing the result in place can
never change what the caller holds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.optim import Adam
from torch.distributions import Distribution

import pyro_fusion
from pyro_fusion import metrics
from pyro_fusion import (
    Components,
    FusedPrior,
    PosteriorPrior,
    barycenter,
    counterpart_price,
    default_price,
    extract,
    fuse,
    fuse_gmms,
    fuse_posteriors,
    init_to_fused,
    kl_cost_matrix,
    price_of,
    spread_price,
)
from pyro_fusion.adapters import bnn as bnn_adapter
from pyro_fusion.adapters import hmm as hmm_adapter
from pyro_fusion.adapters import lda as lda_adapter
from pyro_fusion.io import save_components
from pyro_fusion.posterior import encode_posterior, save_posterior
from pyro_fusion.models.bnn import (
    BayesianMLP,
    delta_guide,
    evaluate,
    normal_guide,
    normal_posterior,
    predictive_probs,
    train_svi,
)
from pyro_fusion.models.gmm import fit_gmm, gmm_sites
from pyro_fusion.models.hmm import HMMParams, HMMPrior, decode, fit_gaussian_hmm, forward_backward
from pyro_fusion.datasets import Corpus
from pyro_fusion.metrics.topics import (
    document_completion,
    fold_in,
    split_halves,
    top_words,
    topic_word_matrix,
    umass_coherence,
)
from pyro_fusion.models.lda import LDA, fit_doc_topics
from pyro_fusion.synthetic import gaussian_atoms_problem


pytestmark = pytest.mark.usefixtures("one_thread")


# ----- the generic snapshot / compare -----------------------------------------------------

#: stands for the whole Pyro param store (``get_state()``), read when collected
PARAM_STORE = object()
#: nn.Module bookkeeping; parameters and buffers are read through ``state_dict``
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def collect(root) -> Dict[str, torch.Tensor]:
    """Every tensor (or writable numeric NumPy array, as a tensor on its memory) reachable
    from ``root``, keyed by the path that reaches it first."""
    found: Dict[str, torch.Tensor] = {}
    seen = set()

    def visit(obj, path):
        if isinstance(obj, torch.Tensor):
            found.setdefault(path, obj)
            return
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc" and obj.flags.writeable:
            found.setdefault(path, torch.from_numpy(obj))  # same memory: aliases are seen
            return
        if obj is PARAM_STORE:
            visit(pyro.get_param_store().get_state(), path)
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for key, value in obj.state_dict(keep_vars=True).items():
                visit(value, f"{path}.state_dict[{key}]")
            for key, value in obj.named_buffers():  # non-persistent ones too
                visit(value, f"{path}.buffers[{key}]")
            for name, sub in obj.named_modules():
                for key, value in vars(sub).items():
                    if key not in _MODULE_INTERNALS:
                        visit(value, f"{path}.{name}.{key}" if name else f"{path}.{key}")
        elif isinstance(obj, Mapping):
            for key, value in obj.items():
                visit(value, f"{path}[{key!r}]")
        elif _is_namedtuple(obj):
            for key, value in zip(obj._fields, obj):
                visit(value, f"{path}.{key}")
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                visit(value, f"{path}[{i}]")
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name), f"{path}.{f.name}")
        elif isinstance(obj, Distribution) or type(obj).__module__.startswith("pyro_fusion"):
            for key, value in vars(obj).items():
                visit(value, f"{path}.{key}")

    visit(root, "inputs")
    return found


class Snapshot(NamedTuple):
    tensor: torch.Tensor  # the caller's own tensor
    copy: torch.Tensor
    requires_grad: bool


def snapshot(root) -> Dict[str, Snapshot]:
    return {
        path: Snapshot(t, t.detach().clone(), t.requires_grad) for path, t in collect(root).items()
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1).contiguous()
    return flat if flat.dtype == torch.bool else flat.view(torch.uint8)


def assert_unchanged(before: Dict[str, Snapshot], root) -> None:
    """Every tensor of ``before`` is still reachable by its path, bit for bit the same.
    (New tensors, e.g. parameters a call adds to the param store, are allowed.)"""
    after = collect(root)
    problems = []
    for path, snap in before.items():
        if path not in after:
            problems.append(f"{path}: no longer there")
            continue
        now, copy = after[path], snap.copy
        if (now.dtype, now.shape, now.requires_grad) != (copy.dtype, copy.shape, snap.requires_grad):
            problems.append(
                f"{path}: {copy.dtype}{list(copy.shape)} requires_grad={snap.requires_grad} -> "
                f"{now.dtype}{list(now.shape)} requires_grad={now.requires_grad}"
            )
        elif not torch.equal(_bits(now), _bits(copy)):
            problems.append(f"{path}: values changed")
    assert not problems, "inputs were modified:\n" + "\n".join(problems)


def _span(t: torch.Tensor):
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def assert_no_alias(before: Dict[str, Snapshot], result) -> None:
    """No tensor reachable from ``result`` shares memory with a tensor of the inputs."""
    inputs = [(path, _span(s.tensor)) for path, s in before.items() if s.tensor.untyped_storage().nbytes()]
    shared = []
    for path, t in collect(result).items():
        if not t.untyped_storage().nbytes():
            continue
        start, end = _span(t)
        for in_path, (in_start, in_end) in inputs:
            if start < in_end and in_start < end:
                shared.append(f"result {path[len('inputs'):]} shares memory with {in_path}")
    assert not shared, "\n".join(shared)


class Case(NamedTuple):
    """``inputs``: everything the caller holds; ``run``: the call, returning the result;
    ``fresh``: whether the result must not share memory with the inputs."""

    inputs: Any
    run: Callable[[], Any]
    fresh: bool = True


CASES: Dict[str, Callable[..., Case]] = {}


def case(name: str):
    def register(factory):
        assert name not in CASES
        CASES[name] = factory
        return factory

    return register


def test_the_helpers_see_modifications_and_aliases():
    loc = torch.zeros(2, 3)
    inputs = {"comps": Components.from_distributions({"x": dist.Normal(loc, 1.0)}), "d": dist.Normal(loc, 1.0)}
    before = snapshot(inputs)
    assert any("'d'].loc" in path for path in before)
    assert_unchanged(before, inputs)
    loc[0, 0] = 1.0
    with pytest.raises(AssertionError, match=r"\['d'\]\.loc: values changed"):
        assert_unchanged(before, inputs)
    assert_no_alias(before, {"new": loc.clone()})
    with pytest.raises(AssertionError, match="shares memory"):
        assert_no_alias(before, {"view": loc[1]})
    with pytest.raises(AssertionError, match="shares memory"):
        assert_no_alias(before, {"array": loc.numpy()})
    module = torch.nn.Linear(2, 2)
    before = snapshot(module)
    with torch.no_grad():
        module.weight.add_(1.0)
    with pytest.raises(AssertionError, match=r"state_dict\[weight\]: values changed"):
        assert_unchanged(before, module)
    pyro.param("p", torch.ones(2))
    before = snapshot(PARAM_STORE)
    del pyro.get_param_store()["p"]
    with pytest.raises(AssertionError, match=r"\['p'\]: no longer there"):
        assert_unchanged(before, PARAM_STORE)


# ----- inputs ------------------------------------------------------------------------------


def normal_clients():
    """Three float64 clients with one field: ``concat()`` is the caller's own tensor."""
    return list(gaussian_atoms_problem(5, 3, 2, seed=0, dtype=torch.float64).clients)


def mixed_clients():
    """Two float32 clients with Normal, Dirichlet and point-mass fields."""
    g = torch.Generator().manual_seed(1)
    clients = []
    for size in (3, 4):
        clients.append(
            Components.from_distributions(
                {
                    "loc": dist.Normal(torch.randn(size, 2, generator=g), 0.2 + torch.rand(size, 2, generator=g)),
                    "probs": dist.Dirichlet(1.0 + 5 * torch.rand(size, 3, generator=g)),
                    "point": dist.Delta(torch.randn(size, 2, generator=g), event_dim=1),
                },
                point_scale=0.5,
            )
        )
    return clients


def normal_prior():
    return Components.from_distributions(
        {"loc": dist.Normal(torch.zeros(1, 2, dtype=torch.float64), 10.0)}
    )


@case("fuse-reverse-float64")
def _(tmp_path):
    clients, weights = normal_clients(), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    return Case((clients, weights), lambda: fuse(clients, weights))


@case("fuse-forward-mixed-spread")
def _(tmp_path):
    clients = mixed_clients()
    return Case(clients, lambda: fuse(clients, [1.0, 3.0], direction="forward", price="spread"))


@case("fuse-parametric-product")
def _(tmp_path):
    clients, prior = normal_clients(), normal_prior()
    return Case((clients, prior), lambda: fuse(clients, num_global=5, prior=prior, combine="product"))


@case("barycenter-reverse-float64")
def _(tmp_path):
    comps = normal_clients()[0]
    weights = torch.rand(len(comps), dtype=torch.float64)
    return Case((comps, weights), lambda: barycenter(comps, weights))


@case("barycenter-forward-mixed")
def _(tmp_path):
    comps, weights = mixed_clients()[1], torch.tensor([1.0, 2.0, 0.0, 1.0])
    return Case((comps, weights), lambda: barycenter(comps, weights, direction="forward"))


for _direction in ("reverse", "forward"):

    @case(f"kl_cost_matrix-{_direction}")
    def _(tmp_path, direction=_direction):
        a, b = mixed_clients()
        return Case((a, b), lambda: kl_cost_matrix(a, b, direction))


@case("price_of-prior")
def _(tmp_path):
    clients, prior, weights = normal_clients(), normal_prior(), torch.tensor([3.0, 1.0, 1.0])
    return Case((clients, prior, weights), lambda: price_of("prior", clients, weights, "reverse", prior=prior))


@case("price_of-closest-pair-forward")
def _(tmp_path):
    clients = mixed_clients()
    return Case(clients, lambda: price_of("closest-pair", clients, direction="forward"))


@case("counterpart_price-forward")
def _(tmp_path):
    clients, weights = mixed_clients(), torch.tensor([2.0, 1.0], dtype=torch.float64)
    return Case((clients, weights), lambda: counterpart_price(clients, weights, direction="forward"))


@case("default_price")
def _(tmp_path):
    clients = normal_clients()
    return Case(clients, lambda: pytest.deprecated_call(default_price, clients))


@case("spread_price")
def _(tmp_path):
    clients, weights = normal_clients(), torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    return Case((clients, weights), lambda: spread_price(clients, weights))


# ----- guides: extract, fuse_posteriors, init_to_fused, FusedPrior, PosteriorPrior -----------

K = 3
DATA = torch.tensor([[-3.0, 0.0], [-2.5, 0.5], [0.0, 3.0], [0.5, 2.5], [3.0, -1.0], [2.0, -1.5]])


def mixture_model(K=K, data=None):
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
    with pyro.plate("components", K):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 10.0).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    noise = pyro.sample("noise", dist.Gamma(2.0, 2.0))
    if data is not None:
        spread = (scale + noise).unsqueeze(-1)
        log_lik = dist.Normal(loc, spread).log_prob(data.unsqueeze(-2)).sum(-1) + weights.log()
        pyro.factor("obs", log_lik.logsumexp(-1).sum())


def train(guide, seed, steps=3):
    pyro.set_rng_seed(seed)
    svi = SVI(mixture_model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(steps):
        svi.step(K, DATA)
    return guide


EXTRACT_KWARGS = dict(components={"loc": 0, "scale": 0}, simplex={"weights": [0]})


def client_posteriors(num_clients=2):
    """Clients' AutoNormal guides, each trained in its own param store, as GuidePosteriors."""
    posts = []
    for j in range(num_clients):
        with pyro.get_param_store().scope():
            guide = train(AutoNormal(mixture_model), seed=j)
            posts.append(extract(guide, K, DATA, weight=10.0 + j, **EXTRACT_KWARGS))
    return posts


def fused_posterior():
    return fuse_posteriors(client_posteriors(), price=1e4).posterior  # one global per client component


@case("extract-autonormal")
def _(tmp_path):
    guide = train(AutoNormal(mixture_model), seed=0)  # in the global param store
    return Case(guide, lambda: extract(guide, K, DATA, weight=6.0, **EXTRACT_KWARGS))


@case("extract-autodelta")
def _(tmp_path):
    guide = train(AutoDelta(mixture_model), seed=0)
    return Case(guide, lambda: extract(guide, point_scale=0.1, **EXTRACT_KWARGS))


@case("fuse_posteriors")
def _(tmp_path):
    posts = client_posteriors()
    return Case(posts, lambda: fuse_posteriors(posts, [1.0, 2.0], direction="forward"))


@case("fuse_posteriors-guides")
def _(tmp_path):
    guide = train(AutoNormal(mixture_model), seed=0)

    def run():  # read, fused and written back into a guide of the global model
        return fuse_posteriors([guide, guide], model=mixture_model, model_args=lambda k: (k, DATA), **EXTRACT_KWARGS)

    return Case(guide, run)


@case("fuse_gmms")
def _(tmp_path):
    guides = [fit_gmm(torch.randn(20, 2) + 4.0 * j, 2, num_steps=3, seed=j) for j in range(2)]
    posts = [extract(guides[0], **gmm_sites()), guides[1]]  # a read client and a guide
    return Case((posts, guides), lambda: fuse_gmms(posts, [20.0, 30.0]))


@case("init_to_fused")
def _(tmp_path):
    fused = fused_posterior()

    def run():
        init = init_to_fused(fused)
        with pyro.get_param_store().scope():  # a new guide from it, trained in place
            guide = train(AutoNormal(mixture_model, init_loc_fn=init), seed=1, steps=2)
        return guide

    return Case(fused, run)


@case("FusedPosterior.to_guide")
def _(tmp_path):
    fused = fused_posterior()

    def run():
        guide = fused.to_guide(mixture_model, K, DATA)
        train(guide, seed=1, steps=2)
        return guide

    return Case(fused, run)


def traced_values(model, *args):
    """Sample values of a trace of ``model`` (the prior messengers' output)."""
    trace = poutine.trace(model).get_trace(*args)
    trace.log_prob_sum()
    return {n: s["value"] for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}


@case("FusedPrior")
def _(tmp_path):
    fused = fused_posterior()

    def run():
        model = FusedPrior(fused)(mixture_model)
        values = traced_values(model, K, DATA)
        with pyro.get_param_store().scope():
            guide = AutoNormal(model)
            SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO()).step(K, DATA)
        return values

    return Case(fused, run)


# ----- BNN ---------------------------------------------------------------------------------


def random_posterior(widths, seed, in_features=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    model = BayesianMLP(in_features, widths, classes)
    return {
        name: dist.Normal(torch.randn(shape, generator=g), 0.05 + 0.2 * torch.rand(shape, generator=g))
        for name, shape in model.site_shapes().items()
    }


def bnn_data(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(3, (n,), generator=g)


for _name, _kwargs in [
    ("plain", {}),
    ("point_scale", {"point_scale": 1.0}),
    ("class_counts", {"class_counts": [[5, 3, 0], [0, 2, 6]]}),
]:

    @case(f"fuse_mlps-{_name}")
    def _(tmp_path, kwargs=_kwargs):
        posts = [random_posterior((3, 2), 0), random_posterior((2, 3), 1)]
        kwargs = {k: torch.tensor(v, dtype=torch.float64) if k == "class_counts" else v for k, v in kwargs.items()}
        weights = torch.tensor([8.0, 4.0])
        return Case((posts, weights, kwargs), lambda: bnn_adapter.fuse_mlps(posts, weights, **kwargs))


@case("bnn.naive_average")
def _(tmp_path):
    posts, weights = [random_posterior((3,), 0), random_posterior((3,), 1)], torch.tensor([1.0, 3.0])
    return Case((posts, weights), lambda: bnn_adapter.naive_average(posts, weights))


@case("normal_posterior")
def _(tmp_path):
    x, y = bnn_data()
    model = BayesianMLP(4, (3,), 3)
    guide = AutoNormal(model)
    train_svi(model, guide, x, y, num_epochs=1, batch_size=8)
    guide(x, y)  # its parameters are in the global param store too
    return Case((model, guide), lambda: normal_posterior(guide))


@case("normal_guide")
def _(tmp_path):
    model, posterior = BayesianMLP(4, (3,), 3), random_posterior((3,), 0)
    return Case((model, posterior), lambda: normal_guide(model, posterior))


@case("delta_guide")
def _(tmp_path):
    model = BayesianMLP(4, (3,), 3)
    values = {name: d.loc for name, d in random_posterior((3,), 0).items()}
    return Case((model, values), lambda: delta_guide(model, values))


@case("PosteriorPrior")
def _(tmp_path):
    posterior, model, (x, y) = random_posterior((3,), 0), BayesianMLP(4, (3,), 3), bnn_data()

    def run():
        prior_model = PosteriorPrior(posterior)(model)
        values = traced_values(prior_model, x, y)
        guide = AutoNormal(model)
        train_svi(prior_model, guide, x, y, num_epochs=1, batch_size=8)
        return values

    return Case((posterior, model, x, y), run)


# ----- HMM ---------------------------------------------------------------------------------

_HMM_CACHE: Dict[str, Any] = {}


def two_state_sequence(num_steps, seed, dim=2):
    g = torch.Generator().manual_seed(seed)
    states = (torch.arange(num_steps) // 8) % 2
    means = torch.tensor([-2.0, 2.0])[states, None].expand(-1, dim)
    return means + 0.3 * torch.randn(num_steps, dim, generator=g)


def hmm_fits():
    """Two small trained clients (cached: fitting is the slow part; each test checks its
    own snapshot, so a fit a buggy call changed would still be reported there)."""
    if "fits" not in _HMM_CACHE:
        _HMM_CACHE["fits"] = [
            fit_gaussian_hmm([two_state_sequence(32, seed)], num_states=3, num_steps=15, seed=seed)
            for seed in (0, 1)
        ]
    return _HMM_CACHE["fits"]


def hmm_params():
    """A float64 global HMM, as float64 as the sequences (no dtype conversion copies)."""
    return HMMParams(
        init=torch.tensor([0.6, 0.4], dtype=torch.float64),
        trans=torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64),
        loc=torch.tensor([[-2.0, -2.0], [2.0, 2.0]], dtype=torch.float64),
        scale=torch.full((2, 2), 0.5, dtype=torch.float64),
    )


def hmm_sequences():
    """Two clients' float64 sequences."""
    return [
        [two_state_sequence(20, 3).double()],
        [two_state_sequence(12, 4).double(), two_state_sequence(5, 5).double()],
    ]


@case("fuse_hmms")
def _(tmp_path):
    fits, prior = hmm_fits(), HMMPrior()
    return Case((fits, prior), lambda: hmm_adapter.fuse_hmms(fits, prior=prior, restarts=2))


@case("fuse_hmms-spread")
def _(tmp_path):
    fits = hmm_fits()
    return Case(fits, lambda: hmm_adapter.fuse_hmms(fits, price="spread", restarts=2))


@case("hmm_statistics")
def _(tmp_path):
    params, sequences = hmm_params(), hmm_sequences()[1]
    return Case((params, sequences), lambda: hmm_adapter.hmm_statistics(params, sequences))


@case("em_update")
def _(tmp_path):
    params = hmm_params()
    stats = [hmm_adapter.hmm_statistics(params, s) for s in hmm_sequences()]
    # one state under min_occupancy keeps its emission parameters
    return Case((params, stats), lambda: hmm_adapter.em_update(params, stats, min_occupancy=18.0))


@case("em_update-one-client")
def _(tmp_path):
    params = hmm_params()
    stats = [hmm_adapter.hmm_statistics(params, hmm_sequences()[0])]
    return Case((params, stats), lambda: hmm_adapter.em_update(params, stats))


for _rounds in (0, 2):

    # with rounds=0 the starting HMM itself comes back (tests/test_hmm.py pins
    # ``refine_hmm(start, clients, rounds=0) == (start, [])``), so only its inputs are checked
    @case(f"refine_hmm-{_rounds}-rounds")
    def _(tmp_path, rounds=_rounds):
        params, sequences = hmm_params(), hmm_sequences()
        run = lambda: hmm_adapter.refine_hmm(params, sequences, num_rounds=rounds)  # noqa: E731
        return Case((params, sequences), run, fresh=rounds > 0)


# ----- LDA ---------------------------------------------------------------------------------


def corpus(vocab, seed, num_docs=12):
    g = torch.Generator().manual_seed(seed)
    return Corpus(torch.randint(0, 4, (num_docs, len(vocab)), generator=g).float(), tuple(vocab))


def dirichlet_ldas():
    """Two clients over different vocabularies (their parameters in the global store)."""
    models = []
    for j, vocab in enumerate([("ant", "bee", "cat", "dog", "eel"), ("cat", "dog", "eel", "fox")]):
        model = LDA(2, vocab, hidden=4, name=f"client{j}")
        model.fit(corpus(vocab, j), num_steps=3, batch_size=8, seed=j)
        models.append(model)
    return models


def autonormal_ldas():
    """Two AutoNormal clients over one vocabulary, trained one after the other."""
    vocab = ("ant", "bee", "cat", "dog")
    models = []
    for j in range(2):
        model = LDA(2, vocab, hidden=4, name=f"client{j}")
        model.fit(corpus(vocab, j), guide=model.autonormal_guide(), num_steps=2, batch_size=8, seed=j)
        models.append(model)
    return models


@case("fuse_lda-dirichlet")
def _(tmp_path):
    models, weights = dirichlet_ldas(), torch.tensor([2.0, 1.0])
    return Case((models, weights), lambda: lda_adapter.fuse_lda(models, weights))


@case("fuse_lda-autonormal")
def _(tmp_path):
    models = autonormal_ldas()
    return Case(models, lambda: lda_adapter.fuse_lda(models, num_global=2, direction="forward"))


@case("topic_components-dirichlet")
def _(tmp_path):
    model = dirichlet_ldas()[1]
    union = ("ant", "bee", "cat", "dog", "eel", "fox")
    return Case(model, lambda: lda_adapter.topic_components(model, union))


@case("topic_components-autonormal")
def _(tmp_path):
    model = autonormal_ldas()[0]
    return Case(model, lambda: lda_adapter.topic_components(model))


@case("lda.average_topics_by_index")
def _(tmp_path):
    models = dirichlet_ldas()
    union = lda_adapter.union_vocabulary([m.vocab for m in models])
    return Case(models, lambda: lda_adapter.average_topics_by_index(models, union))


# ----- io ----------------------------------------------------------------------------------


@case("save_components")
def _(tmp_path):
    comps = mixed_clients()[0]
    return Case(comps, lambda: save_components(comps, str(tmp_path / "c.safetensors"), {"who": "me"}))


for _kind in ("guide", "fused"):

    @case(f"save_posterior-{_kind}")
    def _(tmp_path, kind=_kind):
        post = client_posteriors(1)[0] if kind == "guide" else fused_posterior()
        return Case(post, lambda: save_posterior(post, str(tmp_path / "p.safetensors")))

    # encode_posterior returns zero-copy views of the posterior's tensors for immediate
    # serialisation (safetensors, Flower arrays), so only the inputs are checked
    @case(f"encode_posterior-{_kind}")
    def _(tmp_path, kind=_kind):
        post = client_posteriors(1)[0] if kind == "guide" else fused_posterior()
        return Case(post, lambda: encode_posterior(post), fresh=False)


# ----- scoring helpers: they only read -------------------------------------------------------


def two_point_sets():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)


def two_labelings():
    return torch.tensor([0, 0, 1, 1, 2, 2, 2]), torch.tensor([1, 1, 0, 0, 0, 2, 2])


for _name, _inputs in [
    ("hausdorff", two_point_sets),
    ("ot_distance", two_point_sets),
    ("contingency_table", two_labelings),
    ("match_labels", two_labelings),
    ("best_matching_accuracy", two_labelings),
    ("adjusted_rand_index", two_labelings),
]:

    @case(f"metrics.{_name}")
    def _(tmp_path, metric=getattr(metrics, _name), inputs=_inputs):
        a, b = inputs()
        return Case((a, b), lambda: metric(a, b))


@case("predictive_probs")
def _(tmp_path):
    model, posterior, (x, _) = BayesianMLP(4, (3,), 3), random_posterior((3,), 0), bnn_data()
    return Case((model, posterior, x), lambda: predictive_probs(model, posterior, x, num_samples=4))


@case("evaluate")
def _(tmp_path):
    probs, labels = torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 2, 0])
    return Case((probs, labels), lambda: evaluate(probs, labels))


@case("decode")
def _(tmp_path):
    params, x = hmm_params(), hmm_sequences()[0][0]
    return Case((params, x), lambda: decode(params, x))


@case("forward_backward")
def _(tmp_path):
    params, x = hmm_params(), hmm_sequences()[0][0]
    log_init, log_trans, log_obs = params.init.log(), params.trans.log(), params.emission_log_prob(x)
    return Case((log_init, log_trans, log_obs), lambda: forward_backward(log_init, log_trans, log_obs))


@case("fit_gaussian_hmm")
def _(tmp_path):
    sequences = hmm_sequences()[0]
    return Case(sequences, lambda: fit_gaussian_hmm(sequences, num_states=2, num_steps=3))


def topics_and_counts(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    topics = torch.distributions.Dirichlet(torch.ones(3, 6, dtype=dtype)).sample()
    return topics, torch.randint(0, 4, (5, 6), generator=g).to(dtype)


@case("topic_word_matrix")
def _(tmp_path):
    posterior = dist.Dirichlet(torch.rand(3, 6) + 0.5)
    return Case(posterior, lambda: topic_word_matrix(posterior))


@case("top_words")
def _(tmp_path):
    topics, vocab = topics_and_counts()[0], ["a", "b", "c", "d", "e", "f"]
    return Case((topics, vocab), lambda: top_words(topics, vocab, n=2))


@case("fit_doc_topics")
def _(tmp_path):
    topics, counts = topics_and_counts()
    return Case((topics, counts), lambda: fit_doc_topics(topics, counts, doc_prior=0.1))


@case("fold_in")
def _(tmp_path):
    topics, counts = topics_and_counts()
    return Case((topics, counts), lambda: fold_in(topics, counts))


@case("split_halves")
def _(tmp_path):
    counts = topics_and_counts()[1]
    return Case(counts, lambda: split_halves(counts))


@case("document_completion")
def _(tmp_path):
    topics, counts = topics_and_counts()
    return Case((topics, counts), lambda: document_completion(topics, counts))


@case("umass_coherence")
def _(tmp_path):
    topics, counts = topics_and_counts()
    return Case((topics, counts), lambda: umass_coherence(topics, counts, top_n=4))


# ----- the test ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_untouched(name, tmp_path):
    # a parameter of the caller's own: nothing may delete, replace or modify it
    pyro.param("caller.sentinel", torch.arange(3.0))
    c = CASES[name](tmp_path)
    inputs = {"inputs": c.inputs, "param_store": PARAM_STORE}
    before = snapshot(inputs)
    result = c.run()
    assert_unchanged(before, inputs)
    if c.fresh:
        assert_no_alias(before, result)


def test_every_public_name_is_covered():
    """Each function exported by ``pyro_fusion`` has a case (classes are covered by theirs)."""
    covered = {name.split("-")[0].split(".")[0] for name in CASES}
    functions = {n for n in pyro_fusion.__all__ if callable(getattr(pyro_fusion, n)) and n[0].islower()}
    functions -= {"load_components", "load_result"}  # read files, take no caller objects
    assert functions <= covered, functions - covered
