"""
Data sets: mocap6 and the Brown corpus ship with pyro_fusion in compact form, each with its
licence in ``data/``; AP, MNIST and Fashion-MNIST are read from a path (never downloaded).
Bag-of-words corpora are :class:`~pyro_fusion.datasets.corpus.Corpus` objects.
"""

from pyro_fusion.datasets.ap import load_ap
from pyro_fusion.datasets.brown import load_brown
from pyro_fusion.datasets.corpus import Corpus
from pyro_fusion.datasets.mnist import load_fashion_mnist, load_mnist, split_clients
from pyro_fusion.datasets.mocap6 import Mocap6, load_mocap6

__all__ = [
    "Corpus",
    "Mocap6",
    "load_ap",
    "load_brown",
    "load_fashion_mnist",
    "load_mnist",
    "load_mocap6",
    "split_clients",
]
