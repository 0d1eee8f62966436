"""
MNIST and Fashion-MNIST read from local files (IDX, optionally gzipped, or ``.npz``), and
splits of a labelled data set over federated clients.

Nothing is downloaded, and MNIST is not shipped: it is read from a directory holding
``mnist_train_first10k.npz`` (the first 10 000 training images) and the official test set
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; the directory is the ``root``
argument, else the environment variable ``PYRO_FUSION_MNIST``.
Fashion-MNIST (60 000 / 10 000 images) is read from ``/usr/share/datasets/fashion-mnist``, where
the Debian package ``dataset-fashion-mnist`` installs it, or from ``PYRO_FUSION_FASHION_MNIST``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import List, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ImageData",
    "load_fashion_mnist",
    "load_idx",
    "load_mnist",
    "split_clients",
]

PathLike = Union[str, os.PathLike]

#: the environment variable naming the MNIST directory when ``root`` is not given
MNIST_ENV = "PYRO_FUSION_MNIST"
#: where ``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST
DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

# IDX type codes (third byte of the magic number) -> numpy big-endian dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ImageData(NamedTuple):
    """
    Flattened images and their labels, as returned by :func:`load_mnist`.

    :ivar Tensor images: float tensor of shape ``(N, 784)`` with values in ``[0, 1]``.
    :ivar Tensor labels: ``torch.long`` tensor of shape ``(N,)`` with classes ``0..9``.
    """

    images: Tensor
    labels: Tensor


def load_idx(path: PathLike) -> np.ndarray:
    """
    Reads one IDX file (the format of the MNIST distribution), gzipped or not.

    :param path: file name; a name ending in ``.gz`` is decompressed.
    :returns: the array with the shape stored in the file.
    :raises FileNotFoundError: if the file does not exist.
    :raises ValueError: if the file is not a valid IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: size does not match the IDX header shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def _image_data(images: np.ndarray, labels: np.ndarray, where: Path) -> ImageData:
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{where}: expected images (N, 28, 28) and labels (N,), "
            f"got {images.shape} and {labels.shape}"
        )
    return ImageData(
        images=torch.as_tensor(images.reshape(len(images), -1).astype(np.float32) / 255.0),
        labels=torch.as_tensor(labels.astype(np.int64)),
    )


def _resolve_root(root: Optional[PathLike], env: str, default: Optional[Path], hint: str) -> Path:
    root = root if root is not None else os.environ.get(env, default)
    if root is None:
        raise FileNotFoundError(f"no data directory given: {hint}")
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"data directory not found: {path} ({hint})")
    return path


def _load_idx_pair(root: Path, prefix: str) -> ImageData:
    images = load_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = load_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return _image_data(images, labels, root / prefix)


def load_mnist(root: Optional[PathLike] = None, train: bool = True) -> ImageData:
    """
    Loads the MNIST training subset (first 10 000 images) or the official 10 000-image test set.

    Example::

        >>> train = load_mnist(mnist_root, train=True)  # or load_mnist() with $PYRO_FUSION_MNIST set
        >>> tuple(train.images.shape), int(train.labels.max())
        ((10000, 784), 9)

    :param root: directory with ``mnist_train_first10k.npz`` and ``t10k-*-ubyte.gz``; default
        ``$PYRO_FUSION_MNIST``.
    :param bool train: the training subset if True, else the test set.
    :rtype: ImageData
    :raises FileNotFoundError: naming the missing directory or file.
    """
    path = _resolve_root(
        root,
        MNIST_ENV,
        None,
        f"MNIST is not shipped with pyro_fusion: pass load_mnist(root) or set ${MNIST_ENV} to a directory "
        "with mnist_train_first10k.npz and t10k-images-idx3-ubyte.gz",
    )
    if not train:
        return _load_idx_pair(path, "t10k")
    npz_path = path / "mnist_train_first10k.npz"
    if not npz_path.is_file():
        raise FileNotFoundError(f"MNIST training subset not found: {npz_path}")
    with np.load(npz_path, allow_pickle=False) as npz:
        return _image_data(npz["images"], npz["labels"], npz_path)


