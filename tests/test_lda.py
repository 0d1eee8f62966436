import doctest
import math
import os
import re
import runpy

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_fusion.metrics.topics
import pyro_fusion.models.lda
from pyro_fusion.adapters.lda import (
    align_concentration,
    average_topics_by_index,
    fuse_lda,
    topic_components,
    union_vocabulary,
)
from pyro_fusion.datasets.ap import load_ap
from pyro_fusion.datasets.brown import load_brown
from pyro_fusion.datasets import Corpus
from pyro_fusion.metrics.topics import (
    document_completion,
    fold_in,
    split_halves,
    topic_word_matrix,
    top_words,
    umass_coherence,
)
from pyro_fusion.models.lda import LDA, expected_log, fit_doc_topics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_corpus(num_docs=60, num_topics=4, vocab_size=40, words_per_doc=80, seed=0):
    """Documents drawn from LDA with sparse, well separated true topics; returns (corpus, true topics)."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.full((num_topics, vocab_size), 0.02)
    block = vocab_size // num_topics
    for k in range(num_topics):
        topics[k, k * block : (k + 1) * block] = 1.0
    topics = topics / topics.sum(-1, keepdim=True)
    theta = torch.distributions.Dirichlet(torch.full((num_topics,), 0.3)).sample((num_docs,))
    probs = theta @ topics
    counts = torch.stack(
        [
            torch.bincount(torch.multinomial(p, words_per_doc, True, generator=g), minlength=vocab_size)
            for p in probs
        ]
    ).float()
    return Corpus(counts, tuple(f"w{i:02d}" for i in range(vocab_size))), topics


# ----- data ----------------------------------------------------------------------------------


def test_load_brown_shapes():
    brown = load_brown()
    assert brown.counts.shape == (500, len(brown.vocab))
    assert len(brown.label_names) == 15 and "news" in brown.label_names
    assert brown.labels.shape == (500,) and int(brown.labels.max()) == 14
    assert torch.equal(brown.counts, brown.counts.round()) and (brown.counts.sum(-1) > 0).all()
    assert len(set(brown.vocab)) == len(brown.vocab)
    assert int((brown.labels == brown.label_names.index("news")).sum()) == 44


def test_load_ap_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not shipped"):
        load_ap(str(tmp_path))


def test_load_ap_lda_c(tmp_path):
    (tmp_path / "vocab.txt").write_text("apple\npear\nplum\n")
    (tmp_path / "ap.dat").write_text("2 0:3 2:1\n1 1:2\n")
    ap = load_ap(str(tmp_path))
    assert ap.vocab == ("apple", "pear", "plum")
    assert torch.equal(ap.counts, torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("line", ["3 0:3 2:1", "2 0:3 9:1", "2 0:x 1:1"])
def test_load_ap_malformed(tmp_path, line):
    (tmp_path / "vocab.txt").write_text("apple\npear\nplum\n")
    (tmp_path / "ap.dat").write_text(line + "\n")
    with pytest.raises(ValueError, match="ap.dat"):
        load_ap(str(tmp_path))


# ----- vocabulary alignment ----------------------------------------------------------------------


def test_union_and_reindex():
    a = Corpus(torch.tensor([[1.0, 2.0, 0.0]]), ("cat", "dog", "eel"))
    b = Corpus(torch.tensor([[5.0, 1.0]]), ("ant", "dog"))
    union = union_vocabulary([a.restrict_vocabulary().vocab, b.vocab])
    assert union == ("ant", "cat", "dog")
    assert torch.equal(a.reindex(union).counts, torch.tensor([[0.0, 1.0, 2.0]]))
    assert torch.equal(b.reindex(union).counts, torch.tensor([[5.0, 0.0, 1.0]]))


def test_align_concentration_fills_prior():
    conc = torch.tensor([[4.0, 2.0], [1.0, 3.0]])
    before = conc.clone()
    aligned = align_concentration(conc, ("dog", "ant"), ("ant", "cat", "dog"), 0.05)
    assert torch.equal(aligned, torch.tensor([[2.0, 0.05, 4.0], [3.0, 0.05, 1.0]]))
    assert torch.equal(conc, before)
    with pytest.raises(ValueError, match="union vocabulary"):
        align_concentration(conc, ("dog", "yak"), ("ant", "dog"), 0.05)


# ----- training and extraction -------------------------------------------------------------------


@pytest.mark.parametrize(
    "guide_kind,natural", [("dirichlet", True), ("dirichlet", False), ("autonormal", False)]
)
def test_fit_and_extract(guide_kind, natural):
    corpus, _ = synthetic_corpus(num_docs=30, vocab_size=24)
    lda = LDA(3, corpus.vocab, name="client")
    guide = lda.dirichlet_guide if guide_kind == "dirichlet" else lda.autonormal_guide()
    losses = lda.fit(corpus, guide=guide, num_steps=15, batch_size=16, natural_gradient=natural)
    assert len(losses) == 15 and all(torch.isfinite(torch.tensor(losses)))
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    comps = topic_components(lda)
    assert {k: v.detach() for k, v in pyro.get_param_store().items()}.keys() == store.keys()
    for k, v in pyro.get_param_store().items():
        assert torch.equal(v.detach(), store[k])
    posterior = comps.distributions()["topic_words"]
    if guide_kind == "dirichlet":
        assert isinstance(posterior, torch.distributions.Dirichlet)
        assert torch.allclose(posterior.concentration, pyro.param("client.topic_concentration").detach())
        assert posterior.concentration.shape == (3, 24)
    else:
        base = posterior.base_dist if isinstance(posterior, torch.distributions.Independent) else posterior
        assert torch.allclose(base.loc, guide[0].locs.topic_words.detach())
        assert torch.allclose(base.scale, guide[0].scales.topic_words.detach())
        assert base.loc.shape == (3, 23)
    phi = lda.topic_word_matrix()
    assert phi.shape == (3, 24) and torch.allclose(phi.sum(-1), torch.ones(3), atol=1e-4)


def test_autonormal_needs_shared_vocabulary():
    corpus, _ = synthetic_corpus(num_docs=10, vocab_size=12)
    lda = LDA(2, corpus.vocab)
    lda.fit(corpus, guide=lda.autonormal_guide(), num_steps=2)
    with pytest.raises(ValueError, match="shared vocabulary"):
        topic_components(lda, union_vocabulary([corpus.vocab, ("zebra",)]))


def test_autonormal_clients_in_one_store_keep_their_own_parameters():
    corpus, _ = synthetic_corpus(num_docs=20, vocab_size=12)
    first, second = LDA(2, corpus.vocab, name="first"), LDA(2, corpus.vocab, name="second")
    first.fit(corpus, guide=first.autonormal_guide(), num_steps=5, seed=0)
    trained = first.topic_posterior().loc.clone()
    second.fit(corpus, guide=second.autonormal_guide(), num_steps=5, seed=1)
    assert torch.equal(first.guide[0].locs.topic_words.detach(), trained)
    assert not torch.equal(second.topic_posterior().loc, trained)
    assert "first.guide.0.locs.topic_words" in pyro.get_param_store()


@pytest.mark.parametrize("autonormal", [False, True])
def test_models_with_default_names_train_side_by_side(autonormal):
    """Two LDA(K, vocab) of different sizes without names: each gets its own parameter names, so the
    second fit neither fails on the first one's shapes nor overwrites them."""
    corpus, _ = synthetic_corpus(num_docs=20, vocab_size=12)
    first, second = LDA(2, corpus.vocab), LDA(3, corpus.vocab)
    assert first.name != second.name
    for lda, seed in ((first, 0), (second, 1)):
        lda.fit(corpus, guide=lda.autonormal_guide() if autonormal else None, num_steps=3, seed=seed)
    assert first.topic_word_matrix().shape == (2, 12) and second.topic_word_matrix().shape == (3, 12)
    assert LDA(2, corpus.vocab, name="client").name == "client"


