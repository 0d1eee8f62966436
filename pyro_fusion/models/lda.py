"""
Latent Dirichlet allocation in Pyro, trained by stochastic variational inference in minibatches (online
variational Bayes by default), with two guides for the topics.

Model (K topics over a vocabulary of V words, D documents)::

    topic_words[k] ~ Dirichlet(topic_prior * 1_V)    k = 1..K   (site "topic_words", plate "topics")
    doc_topics[d]  ~ Dirichlet(doc_prior * 1_K)      d = 1..D   (site "doc_topics", plate "documents")
    counts[d]      ~ Multinomial(doc_topics[d] @ topic_words)   (factor "words")

The per-word topic assignments are summed out exactly: a word's probability in document ``d`` is
``sum_k doc_topics[d, k] * topic_words[k, w]``; the likelihood is evaluated on the nonzero counts only (a
``pyro.factor``, up to the constant multinomial coefficient).

Guides for the topics:

- :meth:`LDA.dirichlet_guide`: the classic mean-field guide, ``topic_words[k] ~ Dirichlet(topic_concentration[k])``
  with ``topic_concentration`` a positive ``pyro.param``;
- :meth:`LDA.autonormal_guide`: an :class:`~pyro.infer.autoguide.AutoNormal` on ``topic_words`` (a diagonal Normal
  in the unconstrained stick-breaking space of the simplex).

Local (per-document) topic proportions: with the default fit of the Dirichlet guide, online variational Bayes
(Hoffman et al., 2010; the natural-gradient step of SVI), they are **fitted** exactly for every minibatch, each
document by coordinate ascent of the ELBO (:func:`fit_doc_topics`), on the nonzero counts only
(:class:`~pyro_fusion.sparse_counts.SparseCounts`); on AP and Brown this is better per held-out word than
scikit-learn's online LDA with the same priors, topics and passes, in less CPU time
(``benchmarks/lda_fusion.py``). With Pyro's SVI (Adam; the only choice for the AutoNormal guide) they are
**amortized** by a small :class:`DocumentEncoder` that reads a document through the current topics (``K``
features, so its cost does not grow with the vocabulary).

The corpus type is :class:`~pyro_fusion.datasets.corpus.Corpus`; evaluation (document completion, coherence,
top words) is in :mod:`pyro_fusion.metrics.topics`.

Performance note: the matrix products are small; on a loaded 2-core machine ``torch.set_num_threads(1)`` is
much faster than two threads.
"""

from __future__ import annotations

from itertools import count, islice
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal, init_to_feasible
from pyro.nn import PyroModule, PyroParam
from pyro.optim import ClippedAdam
from torch import Tensor, nn

from ..deprecation import moved
from ..metrics import topics as topic_metrics
from ..sparse_counts import SparseCounts, as_sparse_counts
from .clustering import spherical_kmeans
from .training import svi_steps

if TYPE_CHECKING:
    from ..datasets.corpus import Corpus

_TINY = 1e-30


class DocumentEncoder(nn.Module):
    """
    Amortized posterior of a document's topic proportions. Its input is the document's average expected
    log-probability under each topic, ``f[d, k] = sum_w counts[d, w] E[log topics[k, w]] / n_d`` (``[B, K]``,
    cheap and vocabulary-free), and ``log n_d``; its output is the Dirichlet concentration
    ``doc_prior + n_d * sigmoid(s_d) * softmax(logits_d)``, the shape of a conjugate posterior that has seen
    ``sigmoid(s_d) * n_d`` words.

    :param int num_topics: K.
    :param float doc_prior: the prior concentration (added to the output).
    :param int hidden: width of the hidden layer.
    """

    def __init__(self, num_topics: int, doc_prior: float, hidden: int = 64):
        super().__init__()
        self.doc_prior = doc_prior
        self.hidden = nn.Linear(num_topics + 1, hidden)
        self.out = nn.Linear(hidden, num_topics + 1)

    def forward(self, counts: Tensor, log_topics: Tensor) -> Tensor:
        """
        :param Tensor counts: word counts ``[B, V]``.
        :param Tensor log_topics: expected log topic-word probabilities ``[K, V]``.
        :returns: concentrations ``[B, K]``.
        """
        length = counts.sum(-1, keepdim=True).clamp_min(1.0)
        f = (counts / length) @ log_topics.T
        f = f - f.mean(-1, keepdim=True)
        h = nn.functional.softplus(self.hidden(torch.cat([f, length.log()], -1)))
        out = self.out(h)
        logits, s = out[:, :-1], out[:, -1:]
        return self.doc_prior + length * torch.sigmoid(s) * torch.softmax(logits, -1)


