"""
Evaluation of topic models: :func:`document_completion` and :func:`umass_coherence` need only a
topic-word matrix (:func:`topic_word_matrix` of a topic posterior), so local, naively averaged,
fused and pooled models are all scored by the same procedure; :func:`top_words` shows them.
Document completion folds all held-out documents in at once, on their nonzero counts
(:func:`fold_in`, :class:`~pyro_fusion.sparse_counts.SparseCounts`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import pyro.distributions as dist
import torch
from torch import Tensor

from ..sparse_counts import SparseCounts, as_sparse_counts

__all__ = [
    "document_completion",
    "fold_in",
    "split_halves",
    "split_tokens",
    "top_words",
    "topic_word_matrix",
    "umass_coherence",
]

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

    Example::

        >>> observed, held_out = split_halves(torch.tensor([[3.0, 0.0, 2.0], [1.0, 1.0, 0.0]]), seed=3)
        >>> (observed + held_out).tolist(), observed.sum(-1).tolist()
        ([[3.0, 0.0, 2.0], [1.0, 1.0, 0.0]], [2.0, 1.0])

    :param Tensor counts: ``[D, V]`` integer-valued counts.
    :returns: ``(observed, held_out)``, both ``[D, V]``, summing to ``counts``.
    """
    sparse = SparseCounts.from_dense(counts)
    observed = sparse.with_count(split_tokens(sparse, seed)).to_dense()
    return observed, counts - observed


def split_tokens(counts: SparseCounts, seed: int = 0) -> Tensor:
    """
    The sparse core of :func:`split_halves`: how many of each nonzero entry's tokens fall in the observed half
    (``[nnz]``; the held-out half is ``counts.count`` minus it). Work and memory grow with the number of
    tokens, not with ``D x V``.
    """
    generator = torch.Generator().manual_seed(seed)
    entry = torch.repeat_interleave(torch.arange(counts.word.shape[0]), counts.count.long())  # one per token
    doc = counts.doc[entry]  # document-major, words in increasing order within a document
    # random order within each document: sort by (doc, random key)
    key = torch.rand(entry.shape[0], generator=generator, dtype=torch.float64)
    order = torch.argsort(doc.double() + key)
    doc_sorted = doc[order]
    length = torch.bincount(doc, minlength=len(counts))
    start = length.cumsum(0) - length
    rank = torch.arange(entry.shape[0]) - start[doc_sorted]
    first = rank < length[doc_sorted] // 2
    return counts.count.new_zeros(counts.word.shape[0]).index_add_(
        0, entry[order][first], counts.count.new_ones(int(first.sum()))
    )


def fold_in(
    topics: Tensor,
    counts: Union[Tensor, SparseCounts],
    doc_prior: float = 0.1,
    num_iters: int = 200,
    tol: float = 1e-5,
) -> Tensor:
    """
    Topic proportions ``[D, K]`` of documents under fixed topics ``[K, V]``: the maximum a posteriori
    proportions under a ``Dirichlet(1 + doc_prior)`` prior, i.e. the fixed point of the EM map
    ``theta <- normalize(theta * ((counts / (theta @ topics)) @ topics.T) + doc_prior)``. The objective is
    concave, so the fixed point is unique; it is reached with the EM map accelerated by SQUAREM (Varadhan &
    Roland, 2008; a step is kept only where it raises the objective, otherwise the plain EM step is taken),
    for all documents at once on their nonzero counts. A document is done when an EM step moves none of its
    proportions by more than ``tol``, or after ``num_iters`` EM-map evaluations.

    Example::

        >>> topics = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
        >>> fold_in(topics, torch.tensor([[4.0, 4.0, 0.0, 0.0]], dtype=torch.float64), doc_prior=0.1)
        tensor([[0.9878, 0.0122]], dtype=torch.float64)

    :param Tensor topics: topic-word probabilities ``[K, V]``.
    :param counts: ``[D, V]`` word counts (dense, or :class:`~pyro_fusion.sparse_counts.SparseCounts`).
    :returns: ``[D, K]`` in the dtype of ``topics``.
    """
    counts = as_sparse_counts(counts, topics, "fold_in")
    word_topics = topics.T.contiguous()

    def em(counts: SparseCounts, theta: Tensor, with_objective: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
        norm, weighted = counts.mixture_step(theta, word_topics)
        new = weighted + doc_prior
        new = new / new.sum(-1, keepdim=True)
        if not with_objective:
            return new, None
        objective = theta.new_zeros(theta.shape[0]).index_add_(0, counts.doc, counts.count * norm.log())
        return new, objective + doc_prior * theta.clamp_min(_TINY).log().sum(-1)

    result = topics.new_full((len(counts), topics.shape[0]), 1.0 / topics.shape[0])
    active = torch.arange(len(counts))  # the documents still moving, and their proportions
    theta = result.clone()
    evaluations = 0
    while evaluations < num_iters:
        step, objective = em(counts, theta)
        evaluations += 1
        done = (step - theta).abs().amax(-1) < tol
        if evaluations + 2 > num_iters:
            done[:] = True
        if bool(done.any()):
            result[active[done]] = step[done]
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            counts, active = counts.rows(keep), active[keep]
            theta, step, objective = theta[keep], step[keep], objective[keep]
        step2, _ = em(counts, step, with_objective=False)
        r = step - theta
        v = step2 - step - r
        alpha = -(r.norm(dim=-1) / v.norm(dim=-1).clamp_min(_TINY)).clamp_min(1.0).unsqueeze(-1)
        extrapolated = theta - 2 * alpha * r + alpha.square() * v
        feasible = (extrapolated > 0).all(-1, keepdim=True)
        extrapolated = torch.where(feasible, extrapolated, step2)
        step3, extrapolated_objective = em(counts, extrapolated)
        evaluations += 2
        theta = torch.where((extrapolated_objective >= objective).unsqueeze(-1), step3, step2)
    return result


def document_completion(
    topics: Tensor, counts: Union[Tensor, SparseCounts], seed: int = 0, doc_prior: float = 0.1
) -> float:
    """
    Held-out per-word log-likelihood by document completion: the topic proportions of each document are
    fitted (:func:`fold_in`) on a random half of its words (:func:`split_halves`) and the other half is
    scored. All documents at once, on their nonzero counts, in float64.

    Example::

        >>> topics = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
        >>> round(document_completion(topics, torch.tensor([[4.0, 4.0, 0.0, 0.0]])), 3)
        -0.717

    :param Tensor topics: topic-word probabilities ``[K, V]``.
    :param counts: held-out documents ``[D, V]`` over the same vocabulary (dense, or
        :class:`~pyro_fusion.sparse_counts.SparseCounts`: convert once to score several models).
    :returns: total log-likelihood of the scored halves divided by their number of words.
    """
    topics = topics.double()
    sparse = as_sparse_counts(counts, topics, "document_completion")
    observed = split_tokens(sparse, seed)
    scored = sparse.count - observed
    theta = fold_in(topics, sparse.with_count(observed).without_zeros(), doc_prior)
    held_out = sparse.with_count(scored).without_zeros()
    probs = held_out.mixture(theta, topics.T.contiguous()).clamp_min(_TINY)
    return float((held_out.count * probs.log()).sum() / held_out.count.sum())


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
