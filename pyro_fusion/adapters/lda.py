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

from collections import Counter
from typing import List, NamedTuple, Optional, Sequence, Tuple

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import biject_to, constraints

from ..components import Components
from ..deprecation import moved
from ..fusion import FusionResult, fuse
from ..models.lda import LDA
from .base import FusedModel, FuseSettings, FusionAdapter, Layout, front_door

__all__ = [
    "FIELD",
    "LDAAdapter",
    "LDAReadout",
    "align_concentration",
    "average_topics_by_index",
    "fuse_lda",
    "topic_components",
    "topic_prior_component",
    "union_vocabulary",
]

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

    :raises ValueError: if a word of ``vocab`` is not in ``union_vocab``, or a vocabulary
        repeats a word (one of its columns would be dropped).
    """
    for name, words in (("vocabulary", vocab), ("union vocabulary", union_vocab)):
        repeated = [w for w, n in Counter(words).items() if n > 1]
        if repeated:
            raise ValueError(f"the {name} repeats {len(repeated)} words, e.g. {repeated[:3]}: one column per word")
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


class LDAReadout(NamedTuple):
    """
    One client's LDA as :meth:`LDAAdapter.read` reads it.

    :ivar Components components: its topics over the union vocabulary (:func:`topic_components`).
    :ivar tuple vocab: the union vocabulary of all clients.
    :ivar float topic_prior: the clients' shared topic prior.
    :ivar int hidden: the width of its document encoder's hidden layer.
    """

    components: Components
    vocab: Tuple[str, ...]
    topic_prior: float
    hidden: int


class LDAAdapter(FusionAdapter):
    """
    Fusion of LDA topic models trained on separate corpora, with their own vocabularies (see the
    module docstring).

    Matches topics across clients with :func:`~pyro_fusion.fuse` (nonparametric by default, with the topic
    prior ``Dirichlet(topic_prior)`` as prior component, which the ``"prior"`` price rule reads) and writes a new
    :class:`~pyro_fusion.models.lda.LDA` whose guide is filled with the fused topics: its
    :meth:`~pyro_fusion.models.lda.LDA.dirichlet_guide` starts at the fused concentrations (param
    ``"{name}.topic_concentration"``), or for AutoNormal clients its
    :meth:`~pyro_fusion.models.lda.LDA.autonormal_guide` has the fused locs and scales. Score documents with
    :func:`~pyro_fusion.metrics.topics.document_completion`; go on training on new documents with one call,
    ``fused.model.fit(new.reindex(fused.model.vocab), prior=fused.model.topic_posterior())`` (online VB from the
    fused topics, with the fused posterior as the prior). The fused model's document encoder (used only by SVI
    with Adam) is untrained: encoders of different vocabularies are not comparable.

    On real corpora the posteriors of topics are sharp (thousands of words each), so the KL between two clients'
    versions of "the same" topic is large (on AP, 5 random clients: 5e4 to 2e5 nats) next to the median KL to
    the prior (about 3e3, the ``"prior"`` rule, which keeps nearly every local topic); the default
    ``"counterpart"`` rule reads the price off the clients' nearest cross-client topics instead (user guide,
    "Choosing the price"). Pass ``num_global`` (e.g. the clients' number of topics) to force a fixed number of
    fused topics.

    :param str name: parameter-name prefix of the fused model.
    :param Components prior: the prior component (default the clients' topic prior).
    :param engine_options: ``combine``, ``max_sweeps``, ``dtype`` of :func:`~pyro_fusion.fuse`.
    """

    family = "LDA"

    def __init__(self, *, name: str = "fused", prior: Optional[Components] = None, **engine_options):
        super().__init__(**engine_options)
        self.name = name
        self.prior = prior

    def read(self, local_models: Sequence[LDA]) -> List[LDAReadout]:
        priors = {m.topic_prior for m in local_models}
        if len(priors) != 1:
            raise ValueError(
                f"the clients' topic priors differ ({sorted(priors)}); fusion assumes one shared prior"
            )
        union_vocab = union_vocabulary([m.vocab for m in local_models])
        out = []
        for j, m in enumerate(local_models):
            try:
                components = topic_components(m, union_vocab)
            except ValueError as e:
                raise ValueError(f"client {j}: {e}") from None
            out.append(LDAReadout(components, union_vocab, m.topic_prior, m.encoder.hidden.out_features))
        return out

    def layout(self, local_model: LDA) -> Layout:
        """The topics: site ``topic_words``, dimension 0."""
        return Layout({FIELD: 0})

    def match(self, local: List[LDAReadout], weights, settings: FuseSettings) -> FusionResult:
        clients = [r.components for r in local]
        ref = local[0]
        prior = self.prior
        if prior is None:
            prior = topic_prior_component(ref.topic_prior, len(ref.vocab), clients[0])
        return fuse(
            clients, weights, direction=settings.direction, num_global=settings.single("num_global"),
            price=settings.single("price"), prior=prior, seed=settings.seed, **self.engine_options,
        )

    def write(self, result: FusionResult, local: List[LDAReadout], settings: FuseSettings) -> FusedModel:
        ref = local[0]
        fused = LDA(result.num_global, ref.vocab, topic_prior=ref.topic_prior, hidden=ref.hidden, name=self.name)
        topics = result.distributions()[FIELD]
        fused.load_topic_posterior(topics)
        return FusedModel(
            {FIELD: topics}, result, model=fused, guide=fused.guide, assignments=result.assignments,
            legacy=(fused, result),
        )


fuse_lda = front_door(
    LDAAdapter,
    "fuse_lda",
    """
Fuse trained client LDAs into one global LDA over the union vocabulary (:class:`LDAAdapter`).

Example::

    >>> from pyro_fusion.datasets import Corpus
    >>> a = Corpus(torch.randint(0, 3, (10, 4)).float(), ("ant", "bee", "cat", "dog"))
    >>> b = Corpus(torch.randint(0, 3, (10, 3)).float(), ("cat", "dog", "eel"))
    >>> clients = [LDA(2, a.vocab, name="a"), LDA(2, b.vocab, name="b")]
    >>> _ = clients[0].fit(a, num_steps=3), clients[1].fit(b, num_steps=3)
    >>> fused = fuse_lda(clients, num_global=2)
    >>> fused.model.vocab, fused.model.topic_word_matrix().shape
    (('ant', 'bee', 'cat', 'dog', 'eel'), torch.Size([2, 5]))

:param list local_models: trained client models (same ``topic_prior``).
:param weights: client weights for the barycenters, e.g. their numbers of words.
:param str direction: KL direction (see :func:`~pyro_fusion.fuse`).
:param int num_global: a fixed number of global topics (default learned).
:param price: a number, a rule name of :func:`~pyro_fusion.fuse` or a
    :class:`~pyro_fusion.price.Price`; default :func:`~pyro_fusion.price.counterpart_price`
    (``"prior"``: the median KL of a topic to the topic prior, the default before 0.2).
:param int seed: seed of the matching.
:param bool progress: accepted for the common signature (fusing topics is quick).
:param family_options: :class:`LDAAdapter` options (``name``, ``prior``, ``combine``,
    ``max_sweeps``, ``dtype``).
:return: a :class:`~pyro_fusion.adapters.base.FusedModel` with the fused ``model`` (an
    :class:`~pyro_fusion.models.lda.LDA`), its ``guide``, the ``posterior``
    ``{"topic_words": topics}`` and the ``result``. (Before 0.2 it returned
    ``(model, result)``; unpacking it so still works, with a warning.)
""",
)
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
