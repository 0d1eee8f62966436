"""
The Associated Press corpus of Blei et al. (2003) in LDA-C format: 2,246 documents, 10,473 words.

Not shipped (the text's licence is not stated; research use only): :func:`load_ap` reads ``ap.dat`` and
``vocab.txt`` from a folder given as argument or by the environment variable ``PYRO_FUSION_AP``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .corpus import Corpus

AP_ENV = "PYRO_FUSION_AP"


def load_ap(path: Optional[str] = None) -> Corpus:
    """
    Load the AP corpus from LDA-C files (each line of ``ap.dat``: ``N id:count id:count ...``).

    Example::

        >>> ap = load_ap(ap_root)  # or load_ap() with $PYRO_FUSION_AP set
        >>> ap.counts.shape
        torch.Size([2246, 10473])

    :param str path: folder holding ``ap.dat`` and ``vocab.txt``; default ``$PYRO_FUSION_AP``.
    :raises FileNotFoundError: if the files are not there (the corpus is not shipped with the package).
    :raises ValueError: if ``ap.dat`` is malformed or refers to words outside ``vocab.txt``.
    """
    path = path or os.environ.get(AP_ENV)
    if not path:
        raise FileNotFoundError(
            f"no AP folder given: the AP corpus is not shipped with pyro_fusion; pass the folder holding ap.dat "
            f"and vocab.txt (LDA-C format, e.g. from blei-lab/lda-c's example/ap.tgz) as load_ap(path) or set ${AP_ENV}"
        )
    data_file, vocab_file = os.path.join(path, "ap.dat"), os.path.join(path, "vocab.txt")
    for f in (data_file, vocab_file):
        if not os.path.isfile(f):
            raise FileNotFoundError(
                f"AP corpus file {f} not found: the AP corpus is not shipped with pyro_fusion; pass the folder "
                f"holding ap.dat and vocab.txt (LDA-C format, e.g. from blei-lab/lda-c's example/ap.tgz) "
                f"as load_ap(path) or set ${AP_ENV}"
            )
    with open(vocab_file, encoding="utf-8") as f:
        vocab = tuple(line.strip() for line in f if line.strip())
    rows, cols, vals = [], [], []
    num_docs = 0
    with open(data_file, encoding="utf-8") as f:
        for d, line in enumerate(f):
            num_docs = d + 1
            fields = line.split()
            try:
                pairs = [tuple(map(int, p.split(":"))) for p in fields[1:]]
            except ValueError:
                raise ValueError(f"{data_file}, line {d + 1}: expected 'N id:count ...'") from None
            if not fields or int(fields[0]) != len(pairs):
                raise ValueError(f"{data_file}, line {d + 1}: the leading count does not match the entries")
            for w, c in pairs:
                rows.append(d)
                cols.append(w)
                vals.append(c)
    cols_t = torch.tensor(cols)
    if len(cols) and (cols_t.min() < 0 or cols_t.max() >= len(vocab)):
        raise ValueError(f"{data_file}: word ids outside the {len(vocab)} words of {vocab_file}")
    counts = torch.zeros(num_docs, len(vocab))
    counts.index_put_((torch.tensor(rows), cols_t), torch.tensor(vals, dtype=torch.float32), accumulate=True)
    return Corpus(counts, vocab)
