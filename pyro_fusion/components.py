"""Components: the exchangeable units that fusion matches (HMM states, topics, hidden units)."""
from __future__ import annotations

from typing import Dict, Iterator, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from .expfam import ExponentialFamily, family_of

#: the dtypes natural parameters may have (half precision and integers cannot hold costs)
FLOAT_DTYPES = (torch.float32, torch.float64)


class Field(NamedTuple):
    """One named factor of a component: its family and natural parameters ``[L, family.dim]``."""

    family: ExponentialFamily
    natural: Tensor


class Components:
    """
    ``L`` components, each a product of named exponential-family fields.

    The KL divergence between two components is the sum over fields of the fields' KL
    divergences, so the whole set is described by one concatenated natural-parameter
    matrix :meth:`concat` of shape ``[L, sum of field dims]``.

    Example::

        >>> from torch.distributions import Dirichlet, Normal
        >>> states = Components.from_distributions({
        ...     "loc": Normal(torch.zeros(4, 12), torch.ones(4, 12)),
        ...     "trans": Dirichlet(torch.ones(4, 5)),
        ... })
        >>> len(states), states.dim
        (4, 29)

    :param fields: mapping from field name to ``(family, natural parameters [L, dim])``,
        float32 or float64 tensors.
    :raises ValueError: naming the field if its family, dtype or shape is wrong.
    """

    def __init__(self, fields: Mapping[str, Tuple[ExponentialFamily, Tensor]]):
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError("Components need a mapping of at least one field")
        self.fields: Dict[str, Field] = {}
        sizes = set()
        for name, (family, natural) in fields.items():
            if not isinstance(family, ExponentialFamily):
                raise ValueError(f"field {name!r}: expected an ExponentialFamily, got {type(family).__name__}")
            if not isinstance(natural, Tensor) or natural.dtype not in FLOAT_DTYPES:
                got = natural.dtype if isinstance(natural, Tensor) else type(natural).__name__
                raise ValueError(f"field {name!r}: natural parameters must be a float32 or float64 tensor, got {got}")
            if natural.dim() != 2 or natural.shape[-1] != family.dim:
                raise ValueError(
                    f"field {name!r}: expected natural parameters of shape [L, {family.dim}] "
                    f"for {family!r}, got {tuple(natural.shape)}"
                )
            self.fields[name] = Field(family, natural)
            sizes.add(natural.shape[0])
        if len(sizes) != 1:
            raise ValueError(f"fields have different numbers of components: {sorted(sizes)}")

    @classmethod
    def from_distributions(
        cls,
        distributions: Mapping[str, Distribution],
        point_scale: Optional[float] = None,
    ) -> "Components":
        """
        Components from torch distributions whose first batch dimension indexes components.

        :param dict distributions: field name -> distribution of batch shape ``[L, ...]``.
        :param float point_scale: scale with which :class:`~pyro.distributions.Delta` fields
            (point estimates) are read as :class:`~pyro_fusion.expfam.PointMass`.
        """
        fields = {}
        for name, dist in distributions.items():
            if not dist.batch_shape:
                raise ValueError(f"field {name!r}: distribution has no component (batch) dimension")
            try:
                family = family_of(dist, point_scale=point_scale)
                natural = family.natural_from_distribution(dist)
            except ValueError as e:
                raise ValueError(f"field {name!r}: {e}") from e
            fields[name] = (family, natural.reshape(dist.batch_shape[0], family.dim))
        return cls(fields)

    def __len__(self) -> int:
        return next(iter(self.fields.values())).natural.shape[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    @property
    def families(self) -> Dict[str, ExponentialFamily]:
        return {name: f.family for name, f in self.fields.items()}

    @property
    def dim(self) -> int:
        return sum(f.family.dim for f in self.fields.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.fields.values())).natural.dtype

    def concat(self) -> Tensor:
        """All natural parameters side by side, shape ``[L, dim]`` (for a single field, its
        own tensor: do not modify it in place)."""
        if len(self.fields) == 1:
            return next(iter(self.fields.values())).natural
        return torch.cat([f.natural for f in self.fields.values()], -1)

    def with_natural(self, natural: Tensor) -> "Components":
        """Components with the same fields and new concatenated natural parameters ``[M, dim]``."""
        chunks = natural.split([f.family.dim for f in self.fields.values()], -1)
        return Components({n: (f.family, c) for (n, f), c in zip(self.fields.items(), chunks)})

    def select(self, index: Tensor) -> "Components":
        """The components at ``index`` (a LongTensor), in that order."""
        return self.with_natural(self.concat()[index])

    def distributions(self) -> Dict[str, Distribution]:
        """Field name -> torch distribution with batch shape ``[L]``."""
        return {n: f.family.distribution(f.natural) for n, f in self.fields.items()}

    def check(self, where: str) -> None:
        """Raise :class:`ValueError` naming ``where`` and the field if any parameter is invalid."""
        for name, f in self.fields.items():
            f.family.check(f.natural, f"{where}, field {name!r}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {f.family!r}" for n, f in self.fields.items())
        return f"Components(L={len(self)}, {fields})"


def check_client(j: int, client, ref: Components, ref_index: int = 0) -> None:
    """Checks client ``j``'s components, and that its fields and families are those of ``ref``
    (client ``ref_index``); errors name the client and field."""
    if not isinstance(client, Components):
        raise ValueError(f"client {j}: expected Components, got {type(client).__name__}")
    if len(client) == 0:
        raise ValueError(f"client {j} has zero components")
    if list(client.fields) != list(ref.fields):
        raise ValueError(
            f"client {j} has fields {list(client.fields)}, client {ref_index} has {list(ref.fields)}"
        )
    for name, f in client.fields.items():
        ref_family = ref.fields[name].family
        if type(f.family) is not type(ref_family):
            raise ValueError(
                f"client {j}, field {name!r}: family {f.family.name} differs from "
                f"client {ref_index}'s {ref_family.name} (one family per field)"
            )
        if f.family != ref_family:
            raise ValueError(
                f"client {j}, field {name!r}: {f.family!r} differs from client {ref_index}'s "
                f"{ref_family!r} (event shapes must agree)"
            )
    client.check(f"client {j}")


def check_clients(clients: Sequence[Components]) -> None:
    """Checks every client (:func:`check_client`) against client 0."""
    if len(clients) == 0:
        raise ValueError("fuse needs at least one client")
    for j, client in enumerate(clients):
        check_client(j, client, clients[0])


def client_weights(weights, num_clients: int) -> Tensor:
    """Validated client weights normalised to mean 1 (uniform when ``weights`` is None)."""
    if weights is None:
        return torch.ones(num_clients, dtype=torch.float64)
    try:
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"weights must be positive numbers, one per client, got {weights!r:.200}") from error
    if w.numel() != num_clients:
        raise ValueError(f"got {w.numel()} weights for {num_clients} clients")
    for j in range(num_clients):
        if not (torch.isfinite(w[j]) and w[j] > 0):
            raise ValueError(f"client {j}: weight must be positive and finite, got {float(w[j])}")
    return w / w.mean()


def check_prior(prior: Components, client: Components) -> None:
    """Checks that ``prior`` is one component with the fields and families of ``client`` (its
    errors call the prior client 1)."""
    check_clients([client, prior])
    if len(prior) != 1:
        raise ValueError(f"prior must be one component, got {len(prior)}")