def test_switching_guides():
    """An AutoNormal guide, then the Dirichlet guide (by fit and by load_topic_posterior), then
    a warm start of an AutoNormal guide from a fused-like Normal posterior."""
    corpus, _ = synthetic_corpus(num_docs=20, vocab_size=12)
    lda = LDA(2, corpus.vocab)
    lda.fit(corpus, guide=lda.autonormal_guide(), num_steps=2)
    normal = lda.topic_posterior()
    lda.fit(corpus, num_steps=2)
    assert isinstance(lda.topic_posterior(), dist.Dirichlet)
    lda.load_topic_posterior(normal)
    assert torch.equal(lda.guide[0].locs.topic_words.detach(), normal.loc)
    lda.fit(corpus, guide=lda.guide, num_steps=1)
    lda.load_topic_posterior(dist.Dirichlet(torch.ones(2, 12)))
    assert lda.guide == lda.dirichlet_guide


def test_untrained_model_raises():
    with pytest.raises(ValueError, match="not been trained"):
        topic_components(LDA(2, ("a", "b", "c")))


def test_fit_rejects_other_vocabulary():
    corpus, _ = synthetic_corpus(num_docs=5, vocab_size=8)
    with pytest.raises(ValueError, match="vocabulary"):
        LDA(2, corpus.vocab[:-1]).fit(corpus, num_steps=1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_steps=0), "num_steps and batch_size must be positive, got 0 and 128"),
        (dict(batch_size=0), "num_steps and batch_size must be positive, got 1 and 0"),
        (dict(learning_offset=-1.0), "learning_offset must be >= 0, got -1.0"),
        (dict(prior=dist.Dirichlet(torch.ones(3, 8))), "prior must be a Dirichlet over (2, 8) topics"),
        (dict(prior=dist.Dirichlet(torch.ones(2, 8)), natural_gradient=False), "a prior posterior needs the"),
    ],
)
def test_fit_refuses_bad_options(kwargs, message):
    corpus, _ = synthetic_corpus(num_docs=5, vocab_size=8)
    lda = LDA(2, corpus.vocab, name="bad")
    with pytest.raises(ValueError, match="LDA 'bad': " + re.escape(message)):
        lda.fit(corpus, **{"num_steps": 1, **kwargs})
    assert "bad.topic_concentration" not in pyro.get_param_store()


