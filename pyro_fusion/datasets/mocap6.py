"""
The CMU "mocap6" exercise data of Fox et al. (2014), shipped inside the package.

Six motion-capture sequences (CMU subjects 13 and 14) of 12 joint-angle channels at 10 fps,
2064 frames in all, each frame labelled with one of 12 exercise behaviours. The file
``data/mocap6.npz`` is built by ``scripts/build_mocap6.py`` from the full-precision bnpy release
(stored as float32, max abs error 4e-6 on values of scale 10-100); licences in
``data/LICENSE.mocap6.txt``.
"""

from __future__ import annotations

import importlib.resources
from typing import List, NamedTuple

import numpy as np
import torch

__all__ = ["Mocap6", "load_mocap6"]


class Mocap6(NamedTuple):
    """
    The mocap6 data set, as returned by :func:`load_mocap6`.

    :ivar list sequences: one float tensor of shape ``(T_i, 12)`` per sequence.
    :ivar list labels: one ``torch.long`` tensor of shape ``(T_i,)`` per sequence, with the
        per-frame behaviour index in ``0..11``.
    :ivar list names: the CMU trial name of each sequence, e.g. ``"13_29"``.
    :ivar list behaviours: the 12 behaviour names, indexed by label.
    :ivar list channels: the 12 joint-angle channel names, indexed by column.
    """

    sequences: List[torch.Tensor]
    labels: List[torch.Tensor]
    names: List[str]
    behaviours: List[str]
    channels: List[str]


def load_mocap6(dtype: torch.dtype = torch.float32) -> Mocap6:
    """
    Loads the mocap6 segmentation data set from the package (no download, no ``../shared``).

    Example::

        >>> data = load_mocap6()
        >>> data.names[0], tuple(data.sequences[0].shape), data.behaviours[data.labels[0][0]]
        ('13_29', (383, 12), 'JumpJack')

    :param torch.dtype dtype: floating dtype of the returned sequences.
    :returns: the sequences, per-frame labels and names.
    :rtype: Mocap6
    """
    if not dtype.is_floating_point:
        raise ValueError(f"load_mocap6: dtype must be a floating dtype, got {dtype}")
    resource = importlib.resources.files(__package__).joinpath("data").joinpath("mocap6.npz")
    with resource.open("rb") as stream, np.load(stream, allow_pickle=False) as npz:
        observations = torch.as_tensor(npz["observations"]).to(dtype)
        labels = torch.as_tensor(npz["labels"].astype(np.int64))
        lengths = npz["lengths"].tolist()
        names, behaviours, channels = (npz[key].tolist() for key in ("names", "behaviours", "channels"))
    return Mocap6(
        sequences=list(observations.split(lengths)),
        labels=list(labels.split(lengths)),
        names=names,
        behaviours=behaviours,
        channels=channels,
    )
