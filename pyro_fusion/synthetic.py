"""Synthetic fusion problems with known ground truth (SPAHM-style generator)."""
from __future__ import annotations

from typing import List, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Normal

from .components import Components
from .expfam import PointMass


class SyntheticProblem(NamedTuple):
    """
    :ivar list clients: one :class:`Components` per client (field ``"loc"``).
    :ivar Tensor atoms: the true global means ``[L, D]``.
    :ivar list kept: per client, the indices of the true atoms it observed.
    """

    clients: List[Components]
    atoms: Tensor
    kept: List[Tensor]

    @property
    def used_atoms(self) -> Tensor:
        """True atoms that at least one client observed (what fusion can recover)."""
        return self.atoms[torch.cat(self.kept).unique()]


def gaussian_atoms_problem(
    num_atoms: int,
    num_clients: int,
    dim: int,
    noise: float = 0.1,
    posterior_scale: float = 0.1,
    atom_scale: float = None,
    keep_prob: float = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    point_scale: float = None,
) -> SyntheticProblem:
    """
    Global atoms ``~ N(0, atom_scale^2 I)`` (default ``atom_scale^2 = num_atoms``, as in
    SPAHM's generator); client ``j`` keeps atom ``i`` with probability ``p_i ~ Beta(1, 1)``
    (or a fixed ``keep_prob``), at least one atom each; a kept atom is observed as
    ``N(atom + noise * eps, posterior_scale^2)`` with its local components shuffled.
    With ``point_scale``, clients hold the observed means as point estimates instead
    (:class:`~pyro_fusion.expfam.PointMass` of that scale: half the memory of Normals).

    Example::

        >>> problem = gaussian_atoms_problem(5, 3, 2, seed=0)
        >>> len(problem.clients), problem.atoms.shape
        (3, torch.Size([5, 2]))
        >>> gaussian_atoms_problem(5, 3, 2, point_scale=0.1).clients[0]["loc"].family
        PointMass(event_shape=[2], scale=0.1)
    """
    gen = torch.Generator().manual_seed(seed)
    if atom_scale is None:
        atom_scale = num_atoms**0.5
    atoms = torch.randn(num_atoms, dim, generator=gen, dtype=torch.float64) * atom_scale
    if keep_prob is None:
        probs = torch.rand(num_atoms, generator=gen, dtype=torch.float64)
    else:
        probs = torch.full((num_atoms,), float(keep_prob), dtype=torch.float64)
    keep = torch.rand(num_clients, num_atoms, generator=gen, dtype=torch.float64) < probs
    empty = ~keep.any(1)
    keep[empty, torch.randint(num_atoms, (int(empty.sum()),), generator=gen)] = True
    clients, kept = [], []
    for j in range(num_clients):
        idx = keep[j].nonzero().squeeze(-1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        loc = atoms[idx] + noise * torch.randn(len(idx), dim, generator=gen, dtype=torch.float64)
        if point_scale is None:
            scale = torch.full_like(loc, posterior_scale)
            clients.append(Components.from_distributions({"loc": Normal(loc.to(dtype), scale.to(dtype))}))
        else:
            family = PointMass((dim,), scale=point_scale)
            clients.append(Components({"loc": (family, family.natural(loc).to(dtype))}))
        kept.append(idx)
    return SyntheticProblem(clients, atoms.to(dtype), kept)
