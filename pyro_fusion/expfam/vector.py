"""Families of vectors over the last event axis, repeated independently over the other event axes."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import ElementwiseFamily, check_shape


class VectorFamily(ElementwiseFamily):
    """
    Independent copies of a family of ``size``-vectors: ``event_shape = outer + (size,)``,
    e.g. the rows of a transition matrix under a :class:`Dirichlet`, or one
    :class:`MultivariateNormal` per outer index. Each outer index is one coordinate of
    :class:`~pyro_fusion.expfam.base.ElementwiseFamily` with :attr:`stat_dim` natural parameters.

    Subclasses give the number of natural parameters of one vector by :meth:`block_dim`.

    :param event_shape: ``outer + (size,)``.
    """

    def __init__(self, event_shape: Sequence[int]):
        event_shape = torch.Size(check_shape(event_shape, f"{type(self).__name__} event_shape"))
        if len(event_shape) == 0 or event_shape[-1] < self.min_size:
            raise ValueError(
                f"{type(self).__name__} needs an event shape ending in a vector of size "
                f">= {self.min_size}, got {tuple(event_shape)}"
            )
        super().__init__(event_shape)

    #: smallest vector length the family is defined for
    min_size: int = 1

    @staticmethod
    def block_dim(size: int) -> int:
        """Number of natural parameters of one vector of length ``size``."""
        return size

    @property
    def size(self) -> int:
        """Length of one vector (the last event axis)."""
        return self.event_shape[-1]

    @property
    def num_coords(self) -> int:
        return self.event_shape[:-1].numel()

    @property
    def stat_dim(self) -> int:  # type: ignore[override]
        return self.block_dim(self.size)

    def _check_event(self, name: str, x: Tensor) -> None:
        """Raise :class:`ValueError` unless ``x`` has shape ``batch + event_shape``."""
        if x.shape[max(x.dim() - len(self.event_shape), 0) :] != self.event_shape:
            raise ValueError(
                f"{name} of shape {tuple(x.shape)} does not end in the event shape "
                f"{tuple(self.event_shape)} of {self!r}"
            )

    def _batch_shape(self, x: Tensor, trailing: int) -> torch.Size:
        """Batch shape of a tensor shaped ``batch + outer + (trailing dims)``."""
        return x.shape[: x.dim() - (len(self.event_shape) - 1) - trailing]

    def _join_blocks(self, *blocks: Tensor) -> Tensor:
        """Flatten blocks of shape ``batch + outer + (k_i,)`` into ``eta`` of shape ``batch + (dim,)``."""
        shape = torch.broadcast_shapes(*(b.shape[:-1] for b in blocks))
        coords = torch.cat([b.expand(shape + b.shape[-1:]) for b in blocks], -1)
        return coords.reshape(self._batch_shape(coords, 1) + (self.dim,))

    def _outer_coords(self, eta: Tensor) -> Tensor:
        """``eta`` reshaped to ``batch + outer + (stat_dim,)``."""
        return eta.reshape(eta.shape[:-1] + self.event_shape[:-1] + (self.stat_dim,))

    def _independent_outer(self, base: torch.distributions.Distribution) -> torch.distributions.Distribution:
        """Reinterpret the outer event axes of a distribution over vectors as event axes."""
        n = len(self.event_shape) - 1
        return torch.distributions.Independent(base, n) if n else base