def load_fashion_mnist(root: Optional[PathLike] = None, train: bool = True) -> ImageData:
    """
    Loads Fashion-MNIST (60 000 training or 10 000 test images) from its IDX files.

    Example::

        >>> load_fashion_mnist("/nowhere", train=False)  # once installed: images (10000, 784), labels (10000,)
        Traceback (most recent call last):
            ...
        FileNotFoundError: data directory not found: /nowhere (install it with `apt-get install ...`, ...)

    :param root: directory with ``train-*-ubyte.gz`` and ``t10k-*-ubyte.gz``; default
        ``$PYRO_FUSION_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``.
    :param bool train: the training set if True, else the test set.
    :rtype: ImageData
    :raises FileNotFoundError: naming the path and the Debian package that provides it.
    """
    path = _resolve_root(
        root,
        "PYRO_FUSION_FASHION_MNIST",
        DEFAULT_FASHION_MNIST_ROOT,
        "install it with `apt-get install dataset-fashion-mnist`, or pass root= "
        "or set PYRO_FUSION_FASHION_MNIST",
    )
    return _load_idx_pair(path, "train" if train else "t10k")


def split_clients(
    labels: Tensor,
    num_clients: int,
    alpha: Optional[float] = 0.5,
    seed: int = 0,
    min_size: int = 10,
) -> List[Tensor]:
    """
    Splits example indices over ``num_clients`` clients, every example going to exactly one.

    Heterogeneous (``alpha`` given): as in Yurochkin et al. (2019), for each class ``k`` the
    proportions ``p_k ~ Dirichlet(alpha, ..., alpha)`` over clients are drawn and that class's
    examples are dealt out accordingly, so each client sees its own skewed class mix; draws are
    repeated until every client has at least ``min_size`` examples. Homogeneous
    (``alpha=None``): a random permutation cut into near-equal parts.

    Example::

        >>> labels = torch.arange(100) % 10
        >>> parts = split_clients(labels, num_clients=4, alpha=None, seed=0)
        >>> [len(p) for p in parts]
        [25, 25, 25, 25]

    :param Tensor labels: integer class labels of shape ``(N,)``.
    :param int num_clients: number of clients ``J``.
    :param alpha: Dirichlet concentration, or None for a homogeneous split.
    :param int seed: seed of the split (a private generator; global RNGs are untouched).
    :param int min_size: smallest client size accepted in the heterogeneous case.
    :returns: one sorted ``torch.long`` index tensor per client.
    """
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"split_clients: labels must be a 1-d integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    if num_clients < 1 or num_clients * max(min_size, 1) > len(labels):
        raise ValueError(
            f"split_clients: cannot split {len(labels)} examples over {num_clients} clients"
        )
    rng = np.random.default_rng(seed)
    if alpha is None:
        order = torch.as_tensor(rng.permutation(len(labels)))
        return [part.sort().values for part in order.tensor_split(num_clients)]
    if not alpha > 0:
        raise ValueError(f"split_clients: alpha must be positive or None, got {alpha}")
    members_of = [(labels == k).nonzero().squeeze(-1).numpy() for k in labels.unique()]
    for _ in range(1000):
        client_of = np.empty(len(labels), dtype=np.int64)
        for members in members_of:
            proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = np.round(np.cumsum(proportions) * len(members)).astype(np.int64)
            cuts[-1] = len(members)
            sizes = np.diff(cuts, prepend=0)
            client_of[rng.permutation(members)] = np.repeat(np.arange(num_clients), sizes)
        if np.bincount(client_of, minlength=num_clients).min() >= min_size:
            client_of = torch.as_tensor(client_of)
            return [(client_of == j).nonzero().squeeze(-1) for j in range(num_clients)]
    raise ValueError(
        f"split_clients: no Dirichlet({alpha}) split gave every one of {num_clients} clients "
        f"{min_size} examples in 1000 draws; lower min_size or raise alpha"
    )
