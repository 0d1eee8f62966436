"""Bernoulli and Categorical distributions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from .base import ElementwiseFamily, base_distribution
from .vector import VectorFamily


class Bernoulli(ElementwiseFamily):
    """
    Independent Bernoullis over ``event_shape``: ``T(x) = x``, ``eta = logit(p)``,
    ``A = softplus(eta)``, ``mu = sigmoid(eta) = p``.

    Example::

        >>> fam = Bernoulli(event_shape=(2,))
        >>> fam.mean_params(fam.natural(torch.tensor([0.25, 0.5])))
        tensor([0.2500, 0.5000])

    :param event_shape: shape of one draw.
    """

    name = "bernoulli"
    stat_dim = 1
    domain_hint = "logits must be finite"

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        (logits,) = self._event_params(dist, "logits")
        return self._stack(logits)

    def natural(self, probs: Tensor) -> Tensor:
        """
        Natural parameters (logits) from probabilities of shape ``batch + event_shape``.

        :raises ValueError: unless every probability lies strictly between 0 and 1 (0 and 1
            have infinite logits).
        """
        self.require("probs", probs, (probs > 0) & (probs < 1), "strictly between 0 and 1")
        return self._stack(torch.logit(probs))

    def distribution(self, eta: Tensor) -> Distribution:
        return self._independent(torch.distributions.Bernoulli(logits=self._unstack(eta)[0]))

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        return F.softplus(coords[..., 0])

    def coord_mean(self, coords: Tensor) -> Tensor:
        return coords.sigmoid()

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        return torch.logit(coords)

    def coord_invalid(self, coords: Tensor) -> Tensor:
        return ~coords[..., 0].isfinite()


class Categorical(VectorFamily):
    """
    Independent Categoricals over the last event axis, one per index of the others:
    ``event_shape = outer + (K,)`` (torch's ``Categorical`` has ``K`` in its parameters, not in
    its event shape). ``T(x) = onehot(x)``, ``eta = log p`` (normalised log-probabilities),
    ``A = logsumexp(eta)``, ``mu = softmax(eta) = p``.

    The parametrisation is overcomplete: ``eta`` and ``eta + c`` are the same distribution.
    The Bregman formula still gives the exact KL, ``KL(p || q) = sum p (log p - log q)``,
    for any such representatives, and a weighted average of natural parameters is the log of
    the weighted geometric mean of the probabilities, whose normalisation :meth:`distribution`
    and ``A`` account for. :meth:`natural_from_mean` returns normalised log-probabilities.

    Example::

        >>> fam = Categorical(event_shape=(3,))
        >>> eta = fam.natural(torch.tensor([[0.2, 0.3, 0.5]]))
        >>> fam.kl(eta, eta)
        tensor([0.])

    :param event_shape: ``outer + (K,)``.
    """

    name = "categorical"
    domain_hint = "log-probabilities must be finite"

    def natural_from_distribution(self, dist: Distribution) -> Tensor:
        base = base_distribution(dist)
        self._check_event("logits", base.logits)
        return self._join_blocks(base.logits)

    def natural(self, probs: Tensor) -> Tensor:
        """
        Natural parameters from probabilities of shape ``batch + event_shape`` (normalised here).

        :raises ValueError: unless every probability is positive and finite (a zero
            probability has an infinite log).
        """
        self.require("probs", probs, (probs > 0) & torch.isfinite(probs), "positive and finite")
        return self.require_finite_result(self._join_blocks(probs.log() - probs.sum(-1, keepdim=True).log()), "probs")

    def distribution(self, eta: Tensor) -> Distribution:
        return self._independent_outer(torch.distributions.Categorical(logits=self._outer_coords(eta)))

    def coord_log_normalizer(self, coords: Tensor) -> Tensor:
        return coords.logsumexp(-1)

    def coord_mean(self, coords: Tensor) -> Tensor:
        return coords.softmax(-1)

    def coord_natural_from_mean(self, coords: Tensor) -> Tensor:
        return coords.log() - coords.sum(-1, keepdim=True).log()

    def coord_invalid(self, coords: Tensor) -> Tensor:
        return ~coords.isfinite().all(-1)