_DEFAULT_NAMES = count()


def _unique_name() -> str:
    """``"lda"``, then ``"lda_1"``, ``"lda_2"``, ...: a default name per model of this process."""
    n = next(_DEFAULT_NAMES)
    return "lda" if n == 0 else f"lda_{n}"


class LDA(nn.Module):
    """
    Latent Dirichlet allocation with an amortized guide for the documents' topic proportions.

    Parameters live in Pyro's param store under ``name`` (``"{name}.topic_concentration"``,
    ``"{name}.encoder$$$..."``, and for :meth:`autonormal_guide` ``"{name}.guide.0.locs.topic_words"``, ...),
    so several clients' models can be trained in one process: every model gets a name of its own
    (``"lda"``, ``"lda_1"``, ``"lda_2"``, ... unless ``name`` is given). After :meth:`fit`, the
    topic posterior is kept (detached) by the model, see :meth:`topic_posterior`.

    Example::

        >>> from pyro_fusion.datasets import Corpus
        >>> corpus = Corpus(torch.randint(0, 3, (20, 30)).float(), tuple(f"w{i}" for i in range(30)))
        >>> lda = LDA(num_topics=3, vocab=corpus.vocab)
        >>> losses = lda.fit(corpus, num_steps=5)
        >>> lda.topic_word_matrix().shape
        torch.Size([3, 30])

    :param int num_topics: K.
    :param vocab: the vocabulary (sequence of V distinct words).
    :param float topic_prior: symmetric Dirichlet concentration of each topic's word distribution.
    :param float doc_prior: symmetric Dirichlet concentration of a document's topic proportions
        (default ``1 / K``).
    :param int hidden: width of the encoder's hidden layer.
    :param str name: prefix of the model's parameter names (default: one no other model of this
        process has).
    """

    def __init__(
        self,
        num_topics: int,
        vocab: Sequence[str],
        topic_prior: float = 0.05,
        doc_prior: Optional[float] = None,
        hidden: int = 64,
        name: Optional[str] = None,
    ):
        super().__init__()
        if num_topics < 1:
            raise ValueError(f"num_topics must be positive, got {num_topics}")
        if not topic_prior > 0:
            raise ValueError(f"topic_prior must be positive, got {topic_prior}")
        if len(vocab) < 2:
            raise ValueError(f"the vocabulary needs at least 2 words, got {len(vocab)}")
        self.num_topics = num_topics
        self.vocab = tuple(vocab)
        self.topic_prior = float(topic_prior)
        self.doc_prior = float(doc_prior) if doc_prior is not None else 1.0 / num_topics
        self.name = _unique_name() if name is None else name
        self.encoder = DocumentEncoder(num_topics, self.doc_prior, hidden)
        self.guide: Optional[Callable] = None
        self._posterior: Optional[torch.distributions.Distribution] = None
        self._init_topics: Optional[Tensor] = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def topic_prior_distribution(self) -> dist.Dirichlet:
        """The prior of every topic, ``Dirichlet(topic_prior * 1_V)`` with batch shape ``[K]``."""
        return dist.Dirichlet(torch.full((self.num_topics, self.vocab_size), self.topic_prior))

    def topic_model(self, *args, **kwargs) -> Tensor:
        """The global part of :meth:`model`: the topics' prior (site ``topic_words``, plate ``topics``)."""
        with pyro.plate("topics", self.num_topics):
            return pyro.sample("topic_words", self.topic_prior_distribution())

    def model(self, counts: Tensor, num_docs: Optional[int] = None) -> None:
        """
        :param Tensor counts: a minibatch of word counts ``[B, V]``.
        :param int num_docs: size of the whole corpus (scales the minibatch); default ``B``.
        """
        batch = counts.shape[0]
        topics = self.topic_model()
        doc, word = counts.nonzero(as_tuple=True)
        with pyro.plate("documents", num_docs or batch, subsample=torch.arange(batch)):
            doc_topics = pyro.sample(
                "doc_topics", dist.Dirichlet(counts.new_full((batch, self.num_topics), self.doc_prior))
            )
            # multinomial log-likelihood over the nonzero counts, up to the constant multinomial coefficient
            probs = (doc_topics[doc] * topics[:, word].T).sum(-1).clamp_min(_TINY)
            pyro.factor("words", counts.new_zeros(batch).index_add(0, doc, counts[doc, word] * probs.log()))

    def local_guide(self, counts: Tensor, num_docs: Optional[int], log_topics: Tensor) -> None:
        """
        The amortized guide of the documents' topic proportions (site ``doc_topics``), given the current
        expected log topics ``[K, V]`` (held fixed: the encoder does not move the topics).
        """
        pyro.module(f"{self.name}.encoder", self.encoder)
        batch = counts.shape[0]
        with pyro.plate("documents", num_docs or batch, subsample=torch.arange(batch)):
            pyro.sample("doc_topics", dist.Dirichlet(self.encoder(counts, log_topics.detach())))

    def dirichlet_guide(self, counts: Tensor, num_docs: Optional[int] = None) -> None:
        """
        Mean-field guide: ``topic_words[k] ~ Dirichlet(topic_concentration[k])`` (param
        ``"{name}.topic_concentration"``, ``[K, V]``, constraint positive) and the amortized :meth:`local_guide`.
        """
        concentration = pyro.param(
            f"{self.name}.topic_concentration",
            lambda: self.initial_concentration(counts),
            constraint=dist.constraints.positive,
        )
        with pyro.plate("topics", self.num_topics):
            pyro.sample("topic_words", dist.Dirichlet(concentration))
        log_topics = expected_log(concentration)
        self.local_guide(counts, num_docs, log_topics)

    def autonormal_guide(self, init_scale: float = 0.05) -> AutoGuideList:
        """
        :class:`~pyro.infer.autoguide.AutoGuideList` of an :class:`~pyro.infer.autoguide.AutoNormal` over
        ``topic_words`` (unconstrained stick-breaking space, ``[K, V-1]``) and the amortized :meth:`local_guide`
        (fed with the log of the AutoNormal's median topics). Its topics start at the mean of
        :meth:`initial_concentration` once :meth:`fit` has seen the corpus.
        """
        guide = AutoGuideList(self.topic_model)  # the local part brings its own "documents" plate
        autonormal = AutoNormal(self.topic_model, init_loc_fn=self._autonormal_init, init_scale=init_scale)
        guide.append(autonormal)
        # named after this model ("{name}.guide.0.locs.topic_words", ...): under Pyro's default names
        # ("AutoGuideList.0...") two clients' guides would share, and overwrite, one set of parameters
        PyroModule(name=self.name).add_module("guide", guide)

        def local(counts: Tensor, num_docs: Optional[int] = None) -> None:
            log_topics = autonormal.median()["topic_words"].clamp_min(_TINY).log()
            self.local_guide(counts, num_docs, log_topics)

        guide.append(local)
        return guide

    def _autonormal_init(self, site: dict) -> Tensor:
        if site["name"] == "topic_words" and self._init_topics is not None:
            return self._init_topics
        return init_to_feasible(site)

    def initial_concentration(self, counts: Union[Tensor, SparseCounts]) -> Tensor:
        """
        Starting topics ``[K, V]``: the documents are clustered into K groups by spherical k-means on
        square-root word frequencies (:func:`~pyro_fusion.models.clustering.spherical_kmeans`, on the nonzero
        counts, seeded from torch's global RNG), and topic k starts at the prior plus the word counts of group k
        (randomly perturbed, so that an empty group, or a topic beyond the number of documents, still gives
        distinct topics).

        :param counts: the training documents ``[D, V]`` (dense or
            :class:`~pyro_fusion.sparse_counts.SparseCounts`).
        """
        if not isinstance(counts, SparseCounts):
            counts = SparseCounts.from_dense(counts)
        if counts.vocab_size != self.vocab_size:
            raise ValueError(
                f"LDA {self.name!r}: counts over {counts.vocab_size} words, the model has {self.vocab_size}"
            )
        frequency = counts.with_count((counts.count / counts.lengths().clamp_min(1.0)[counts.doc]).sqrt())
        seed = int(torch.randint(2**31 - 1, ()))
        group = spherical_kmeans(frequency, min(self.num_topics, len(counts)), seed=seed)
        onehot = nn.functional.one_hot(group, self.num_topics).to(counts.count.dtype)
        grouped = counts.transpose().matmul(onehot).T  # [K, V]: the word counts of every group
        noise = torch.distributions.Gamma(10.0, 10.0).sample((self.num_topics, self.vocab_size))
        return self.topic_prior + noise * (grouped + 0.1 * grouped.sum(0) / self.num_topics)

    def fit(
        self,
        corpus: Corpus,
        guide: Optional[Callable] = None,
        num_steps: int = 200,
        batch_size: int = 128,
        lr: Optional[float] = None,
        natural_gradient: Optional[bool] = None,
        seed: Optional[int] = None,
        progress: bool = False,
        *,
        learning_offset: float = 10.0,
        prior: Optional[torch.distributions.Dirichlet] = None,
    ) -> list:
        """
        Train on minibatches, then keep the topic posterior (:meth:`topic_posterior`). Minibatches are taken in
        passes: each pass over the corpus is a random permutation cut into ``ceil(D / batch_size)`` nearly equal
        batches, so ``num_steps = passes * ceil(D / batch_size)`` visits every document ``passes`` times.

        If the guide's topics are already in the param store (a previous ``fit``, or
        :meth:`load_topic_posterior` of a fused posterior), training continues from them: a **warm start**
        is one call, e.g. ``fused.fit(new_corpus.reindex(fused.vocab), prior=fused.topic_posterior())``
        (``prior``: see below). Otherwise the topics start from :meth:`initial_concentration`.

        Two stochastic variational inference schemes, both maximizing the mean-field ELBO on minibatches:

        - ``natural_gradient=True`` (default for :meth:`dirichlet_guide`): online variational Bayes (Hoffman et
          al., 2010; 2013). The minibatch's topic proportions are fitted exactly, per document, by coordinate
          ascent of the ELBO under ``E[log topics]`` (:func:`fit_doc_topics`: no amortization gap), then the
          topics take a natural-gradient step
          ``topic_concentration <- (1 - rho) topic_concentration + rho (topic_prior + D / B * expected counts)``
          with ``rho = (learning_offset + t + 1) ** -lr`` (``lr`` is the decay exponent, default 0.7; the same
          schedule as scikit-learn's ``learning_offset`` and ``learning_decay``). All work is on the nonzero
          counts (:class:`~pyro_fusion.sparse_counts.SparseCounts`), batched over the minibatch's documents.
        - ``natural_gradient=False`` (the only choice for :meth:`autonormal_guide`): Pyro's
          :class:`~pyro.infer.SVI` with :class:`~pyro.infer.TraceMeanField_ELBO` and clipped Adam
          (learning rate ``lr``, default 0.02), with the amortized :class:`DocumentEncoder` for the topic
          proportions (a Pyro guide needs a distribution for every document's proportions; the encoder gives
          one without a per-document parameter).

        :param Corpus corpus: training documents over this model's vocabulary.
        :param guide: :meth:`dirichlet_guide` (default) or the result of :meth:`autonormal_guide`.
        :param int num_steps: number of minibatch steps.
        :param int batch_size: documents per step (at most).
        :param float lr: see above.
        :param bool natural_gradient: see above.
        :param int seed: optional RNG seed.
        :param bool progress: show a progress bar over the Adam steps.
        :param float learning_offset: ``tau0 >= 0`` of the natural-gradient step size (down-weights the first
            steps, so that one minibatch does not overwrite the starting topics).
        :param prior: natural-gradient step only: a ``Dirichlet`` ``[K, V]`` that replaces the topics' prior
            ``Dirichlet(topic_prior)``, e.g. ``fused.topic_posterior()`` so that new documents add their evidence
            to the fused posterior (the result approximates the posterior given the parties' documents and the new
            ones) instead of replacing it.
        :returns: per step, the minibatch's loss per word (negative ELBO estimate for Adam; negative
            log-likelihood with fitted proportions for the natural-gradient step).
        """
        if corpus.vocab != self.vocab:
            raise ValueError(
                f"LDA {self.name!r}: the corpus' vocabulary differs from the model's; use Corpus.reindex"
            )
        if len(corpus) == 0 or corpus.num_words == 0:
            raise ValueError(f"LDA {self.name!r}: cannot fit an empty corpus")
        if num_steps < 1 or batch_size < 1:
            raise ValueError(
                f"LDA {self.name!r}: num_steps and batch_size must be positive, got {num_steps} and {batch_size}"
            )
        if not learning_offset >= 0:
            raise ValueError(f"LDA {self.name!r}: learning_offset must be >= 0, got {learning_offset}")
        if prior is not None:
            if not isinstance(prior, torch.distributions.Dirichlet) or prior.concentration.shape != (
                self.num_topics,
                self.vocab_size,
            ):
                raise ValueError(
                    f"LDA {self.name!r}: prior must be a Dirichlet over ({self.num_topics}, {self.vocab_size}) "
                    f"topics, got {prior!r}"
                )
            if natural_gradient is False or (guide is not None and guide != self.dirichlet_guide):
                raise ValueError(f"LDA {self.name!r}: a prior posterior needs the natural-gradient step")
        if seed is not None:
            pyro.set_rng_seed(seed)
        self._set_guide(self.dirichlet_guide if guide is None else guide)
        is_dirichlet = self.guide == self.dirichlet_guide
        if natural_gradient is None:
            natural_gradient = is_dirichlet
        if natural_gradient and not is_dirichlet:
            raise ValueError("the natural-gradient step needs the Dirichlet guide (dirichlet_guide)")
        counts = corpus.counts
        num_docs = len(corpus)
        batch_size = min(batch_size, num_docs)
        if natural_gradient:
            name = f"{self.name}.topic_concentration"
            if name not in pyro.get_param_store():
                pyro.param(name, self.initial_concentration(counts), constraint=dist.constraints.positive)
            prior_concentration = self.topic_prior if prior is None else prior.concentration.detach()
            losses = self._fit_online(
                SparseCounts.from_dense(counts),
                num_steps,
                batch_size,
                0.7 if lr is None else lr,
                learning_offset,
                prior_concentration,
            )
        else:
            if self._init_topics is None:
                init = self.initial_concentration(counts)
                self._init_topics = init / init.sum(-1, keepdim=True)
            with pyro.validation_enabled(False):  # inputs were checked above; skip per-step checks
                self.guide(counts, num_docs)  # set the parameters up from the whole corpus
                optim = ClippedAdam({"lr": 0.02 if lr is None else lr, "clip_norm": 10.0})
                minibatches = islice(_minibatches(num_docs, batch_size), num_steps)
                batches = ((counts[index], num_docs) for index in minibatches)
                steps = svi_steps(
                    self.model, self.guide, optim, TraceMeanField_ELBO(), batches,
                    num_steps=num_steps, progress=progress, desc=f"LDA {self.name} fit",
                )
                losses = [loss / corpus.num_words for loss in steps]
        self._posterior = self._read_topic_posterior()
        return losses

    def _fit_online(
        self,
        counts: SparseCounts,
        num_steps: int,
        batch_size: int,
        decay: float,
        offset: float,
        prior: Union[float, Tensor],
    ) -> list:
        name = f"{self.name}.topic_concentration"
        concentration = pyro.param(name).detach()
        counts = counts.to(concentration.dtype)
        if isinstance(prior, Tensor):
            prior = prior.to(concentration.dtype)
        num_docs = len(counts)
        losses = []
        for t, index in enumerate(islice(_minibatches(num_docs, batch_size), num_steps)):
            batch = counts.rows(index)
            exp_log_topics = expected_log(concentration).exp()
            doc_concentration = fit_doc_topics(exp_log_topics, batch, self.doc_prior)
            exp_log_doc = expected_log(doc_concentration).exp()
            # expected topic-word counts: sum_d exp_log_doc[d, k] exp_log_topics[k, w] counts[d, w] / norm[d, w]
            norm = batch.mixture(exp_log_doc, exp_log_topics.T.contiguous()).clamp_min(_TINY)
            ratio = batch.with_count(batch.count / norm).transpose()  # [V, B]
            expected_counts = exp_log_topics * ratio.matmul(exp_log_doc).T
            rho = (offset + t + 1.0) ** -decay
            target = prior + expected_counts * (num_docs / len(batch))
            concentration = (1 - rho) * concentration + rho * target
            theta = doc_concentration / doc_concentration.sum(-1, keepdim=True)
            topics = concentration / concentration.sum(-1, keepdim=True)
            log_probs = batch.mixture(theta, topics.T.contiguous()).clamp_min(_TINY).log()
            losses.append(float(-(batch.count * log_probs).sum() / batch.count.sum()))
        pyro.get_param_store()[name] = concentration
        return losses

    def _set_guide(self, guide: Callable) -> None:
        # a plain attribute, never a submodule: nn.Module would register an AutoNormal guide as a child
        # and then refuse to replace it by the Dirichlet guide (a method)
        object.__setattr__(self, "guide", guide)

    def _read_topic_posterior(self) -> torch.distributions.Distribution:
        if self.guide == self.dirichlet_guide:
            return dist.Dirichlet(pyro.param(f"{self.name}.topic_concentration").detach().clone())
        autonormal = self.guide[0]
        loc, scale = autonormal.locs.topic_words, autonormal.scales.topic_words
        return dist.Normal(loc.detach().clone(), scale.detach().clone())

    def load_topic_posterior(self, posterior: torch.distributions.Distribution) -> None:
        """
        Set the guide's topics to ``posterior`` (e.g. a fused one): a ``Dirichlet`` ``[K, V]`` fills param
        ``"{name}.topic_concentration"`` of :meth:`dirichlet_guide`; a ``Normal`` ``[K, V-1]`` (unconstrained
        coordinates) becomes the locs and scales of a new :meth:`autonormal_guide`, whose parameters are named
        after this model (``"{name}.guide.0.locs.topic_words"``, ...), so other models' AutoNormal guides in the
        param store are left alone. ``fit(corpus, guide=model.guide)`` continues from there (warm start).
        """
        base = posterior.base_dist if isinstance(posterior, torch.distributions.Independent) else posterior
        shape = (self.num_topics, self.vocab_size)
        if isinstance(base, torch.distributions.Dirichlet):
            concentration = base.concentration.detach().clone()
            if concentration.shape != shape:
                raise ValueError(
                    f"LDA {self.name!r}: expected concentrations {shape}, got {tuple(concentration.shape)}"
                )
            store = pyro.get_param_store()
            name = f"{self.name}.topic_concentration"
            if name in store:
                del store[name]
            pyro.param(name, concentration.clone(), constraint=dist.constraints.positive)
            self._set_guide(self.dirichlet_guide)
            self._posterior = dist.Dirichlet(concentration)
        elif isinstance(base, torch.distributions.Normal):
            loc, scale = base.loc.detach().clone(), base.scale.detach().clone()
            if loc.shape != (self.num_topics, self.vocab_size - 1):
                raise ValueError(
                    f"LDA {self.name!r}: expected unconstrained locs {(self.num_topics, self.vocab_size - 1)}, "
                    f"got {tuple(loc.shape)}"
                )
            guide = self.autonormal_guide()
            guide(torch.zeros(1, self.vocab_size))  # set the AutoNormal up, then replace its parameters
            autonormal = guide[0]
            autonormal.locs.topic_words = PyroParam(loc.clone(), dist.constraints.real, event_dim=1)
            autonormal.scales.topic_words = PyroParam(scale.clone(), autonormal.scale_constraint, event_dim=1)
            self._set_guide(guide)
            self._posterior = dist.Normal(loc, scale)
        else:
            raise ValueError(f"expected a Dirichlet or Normal topic posterior, got {type(base).__name__}")

    def topic_posterior(self) -> torch.distributions.Distribution:
        """
        The trained guide's posterior of the topics, as read at the end of :meth:`fit`: ``Dirichlet`` with batch
        shape ``[K]`` (mean-field guide) or the ``Normal`` ``[K, V-1]`` of the unconstrained stick-breaking
        coordinates (AutoNormal guide).
        """
        if self._posterior is None:
            raise ValueError(f"LDA {self.name!r} has not been trained (call fit first)")
        return self._posterior

    def topic_word_matrix(self) -> Tensor:
        """Posterior mean of the topics, ``[K, V]`` (:func:`~pyro_fusion.metrics.topics.topic_word_matrix`)."""
        return topic_metrics.topic_word_matrix(self.topic_posterior())


