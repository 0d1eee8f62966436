"""
Evaluation of topic models: :func:`document_completion` and :func:`umass_coherence` need only a
topic-word matrix (:func:`topic_word_matrix` of a topic posterior), so local, naively averaged,
fused and pooled models are all scored by the same procedure; :func:`top_words` shows them.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["document_completion", "fold_in", "split_halves", "top_words", "topic_word_matrix", "umass_coherence"]

_TINY = 1e-30


def topic_word_matrix(posterior: torch.distributions.Distribution, num_samples: int = 256) -> Tensor:
    """
    Posterior mean topic-word probabilities ``[K, V]`` of a Dirichlet posterior, or of a Normal posterior of
    the unconstrained coordinates (Monte Carlo mean through the stick-breaking transform).
    """
    if isinstance(posterior, torch.distributions.Dirichlet):
        return posterior.mean
    if isinstance(posterior, torch.distributions.Normal):
        transform = torch.distributions.biject_to(dist.constraints.simplex)
        with torch.no_grad():
            return transform(posterior.sample((num_samples,))).mean(0)
    raise ValueError(f"expected a Dirichlet or Normal topic posterior, got {type(posterior).__name__}")


def split_halves(counts: Tensor, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """
    Split every document's tokens at random into two halves of equal size (``floor`` and ``ceil``).

    :param Tensor counts: ``[D, V]`` integer-valued counts.
    :returns: ``(observed, held_out)``, both ``[D, V]``, summing to ``counts``.
    """
    generator = torch.Generator().manual_seed(seed)
    flat = counts.long().flatten()
    word = torch.repeat_interleave(torch.arange(flat.numel()), flat)  # one entry per token (doc-major)
    doc = word // counts.shape[1]
    # random order within each document: sort by (doc, random key)
    key = torch.rand(word.numel(), generator=generator, dtype=torch.float64)
    order = torch.argsort(doc.double() + key)
    doc_sorted = doc[order]
    start = torch.searchsorted(doc_sorted, torch.arange(counts.shape[0]))
    rank = torch.arange(word.numel()) - start[doc_sorted]
    length = counts.sum(1).long()
    first = rank < length[doc_sorted] // 2
    observed = torch.zeros(flat.numel(), dtype=counts.dtype)
    observed.index_add_(0, word[order][first], torch.ones(int(first.sum()), dtype=counts.dtype))
    observed = observed.view_as(counts)
    return observed, counts - observed


def fold_in(
    topics: Tensor, counts: Tensor, doc_prior: float = 0.1, num_iters: int = 200, tol: float = 1e-5
) -> Tensor:
    """
    Topic proportions ``[D, K]`` of documents under fixed topics ``[K, V]``: the EM fixed point
    ``theta ∝ theta * ((counts / (theta @ topics)) @ topics.T) + doc_prior`` (batched over documents, on the
    nonzero counts only), iterated until no proportion moves by more than ``tol`` or ``num_iters`` times.
    """
    doc, word = counts.nonzero(as_tuple=True)
    weight = counts[doc, word].unsqueeze(-1)
    columns = topics[:, word].T  # [nnz, K]
    theta = counts.new_full((counts.shape[0], topics.shape[0]), 1.0 / topics.shape[0])
    for _ in range(num_iters):
        probs = (theta[doc] * columns).sum(-1, keepdim=True).clamp_min(_TINY)
        new = theta * torch.zeros_like(theta).index_add_(0, doc, weight * columns / probs) + doc_prior
        new = new / new.sum(-1, keepdim=True)
        converged = bool((new - theta).abs().max() < tol)
        theta = new
        if converged:
            break
    return theta


def document_completion(topics: Tensor, counts: Tensor, seed: int = 0, doc_prior: float = 0.1) -> float:
    """
    Held-out per-word log-likelihood by document completion: the topic proportions of each document are
    fitted (:func:`fold_in`) on a random half of its words and the other half is scored.

    :param Tensor topics: topic-word probabilities ``[K, V]``.
    :param Tensor counts: held-out documents ``[D, V]`` over the same vocabulary.
    :returns: total log-likelihood of the scored halves divided by their number of words.
    """
    topics = topics.double()
    observed, scored = split_halves(counts.double(), seed)
    theta = fold_in(topics, observed, doc_prior)
    doc, word = scored.nonzero(as_tuple=True)
    probs = (theta[doc] * topics[:, word].T).sum(-1).clamp_min(_TINY)
    return float((scored[doc, word] * probs.log()).sum() / scored.sum())


def umass_coherence(topics: Tensor, counts: Tensor, top_n: int = 10) -> float:
    """
    Mean UMass coherence (Mimno et al., 2011) of the topics' ``top_n`` words on a reference corpus:
    ``sum_{i<j} log((D(w_i, w_j) + 1) / D(w_j))`` over each topic's words ranked by probability, where
    ``D`` counts the documents containing the words (a word absent from the corpus counts as 1 document).
    """
    _check_top_n(top_n, topics.shape[-1], "umass_coherence", "top_n")
    top = topics.topk(top_n, dim=-1).indices  # [K, n]
    present = (counts > 0).double()  # [D, V]
    sub = present[:, top]  # [D, K, n]
    co = torch.einsum("dki,dkj->kij", sub, sub)  # [K, n, n] co-document frequencies
    df = co.diagonal(dim1=-2, dim2=-1).clamp_min(1.0)  # [K, n]
    score = ((co + 1.0).log() - df.log().unsqueeze(-2)).tril(-1)  # i > j: word i with the higher-ranked j
    return float(score.sum((-2, -1)).mean())


def _check_top_n(n: int, vocab_size: int, caller: str, name: str) -> None:
    if not 1 <= n <= vocab_size:
        raise ValueError(f"{caller}: {name}={n} must be in [1, {vocab_size}] (the vocabulary size)")


def top_words(topics: Tensor, vocab: Sequence[str], n: int = 10) -> list:
    """The ``n`` most probable words of every topic, as lists of strings."""
    _check_top_n(n, topics.shape[-1], "top_words", "n")
    return [[vocab[i] for i in row] for row in topics.topk(n, dim=-1).indices.tolist()]