def coordinate_ascent(exp_log_topics, counts, doc_prior, num_iters):
    """The local step of variational LDA on dense matrices, a fixed number of sweeps (the reference)."""
    num_topics = exp_log_topics.shape[0]
    gamma = doc_prior + counts.sum(-1, keepdim=True).expand(-1, num_topics) / num_topics
    for _ in range(num_iters):
        exp_log_doc = expected_log(gamma).exp()
        ratio = torch.where(counts > 0, counts / (exp_log_doc @ exp_log_topics), torch.zeros_like(counts))
        gamma = doc_prior + exp_log_doc * (ratio @ exp_log_topics.T)
    return gamma


@pytest.mark.parametrize("num_topics", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_doc_topics_is_coordinate_ascent(num_topics, dtype):
    corpus, _ = synthetic_corpus(num_docs=12, vocab_size=20)
    counts = corpus.counts.to(dtype)
    counts[3] = 0.0  # an empty document keeps the prior
    exp_log_topics = expected_log(torch.rand(num_topics, 20, dtype=dtype) * 5 + 0.1).exp()
    reference = coordinate_ascent(exp_log_topics.double(), counts.double(), 0.1, num_iters=2000)
    gamma = fit_doc_topics(exp_log_topics, counts, 0.1, num_iters=2000, tol=1e-9)
    assert gamma.dtype == dtype
    torch.testing.assert_close(gamma.double(), reference, rtol=1e-4 if dtype == torch.float32 else 1e-7, atol=1e-5)
    assert torch.allclose(gamma[3].double(), torch.full((num_topics,), 0.1, dtype=torch.float64))
    # every document stops once a sweep changes its gamma by less than tol on average (nearly flat topics
    # converge slowly: allow enough sweeps)
    gamma = fit_doc_topics(exp_log_topics.double(), counts.double(), 0.1, num_iters=5000, tol=1e-3)
    one_more = coordinate_ascent_from(gamma, exp_log_topics.double(), counts.double(), 0.1)
    assert bool(((one_more - gamma).abs().mean(-1) < 1e-3).all())


def coordinate_ascent_from(gamma, exp_log_topics, counts, doc_prior):
    exp_log_doc = expected_log(gamma).exp()
    ratio = torch.where(counts > 0, counts / (exp_log_doc @ exp_log_topics), torch.zeros_like(counts))
    return doc_prior + exp_log_doc * (ratio @ exp_log_topics.T)


@pytest.mark.parametrize("with_prior", [False, True])
def test_online_step_is_the_natural_gradient_step(with_prior):
    """With the whole corpus as one batch and rho = 1 (learning_offset=0), one step is the batch VB update:
    the topic prior (or the given prior posterior) plus the expected topic-word counts under the starting
    topics."""
    corpus, _ = synthetic_corpus(num_docs=20, vocab_size=16)
    lda = LDA(3, corpus.vocab, name="online")
    start = torch.rand(3, 16, dtype=torch.float64) * 10 + 0.5
    lda.load_topic_posterior(dist.Dirichlet(start))
    prior = dist.Dirichlet(torch.rand(3, 16, dtype=torch.float64) + 0.5) if with_prior else None
    lda.fit(corpus, num_steps=1, batch_size=len(corpus), learning_offset=0.0, prior=prior)
    exp_log_topics = expected_log(start).exp()
    counts = corpus.counts.double()
    gamma = fit_doc_topics(exp_log_topics, counts, lda.doc_prior)
    exp_log_doc = expected_log(gamma).exp()
    ratio = torch.where(counts > 0, counts / (exp_log_doc @ exp_log_topics), torch.zeros_like(counts))
    expected = (prior.concentration if with_prior else lda.topic_prior) + exp_log_topics * (exp_log_doc.T @ ratio)
    torch.testing.assert_close(lda.topic_posterior().concentration, expected)
    torch.testing.assert_close(pyro.param("online.topic_concentration").detach(), expected)


@pytest.mark.parametrize("learning_offset", [10.0, 1e9])
def test_fit_warm_starts_from_the_loaded_topics(learning_offset):
    corpus, _ = synthetic_corpus(num_docs=20, vocab_size=16)
    lda = LDA(3, corpus.vocab)
    start = torch.rand(3, 16) * 10 + 0.5
    lda.load_topic_posterior(dist.Dirichlet(start))
    lda.fit(corpus, num_steps=1, batch_size=5, learning_offset=learning_offset)
    after = lda.topic_posterior().concentration
    keep = 1 - (learning_offset + 1) ** -0.7  # the weight of the starting topics after one step
    assert bool((after >= keep * start * (1 - 1e-6)).all())
    if learning_offset > 1e6:
        torch.testing.assert_close(after, start, rtol=1e-4, atol=0)


def test_online_vb_recovers_the_true_topics():
    corpus, true_topics = synthetic_corpus(num_docs=200, vocab_size=40, seed=2)
    lda = LDA(4, corpus.vocab)
    losses = lda.fit(corpus, num_steps=40, batch_size=50, seed=0)
    fitted = lda.topic_word_matrix()
    # every true topic has a fitted one within a small total-variation distance
    distance = (true_topics.unsqueeze(1) - fitted.unsqueeze(0)).abs().sum(-1) / 2
    assert distance.min(1).values.max() < 0.15
    assert sum(losses[-5:]) < sum(losses[:5])


# ----- fusion ------------------------------------------------------------------------------------


@pytest.mark.parametrize("guide_kind", ["dirichlet", "autonormal"])
@pytest.mark.parametrize("num_clients", [2, 4])
def test_identical_clients_fuse_back(guide_kind, num_clients):
    corpus, _ = synthetic_corpus(num_docs=30, vocab_size=24)
    lda = LDA(3, corpus.vocab)
    guide = lda.dirichlet_guide if guide_kind == "dirichlet" else lda.autonormal_guide()
    lda.fit(corpus, guide=guide, num_steps=20, batch_size=16)
    fused = fuse_lda([lda] * num_clients)
    result, fused = fused.result, fused.model
    assert result.num_global == 3
    assert result.support.tolist() == [num_clients] * 3
    original = lda.topic_posterior()
    back = fused.topic_posterior()
    perm = result.assignments[0]
    if guide_kind == "dirichlet":
        assert torch.allclose(back.concentration[perm], original.concentration, rtol=1e-4)
        assert torch.allclose(
            pyro.param("fused.topic_concentration").detach()[perm], original.concentration, rtol=1e-4
        )
    else:
        assert torch.allclose(back.loc[perm], original.loc, atol=1e-4)
        assert torch.allclose(back.scale[perm], original.scale, rtol=1e-3)
        assert torch.allclose(fused.guide[0].locs.topic_words.detach()[perm], original.loc, atol=1e-4)
        assert torch.allclose(fused.guide[0].scales.topic_words.detach()[perm], original.scale, rtol=1e-3)


def test_fused_guide_warm_starts():
    corpus, _ = synthetic_corpus(num_docs=30, vocab_size=24)
    lda = LDA(3, corpus.vocab)
    lda.fit(corpus, num_steps=20, batch_size=16)
    fused = fuse_lda([lda, lda]).model
    losses = fused.fit(corpus.reindex(fused.vocab), num_steps=3, natural_gradient=False)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_different_vocabularies_end_to_end():
    corpus, true_topics = synthetic_corpus(num_docs=160, vocab_size=40, seed=1)
    test, train = corpus.subset(torch.arange(40)), corpus.subset(torch.arange(40, 160))
    clients = [train.subset(torch.arange(j, 120, 3)).restrict_vocabulary() for j in range(3)]
    # drop different words from each client, so the vocabularies differ
    clients = [Corpus(c.counts[:, j:], c.vocab[j:]).restrict_vocabulary() for j, c in enumerate(clients)]
    models = []
    for j, c in enumerate(clients):
        m = LDA(4, c.vocab, name=f"c{j}")
        m.fit(c, num_steps=60, batch_size=20)
        models.append(m)
    fused = fuse_lda(models, weights=[c.num_words for c in clients])
    result, fused = fused.result, fused.model
    assert fused.vocab == union_vocabulary([c.vocab for c in clients])
    test_counts = test.reindex(fused.vocab).counts
    fused_ll = document_completion(fused.topic_word_matrix(), test_counts)
    local_ll = [
        document_completion(
            topic_word_matrix(topic_components(m, fused.vocab).distributions()["topic_words"]), test_counts
        )
        for m in models
    ]
    naive = topic_word_matrix(average_topics_by_index(models, fused.vocab).distributions()["topic_words"])
    assert fused_ll > max(local_ll)
    assert fused_ll >= document_completion(naive, test_counts) - 1e-6
    assert 4 <= result.num_global <= 12


# ----- metrics -----------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**16), num_docs=st.integers(1, 6), vocab_size=st.integers(1, 8))
@settings(max_examples=30, deadline=None)
def test_split_halves(seed, num_docs, vocab_size):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 5, (num_docs, vocab_size), generator=g).float()
    a, b = split_halves(counts, seed=seed)
    assert torch.equal(a + b, counts)
    assert torch.equal(a.sum(-1), (counts.sum(-1) / 2).floor())
    assert (a >= 0).all() and (b >= 0).all()
    assert torch.equal(split_halves(counts, seed=seed)[0], a)


