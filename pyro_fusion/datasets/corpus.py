"""Bag-of-words corpora, the data of topic models (:class:`~pyro_fusion.models.lda.LDA`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from torch import Tensor

__all__ = ["Corpus"]


@dataclass(frozen=True)
class Corpus:
    """
    A bag-of-words corpus: dense word counts, the vocabulary, and an optional label per document.

    Example::

        >>> c = Corpus(torch.tensor([[2., 0., 1.], [0., 3., 0.]]), ("apple", "pear", "plum"))
        >>> c.restrict_vocabulary().vocab
        ('apple', 'pear', 'plum')
        >>> c.subset(torch.tensor([1])).restrict_vocabulary().vocab
        ('pear',)

    :param Tensor counts: word counts ``[D, V]`` (float).
    :param tuple vocab: the ``V`` words, in column order.
    :param Tensor labels: optional ``LongTensor [D]`` (e.g. the genre of each document).
    :param tuple label_names: names of the label values.
    """

    counts: Tensor
    vocab: Tuple[str, ...]
    labels: Optional[Tensor] = None
    label_names: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.counts.dim() != 2 or self.counts.shape[1] != len(self.vocab):
            raise ValueError(
                f"counts of shape {tuple(self.counts.shape)} do not match a vocabulary of {len(self.vocab)} words"
            )
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("the vocabulary has repeated words")
        if self.labels is not None and self.labels.shape != self.counts.shape[:1]:
            raise ValueError(f"labels of shape {tuple(self.labels.shape)} for {len(self.counts)} documents")

    def __len__(self) -> int:
        return self.counts.shape[0]

    @property
    def num_words(self) -> int:
        """Total number of word tokens."""
        return int(self.counts.sum())

    def subset(self, index: Tensor) -> "Corpus":
        """The documents ``index`` (same vocabulary)."""
        labels = None if self.labels is None else self.labels[index]
        return Corpus(self.counts[index], self.vocab, labels, self.label_names)

    def restrict_vocabulary(self) -> "Corpus":
        """Drop the words that occur in no document (a client's own vocabulary)."""
        keep = (self.counts.sum(0) > 0).nonzero().squeeze(-1)
        return Corpus(
            self.counts[:, keep], tuple(self.vocab[i] for i in keep.tolist()), self.labels, self.label_names
        )

    def reindex(self, vocab: Sequence[str]) -> "Corpus":
        """The same documents over another vocabulary; words absent from ``vocab`` are dropped."""
        vocab = tuple(vocab)
        position = {w: i for i, w in enumerate(vocab)}
        src = [i for i, w in enumerate(self.vocab) if w in position]
        dst = [position[self.vocab[i]] for i in src]
        counts = self.counts.new_zeros(len(self), len(vocab))
        counts[:, dst] = self.counts[:, src]
        return Corpus(counts, vocab, self.labels, self.label_names)