def expected_log(concentration: Tensor) -> Tensor:
    """``E[log x]`` under ``Dirichlet(concentration)`` over the last axis: ``digamma(a) - digamma(sum(a))``."""
    return torch.digamma(concentration) - torch.digamma(concentration.sum(-1, keepdim=True))


def fit_doc_topics(
    exp_log_topics: Tensor,
    counts: Union[Tensor, SparseCounts],
    doc_prior: float,
    num_iters: int = 100,
    tol: float = 1e-3,
) -> Tensor:
    """
    Mean-field coordinate ascent for the topic proportions of documents under fixed topics (the local step of
    variational LDA and of online VB): every document's Dirichlet concentration ``gamma`` is iterated,
    ``gamma <- doc_prior + exp(E[log theta]) * ((counts / norm) @ exp(E[log topics]).T)`` with
    ``norm = exp(E[log theta]) @ exp(E[log topics])`` on the document's nonzero counts, until its mean
    absolute change is below ``tol`` or ``num_iters`` times (scikit-learn's ``mean_change_tol`` and
    ``max_doc_update_iter``). All documents are iterated together; those that have converged drop out of the
    batch.

    Example::

        >>> exp_log_topics = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
        >>> fit_doc_topics(exp_log_topics, torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]), 0.1)
        tensor([[4.1000, 0.1000],
                [0.1000, 2.1000]])

    :param Tensor exp_log_topics: ``exp(E[log topics])`` ``[K, V]``.
    :param counts: ``[B, V]`` word counts (dense, or :class:`~pyro_fusion.sparse_counts.SparseCounts`).
    :param float doc_prior: the documents' Dirichlet prior concentration.
    :returns: ``gamma`` ``[B, K]``, the documents' posterior concentrations, in the dtype of ``exp_log_topics``.
    """
    counts = as_sparse_counts(counts, exp_log_topics, "fit_doc_topics")
    num_topics = exp_log_topics.shape[0]
    word_topics = exp_log_topics.T.contiguous()
    gamma = (doc_prior + counts.lengths() / num_topics).unsqueeze(-1).expand(-1, num_topics).clone()
    active = torch.arange(len(counts))  # the documents still moving, and their concentrations
    current = gamma
    for _ in range(num_iters):
        _, weighted = counts.mixture_step(expected_log(current).exp(), word_topics)
        new = doc_prior + weighted
        moving = (new - current).abs().mean(-1) >= tol
        current = new
        num_moving = int(moving.sum())
        if num_moving == 0:
            break
        if num_moving <= len(active) // 2:  # shrink the batch once half of it has converged
            gamma[active] = current
            keep = moving.nonzero().squeeze(-1)
            counts, active, current = counts.rows(keep), active[keep], current[keep]
    gamma[active] = current
    return gamma


def _minibatches(num_docs: int, batch_size: int) -> Iterator[Tensor]:
    """
    Endless minibatches of document indices, in passes: each pass is a random permutation (torch's global RNG)
    cut into ``ceil(num_docs / batch_size)`` nearly equal parts (never a last batch of a few documents, whose
    expected counts, scaled by ``D / B``, would be very noisy).
    """
    num_batches = -(-num_docs // batch_size)
    while True:
        yield from torch.randperm(num_docs).tensor_split(num_batches)


__all__ = ["DocumentEncoder", "LDA", "expected_log", "fit_doc_topics"]

#: names that moved to the datasets and the metrics (kept for one release)
__getattr__ = moved(
    __name__,
    {
        "Corpus": "pyro_fusion.datasets.corpus:Corpus",
        **{
            name: f"pyro_fusion.metrics.topics:{name}"
            for name in (
                "document_completion", "fold_in", "split_halves", "top_words", "topic_word_matrix",
                "umass_coherence",
            )
        },
    },
)
