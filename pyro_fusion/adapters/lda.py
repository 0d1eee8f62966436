"""
Fuse LDA topic models trained on separate corpora, with different vocabularies.

A topic is a component with one field, ``"topic_words"``:

- mean-field Dirichlet guide: a Dirichlet over the words (natural parameters = concentrations);
- AutoNormal guide: a diagonal Normal over the ``V - 1`` unconstrained stick-breaking coordinates of the
  simplex (KL is invariant under the shared bijection, so this fuses the AutoNormal posteriors exactly).

**Vocabulary alignment.** Clients' vocabularies differ, so before fusion every client's Dirichlet topics are
written over the *union vocabulary* (all clients' words, sorted): a word a client never saw gets the prior's
concentration ``topic_prior`` in that client's topics. This is the posterior that client would have computed
had it kept the word with zero counts (a conjugate update adds nothing to an unseen word), so fusion treats
"never seen" as "no evidence" rather than as "impossible". The fused model carries the union vocabulary.
Stick-breaking coordinates depend on the order and number of words, so AutoNormal topics are fused only when
all clients share one vocabulary (agree on :func:`union_vocabulary` first and :meth:`Corpus.reindex
<pyro_fusion.datasets.corpus.Corpus.reindex>` before training; a vocabulary is a list of words, not data).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import biject_to, constraints

from ..components import Components
from ..deprecation import moved
from ..fusion import FusionResult, fuse
from ..models.lda import LDA

FIELD = "topic_words"

#: names that changed (kept for one release)
__getattr__ = moved(__name__, {"naive_average": "pyro_fusion.adapters.lda:average_topics_by_index"})


def union_vocabulary(vocabs: Sequence[Sequence[str]]) -> Tuple[str, ...]:
    """
    The sorted union of several vocabularies.

    Example::

        >>> union_vocabulary([("cat", "dog"), ("dog", "eel")])
        ('cat', 'dog', 'eel')
    """
    return tuple(sorted(set().union(*map(set, vocabs))))


def align_concentration(
    concentration: Tensor, vocab: Sequence[str], union_vocab: Sequence[str], prior_concentration: float
) -> Tensor:
    """
    Write Dirichlet topic concentrations ``[K, V]`` over ``vocab`` into ``union_vocab`` ``[K, U]``; words
    missing from ``vocab`` get ``prior_concentration``.

    Example::

        >>> align_concentration(torch.tensor([[3.0, 1.0]]), ("dog", "cat"), ("cat", "dog", "eel"), 0.1)
        tensor([[1.0000, 3.0000, 0.1000]])

    :raises ValueError: if a word of ``vocab`` is not in ``union_vocab``.
    """
    position = {w: i for i, w in enumerate(union_vocab)}
    missing = [w for w in vocab if w not in position]
    if missing:
        raise ValueError(f"{len(missing)} words are not in the union vocabulary, e.g. {missing[:3]}")
    index = torch.tensor([position[w] for w in vocab], dtype=torch.long)
    aligned = concentration.new_full((concentration.shape[0], len(union_vocab)), prior_concentration)
    aligned[:, index] = concentration
    return aligned


def topic_components(model: LDA, union_vocab: Optional[Sequence[str]] = None) -> Components:
    """
    One client's topics as :class:`~pyro_fusion.Components` (field ``"topic_words"``), over ``union_vocab``
    (default: the model's own vocabulary). Reads the posterior kept by :meth:`LDA.fit
    <pyro_fusion.models.lda.LDA.fit>`; changes nothing.

    :param LDA model: a trained client model.
    :param union_vocab: the vocabulary to align to (must contain the model's words).
    :raises ValueError: for an untrained model, or for AutoNormal topics over a vocabulary other than
        ``union_vocab``.
    """
    posterior = model.topic_posterior()
    union_vocab = model.vocab if union_vocab is None else tuple(union_vocab)
    if isinstance(posterior, torch.distributions.Dirichlet):
        concentration = align_concentration(
            posterior.concentration, model.vocab, union_vocab, model.topic_prior
        )
        return Components.from_distributions({FIELD: dist.Dirichlet(concentration)})
    if model.vocab != union_vocab:
        raise ValueError(
            f"LDA {model.name!r}: AutoNormal topics live in stick-breaking coordinates tied to the vocabulary "
            "order, so they can only be fused over a shared vocabulary; train every client on "
            "union_vocabulary(...) (Corpus.reindex), or use the Dirichlet guide"
        )
    return Components.from_distributions({FIELD: posterior})


def average_topics_by_index(models: Sequence[LDA], union_vocab: Sequence[str]) -> Components:
    """
    The baseline that ignores topic identity: topic ``k`` of the result is the average of every client's topic
    ``k`` (natural parameters, after vocabulary alignment: the KL barycenter of the clients' topic ``k``). All
    clients need the same number of topics. (Formerly ``naive_average``, the name of the BNN baseline that
    averages guide parameters, :func:`~pyro_fusion.adapters.bnn.naive_average`.)

    Example::

        >>> clients = [LDA(2, ("a", "b"), name="x"), LDA(2, ("b", "c"), name="y")]
        >>> for lda in clients:
        ...     lda.load_topic_posterior(dist.Dirichlet(torch.ones(2, 2)))
        >>> average_topics_by_index(clients, ("a", "b", "c")).distributions()["topic_words"].concentration[0]
        tensor([0.5250, 1.0000, 0.5250])
    """
    sizes = {m.num_topics for m in models}
    if len(sizes) != 1:
        raise ValueError(
            f"naive averaging needs the same number of topics in every client, got {sorted(sizes)}"
        )
    clients = [topic_components(m, union_vocab) for m in models]
    mean = torch.stack([c.concat() for c in clients]).mean(0)
    return clients[0].with_natural(mean)


def fuse_lda(
    models: Sequence[LDA],
    weights: Optional[Sequence[float]] = None,
    name: str = "fused",
    **fuse_kwargs,
) -> Tuple[LDA, FusionResult]:
    """
    Fuse trained client LDAs into one global LDA over the union vocabulary.

    Matches topics across clients with :func:`~pyro_fusion.fuse` (nonparametric by default, with the topic
    prior ``Dirichlet(topic_prior)`` as prior component, which sets the default price; pass ``num_global``,
    ``price``, ``direction``, ``combine`` ... through ``fuse_kwargs``) and returns a new :class:`LDA` whose
    guide is filled with the fused topics: its :meth:`~pyro_fusion.models.lda.LDA.dirichlet_guide` starts at
    the fused concentrations (param ``"{name}.topic_concentration"``), or for AutoNormal clients its
    :meth:`~pyro_fusion.models.lda.LDA.autonormal_guide` has the fused locs and scales. The fused model's
    document encoder is untrained (encoders of different vocabularies are not comparable): score documents
    with :func:`~pyro_fusion.metrics.topics.fold_in`, or train the encoder with SVI starting from the fused guide.

    On real corpora the posteriors of topics are sharp (thousands of words each), so the KL between two clients'
    versions of "the same" topic is large (on AP, 5 random clients: 5e4 to 2e5 nats) next to the default price
    (median KL to the prior, about 3e3): nonparametric fusion then keeps nearly every local topic. Pass
    ``num_global`` (e.g. the clients' number of topics) to force a fixed number of fused topics.

    Example::

        >>> from pyro_fusion.datasets import Corpus
        >>> a = Corpus(torch.randint(0, 3, (10, 4)).float(), ("ant", "bee", "cat", "dog"))
        >>> b = Corpus(torch.randint(0, 3, (10, 3)).float(), ("cat", "dog", "eel"))
        >>> clients = [LDA(2, a.vocab, name="a"), LDA(2, b.vocab, name="b")]
        >>> _ = clients[0].fit(a, num_steps=3), clients[1].fit(b, num_steps=3)
        >>> fused, result = fuse_lda(clients, num_global=2)
        >>> fused.vocab, fused.topic_word_matrix().shape
        (('ant', 'bee', 'cat', 'dog', 'eel'), torch.Size([2, 5]))

    :param list models: trained client models (same ``topic_prior``).
    :param weights: client weights for the barycenters, e.g. their numbers of words.
    :param str name: parameter-name prefix of the fused model.
    :returns: ``(fused LDA, FusionResult)``.
    """
    if not models:
        raise ValueError("fuse_lda needs at least one client model")
    priors = {m.topic_prior for m in models}
    if len(priors) != 1:
        raise ValueError(
            f"the clients' topic priors differ ({sorted(priors)}); fusion assumes one shared prior"
        )
    union_vocab = union_vocabulary([m.vocab for m in models])
    clients = [topic_components(m, union_vocab) for m in models]
    ref = models[0]
    prior = topic_prior_component(ref.topic_prior, len(union_vocab), clients[0])
    fuse_kwargs.setdefault("prior", prior)
    result = fuse(clients, weights, **fuse_kwargs)
    hidden = ref.encoder.hidden.out_features
    fused = LDA(result.num_global, union_vocab, topic_prior=ref.topic_prior, hidden=hidden, name=name)
    fused.load_topic_posterior(result.distributions()[FIELD])
    return fused, result


def topic_prior_component(topic_prior: float, vocab_size: int, like: Components) -> Components:
    """
    The symmetric topic prior ``Dirichlet(topic_prior * 1_V)`` as one component of the same kind as ``like``:
    a Dirichlet, or for AutoNormal topics the Normal with the prior's moments in the unconstrained space.
    """
    prior = dist.Dirichlet(torch.full((1, vocab_size), topic_prior, dtype=like.dtype))
    if isinstance(like.distributions()[FIELD], torch.distributions.Dirichlet):
        return Components.from_distributions({FIELD: prior})
    # the prior is not a Normal in the unconstrained space: match its (Monte Carlo) moments there
    with torch.random.fork_rng():
        torch.manual_seed(0)
        samples = biject_to(constraints.simplex).inv(prior.sample((512,)).clamp_min(1e-30))
    return Components.from_distributions({FIELD: dist.Normal(samples.mean(0), samples.std(0))})
