import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyro_fusion.sparse_counts
from pyro_fusion.sparse_counts import SparseCounts

pytestmark = pytest.mark.usefixtures("one_thread")


def random_counts(num_docs, vocab_size, seed, dtype=torch.float64, empty_doc=False):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (num_docs, vocab_size), generator=g).to(dtype)
    counts = counts * (torch.rand(num_docs, vocab_size, generator=g) < 0.4)  # mostly zeros, like text
    if empty_doc:
        counts[num_docs // 2] = 0.0
    return counts


@given(
    num_docs=st.integers(1, 7),
    vocab_size=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    empty_doc=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_layout_round_trip_and_rows(num_docs, vocab_size, seed, empty_doc):
    counts = random_counts(num_docs, vocab_size, seed, empty_doc=empty_doc)
    sparse = SparseCounts.from_dense(counts)
    assert len(sparse) == num_docs and sparse.vocab_size == vocab_size
    assert torch.equal(sparse.to_dense(), counts)
    assert torch.equal(sparse.lengths(), counts.sum(-1))
    assert torch.equal(sparse.transpose().to_dense(), counts.T)
    index = torch.randperm(num_docs, generator=torch.Generator().manual_seed(seed))[: max(1, num_docs // 2)]
    assert torch.equal(sparse.rows(index).to_dense(), counts[index])
    assert torch.equal(sparse.rows(torch.cat([index, index])).to_dense(), counts[torch.cat([index, index])])
    halved = sparse.with_count(sparse.count * (sparse.word % 2 == 0))
    assert torch.equal(halved.without_zeros().to_dense(), halved.to_dense())
    assert bool((halved.without_zeros().count != 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_docs,num_topics,vocab_size", [(1, 1, 3), (6, 3, 11), (20, 12, 40)])
def test_products_match_dense(dtype, num_docs, num_topics, vocab_size):
    counts = random_counts(num_docs, vocab_size, seed=num_topics, dtype=dtype, empty_doc=True)
    sparse = SparseCounts.from_dense(counts)
    left = torch.rand(num_docs, num_topics, dtype=dtype)
    topics = torch.rand(num_topics, vocab_size, dtype=dtype)
    dense_mixture = left @ topics
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    word_topics = topics.T.contiguous()
    torch.testing.assert_close(sparse.mixture(left, word_topics), dense_mixture[sparse.doc, sparse.word], **tol)
    torch.testing.assert_close(sparse.matmul(topics.T), counts @ topics.T, **tol)
    torch.testing.assert_close(sparse.transpose().matmul(left), counts.T @ left, **tol)
    norm, weighted = sparse.mixture_step(left, word_topics)
    ratio = torch.where(counts > 0, counts / dense_mixture, torch.zeros_like(counts))
    torch.testing.assert_close(weighted, left * (ratio @ topics.T), **tol)
    torch.testing.assert_close(norm, dense_mixture[sparse.doc, sparse.word], **tol)


def test_from_dense_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"expected counts \[D, V\], got shape \(3,\)"):
        SparseCounts.from_dense(torch.ones(3))


def test_docstring_examples():
    failures, tried = doctest.testmod(pyro_fusion.sparse_counts, raise_on_error=False)
    assert tried > 0 and failures == 0