def em_fold_in(topics, counts, doc_prior, num_iters):
    """Plain EM for the MAP topic proportions on dense matrices (the reference)."""
    theta = torch.full((counts.shape[0], topics.shape[0]), 1.0 / topics.shape[0], dtype=topics.dtype)
    for _ in range(num_iters):
        ratio = torch.where(counts > 0, counts / (theta @ topics), torch.zeros_like(counts))
        theta = theta * (ratio @ topics.T) + doc_prior
        theta = theta / theta.sum(-1, keepdim=True)
    return theta


@pytest.mark.parametrize("num_topics", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_in_reaches_the_em_fixed_point(num_topics, dtype):
    g = torch.Generator().manual_seed(num_topics)
    topics = torch.distributions.Dirichlet(torch.full((num_topics, 15), 0.3, dtype=dtype)).sample()
    counts = (torch.randint(0, 4, (9, 15), generator=g) * (torch.rand(9, 15, generator=g) < 0.5)).to(dtype)
    counts[4] = 0.0  # an empty document gets the prior's mode, uniform proportions
    reference = em_fold_in(topics.double(), counts.double(), 0.1, num_iters=3000)
    theta = fold_in(topics, counts, doc_prior=0.1, num_iters=1000, tol=1e-9 if dtype == torch.float64 else 1e-6)
    assert theta.dtype == dtype
    torch.testing.assert_close(theta.double(), reference, rtol=0, atol=1e-7 if dtype == torch.float64 else 1e-4)
    # a budget of one EM-map evaluation is one plain EM step from uniform proportions
    one_step = em_fold_in(topics.double(), counts.double(), 0.1, num_iters=1)
    torch.testing.assert_close(fold_in(topics, counts, num_iters=1).double(), one_step, rtol=1e-5, atol=1e-6)


def test_document_completion_matches_dense_reference():
    corpus, true_topics = synthetic_corpus(num_docs=12, vocab_size=20)
    observed, scored = split_halves(corpus.counts.double(), seed=5)
    theta = em_fold_in(true_topics.double(), observed, 0.1, num_iters=3000)
    expected = float((scored * (theta @ true_topics.double()).log()).sum() / scored.sum())
    assert document_completion(true_topics, corpus.counts, seed=5) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("function", [fold_in, document_completion])
def test_evaluation_refuses_mismatched_vocabularies(function):
    with pytest.raises(ValueError, match=function.__name__ + r": expected topics \[K, V\] and counts \[D, V\]"):
        function(torch.full((2, 4), 0.25), torch.ones(3, 5))


def test_document_completion_prefers_true_topics():
    corpus, true_topics = synthetic_corpus(num_docs=40)
    uniform = torch.full_like(true_topics, 1.0 / true_topics.shape[1])
    assert document_completion(true_topics, corpus.counts) > document_completion(uniform, corpus.counts) + 0.1


def test_umass_prefers_true_topics():
    corpus, true_topics = synthetic_corpus(num_docs=80)
    shuffled = true_topics[:, torch.randperm(true_topics.shape[1])]
    assert umass_coherence(true_topics, corpus.counts, top_n=5) > umass_coherence(
        shuffled, corpus.counts, top_n=5
    )


def test_top_n_beyond_the_vocabulary_is_refused():
    topics, vocab, counts = torch.full((2, 3), 1.0 / 3), ["a", "b", "c"], torch.ones(4, 3)
    assert [len(words) for words in top_words(topics, vocab, n=3)] == [3, 3]
    # every word in all 4 documents: each of the 3 pairs scores log((4 + 1) / 4)
    assert umass_coherence(topics, counts, top_n=3) == pytest.approx(3 * math.log(5 / 4))
    with pytest.raises(ValueError, match=r"top_words: n=4 must be in \[1, 3\]"):
        top_words(topics, vocab, n=4)
    with pytest.raises(ValueError, match=r"umass_coherence: top_n=0 must be in \[1, 3\]"):
        umass_coherence(topics, counts, top_n=0)


@pytest.mark.parametrize("module", [pyro_fusion.metrics.topics, pyro_fusion.models.lda])
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0


# ----- tutorial ------------------------------------------------------------------------------------


def test_tutorial_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYRO_FUSION_SMALL", "1")
    monkeypatch.setenv("PYRO_FUSION_OUTPUT", str(tmp_path))
    runpy.run_path(os.path.join(ROOT, "tutorials", "lda_topics.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "global topics" in out and "fused" in out
    assert (tmp_path / "lda_support.png").stat().st_size > 0
