"""
Bayesian multilayer perceptrons for classification, their per-client SVI training and
their posterior predictive evaluation.

:class:`BayesianMLP` is a :class:`~pyro.nn.PyroModule` with a ``Normal(0, prior_scale)``
prior on every weight and bias (sites ``hidden.<k>.weight``, ``hidden.<k>.bias``,
``output.weight``, ``output.bias``). Its forward pass accepts weights with leading sample
dimensions, so a whole posterior predictive is one batched computation.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn

from .training import svi_steps

__all__ = [
    "BayesianLinear",
    "BayesianMLP",
    "Evaluation",
    "delta_guide",
    "evaluate",
    "normal_guide",
    "normal_posterior",
    "predictive_probs",
    "train_svi",
]


class BayesianLinear(PyroModule):
    """
    An affine layer ``x @ weight.T + bias`` with ``Normal(0, prior_scale)`` priors.

    ``weight`` may carry leading sample dimensions ``(S, out, in)``; ``x`` then has shape
    ``(S, N, in)`` or ``(N, in)``.

    :param int in_features: input size.
    :param int out_features: output size.
    :param float prior_scale: standard deviation of the prior of every weight and bias.
    """

    def __init__(self, in_features: int, out_features: int, prior_scale: float = 1.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = PyroSample(
            dist.Normal(0.0, prior_scale).expand([out_features, in_features]).to_event(2)
        )
        self.bias = PyroSample(dist.Normal(0.0, prior_scale).expand([out_features]).to_event(1))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.transpose(-1, -2) + self.bias.unsqueeze(-2)


class BayesianMLP(PyroModule):
    """
    A ReLU multilayer perceptron with a categorical likelihood and Normal priors.

    Example::

        >>> model = BayesianMLP(784, hidden=(100,), out_features=10)
        >>> guide = AutoNormal(model)
        >>> logits = model(torch.zeros(5, 784))
        >>> tuple(logits.shape), model.site_names()[0]
        ((5, 10), 'hidden.0.weight')

    With ``label_prior``, the likelihood is the label-shift model
    ``Categorical(logits = f(x) + log label_prior)``: the network ``f`` scores how typical
    ``x`` is of each class, ``p(x | y)``, which clients share, while ``label_prior`` is this
    client's own class mix ``p(y)``. Clients whose label mixes differ then learn posteriors
    over the same function ``f`` (on the classes they saw) and fuse well without
    ``class_counts``; to predict for another mix, e.g. balanced test data, use a network
    without (or with that) ``label_prior`` and the same posterior::

        >>> skewed = BayesianMLP(784, label_prior=[5.0, 1.0] + [0.5] * 8)
        >>> balanced = BayesianMLP(784)
        >>> weights = {name: torch.zeros(shape) for name, shape in balanced.site_shapes().items()}
        >>> with pyro.poutine.condition(data=weights):
        ...     shift = skewed(torch.zeros(1, 784)) - balanced(torch.zeros(1, 784))
        >>> shift.exp()[0, :3]
        tensor([0.5000, 0.1000, 0.0500])

    :param int in_features: input size.
    :param hidden: widths of the hidden layers (at least one).
    :param int out_features: number of classes.
    :param float prior_scale: standard deviation of the prior of every weight and bias.
    :param label_prior: optional positive ``(out_features,)`` class frequencies or counts of
        the data (normalised here, a constant; smooth zero counts, e.g. ``counts + 1``).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (100,),
        out_features: int = 10,
        prior_scale: float = 1.0,
        label_prior: Union[Tensor, Sequence[float], None] = None,
    ):
        if not hidden or min(hidden) < 1:
            raise ValueError(
                f"BayesianMLP needs at least one hidden layer of positive width, got {hidden}"
            )
        if label_prior is not None:
            try:
                label_prior = torch.as_tensor(label_prior, dtype=torch.get_default_dtype())
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"BayesianMLP: label_prior is not numeric: {e}") from None
            label_prior = label_prior.detach()  # a constant, never part of a graph
            if label_prior.shape != (out_features,) or not bool(
                (label_prior > 0).all() & label_prior.isfinite().all()
            ):
                got = f"shape {tuple(label_prior.shape)}"
                if label_prior.numel():
                    got += f", smallest {label_prior.min().item():g}"
                raise ValueError(
                    f"BayesianMLP: label_prior must be {out_features} positive finite numbers, "
                    f"got {got}"
                )
        super().__init__()
        log_prior = None if label_prior is None else (label_prior / label_prior.sum()).log()
        self.register_buffer("log_label_prior", log_prior, persistent=False)
        self.in_features = in_features
        self.widths = tuple(int(h) for h in hidden)
        self.out_features = out_features
        self.prior_scale = float(prior_scale)
        sizes = (in_features,) + self.widths
        self.hidden = PyroModule[nn.ModuleList](
            [BayesianLinear(a, b, prior_scale) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.output = BayesianLinear(sizes[-1], out_features, prior_scale)

    def site_names(self) -> list:
        """Names of the latent sites, input layer first."""
        layers = [f"hidden.{k}" for k in range(len(self.widths))] + ["output"]
        return [f"{layer}.{part}" for layer in layers for part in ("weight", "bias")]

    def site_shapes(self) -> Dict[str, torch.Size]:
        """Shape of every latent site."""
        sizes = (self.in_features,) + self.widths + (self.out_features,)
        shapes = {}
        for name, fan_in, fan_out in zip(self.site_names()[::2], sizes[:-1], sizes[1:]):
            shapes[name] = torch.Size([fan_out, fan_in])
            shapes[name[: -len("weight")] + "bias"] = torch.Size([fan_out])
        return shapes

    def forward(
        self, x: Tensor, y: Optional[Tensor] = None, num_data: Optional[int] = None
    ) -> Tensor:
        """
        :param Tensor x: inputs of shape ``(N, in_features)``.
        :param Tensor y: labels of shape ``(N,)``, observed if given.
        :param int num_data: size of the full data set when ``x`` is a minibatch (scales the
            likelihood); defaults to ``N``.
        :returns: logits of shape ``(..., N, out_features)`` (including ``log label_prior``).
        """
        h = x
        for layer in self.hidden:
            h = layer(h).relu()
        logits = self.output(h)
        if self.log_label_prior is not None:
            logits = logits + self.log_label_prior
        size = x.shape[-2]
        with pyro.plate("data", num_data or size, subsample=torch.arange(size)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    def init_locs(self, seed: int = 0) -> Dict[str, Tensor]:
        """
        Random starting means for a guide: weights ``Normal(0, 1/sqrt(fan_in))``, biases 0,
        drawn from a private generator (the same ``seed`` gives the same network).
        """
        generator = torch.Generator().manual_seed(seed)
        locs = {}
        for name, shape in self.site_shapes().items():
            if name.endswith("weight"):
                locs[name] = torch.randn(shape, generator=generator) / shape[-1] ** 0.5
            else:
                locs[name] = torch.zeros(shape)
        return locs


def train_svi(
    model: Callable,
    guide: PyroModule,
    x: Tensor,
    y: Tensor,
    num_epochs: int = 10,
    batch_size: int = 100,
    lr: float = 0.01,
    seed: int = 0,
    progress: bool = False,
) -> list:
    """
    Trains ``guide`` by SVI (:class:`~pyro.infer.TraceMeanField_ELBO`, Adam) on minibatches.

    Runs inside a private parameter-store scope, so the global store is left as it was and
    several clients' guides, whose parameters have the same names, never see each other's
    values; the trained values stay in the guide module.

    :param model: the model, e.g. a :class:`BayesianMLP`, possibly wrapped in a handler such
        as :class:`~pyro_fusion.PosteriorPrior`.
    :param guide: a guide of ``model`` (e.g. :class:`~pyro.infer.autoguide.AutoNormal`).
    :param Tensor x: inputs ``(N, in_features)``.
    :param Tensor y: labels ``(N,)``.
    :param int num_epochs: passes over the data.
    :param int batch_size: minibatch size.
    :param float lr: Adam learning rate.
    :param int seed: seed of the minibatch order and of the ELBO's samples.
    :param bool progress: show a progress bar over the SVI steps.
    :returns: the ELBO loss per example after each epoch (the mean over its steps).
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"train_svi: x and y must be non-empty and of equal length, got {len(x)} and {len(y)}"
        )
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(x) // batch_size)
    batches = (
        (x[batch], y[batch])
        for _ in range(num_epochs)
        for batch in torch.randperm(len(x), generator=generator).split(batch_size)
    )
    with pyro.get_param_store().scope(), torch.random.fork_rng():
        torch.manual_seed(seed)
        steps = svi_steps(
            model, guide, pyro.optim.Adam({"lr": lr}), TraceMeanField_ELBO(), batches,
            kwargs={"num_data": len(x)}, num_steps=num_epochs * per_epoch, progress=progress, desc="BNN fit",
        )
    return [sum(steps[e * per_epoch : (e + 1) * per_epoch]) / len(x) / per_epoch for e in range(num_epochs)]


def normal_posterior(guide: AutoNormal) -> Dict[str, dist.Normal]:
    """
    The per-site ``Normal(loc, scale)`` of a trained :class:`~pyro.infer.autoguide.AutoNormal`,
    read from its public ``locs`` and ``scales`` modules (detached copies).

    :param AutoNormal guide: a guide that has been run at least once.
    :returns: site name -> Normal with the site's shape.
    """
    if getattr(guide, "prototype_trace", None) is None:
        raise ValueError("normal_posterior: the guide has not been run yet (no parameters)")
    posterior = {}
    for name, _ in guide.prototype_trace.iter_stochastic_nodes():
        loc = _get(guide.locs, name).detach().clone()
        scale = _get(guide.scales, name).detach().clone()
        posterior[name] = dist.Normal(loc, scale)
    return posterior


def _get(module: nn.Module, name: str) -> Tensor:
    for part in name.split("."):
        module = getattr(module, part)
    return module


def predictive_probs(
    model: BayesianMLP,
    posterior: Dict[str, dist.Distribution],
    x: Tensor,
    num_samples: int = 32,
    seed: int = 0,
) -> Tensor:
    """
    Posterior predictive class probabilities, averaged over ``num_samples`` weight draws.

    A posterior with :class:`~pyro.distributions.Delta` (or zero-scale) sites gives the point
    estimate's predictions.

    :param BayesianMLP model: the network.
    :param dict posterior: site name -> distribution of the site's shape.
    :param Tensor x: inputs ``(N, in_features)``.
    :param int num_samples: number of weight draws ``S``.
    :param int seed: seed of the draws (the global RNG state is restored afterwards).
    :returns: probabilities of shape ``(N, out_features)``.
    """
    missing = set(model.site_names()) - set(posterior)
    if missing:
        raise ValueError(f"predictive_probs: posterior lacks sites {sorted(missing)}")
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        draws = {name: posterior[name].sample((num_samples,)) for name in model.site_names()}
        with poutine.block(), poutine.condition(data=draws):
            logits = model(x)
        return logits.softmax(-1).mean(0)


class Evaluation(NamedTuple):
    """Test accuracy (fraction) and negative log-likelihood (nats per example)."""

    accuracy: float
    nll: float


def evaluate(probs: Tensor, labels: Tensor) -> Evaluation:
    """
    Accuracy and mean negative log predictive probability of ``labels``.

    :param Tensor probs: predictive probabilities ``(N, C)``.
    :param Tensor labels: true classes ``(N,)``.
    """
    accuracy = (probs.argmax(-1) == labels).double().mean().item()
    picked = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    nll = -picked.clamp(min=torch.finfo(probs.dtype).tiny).log().double().mean().item()
    return Evaluation(accuracy, nll)


def normal_guide(model: BayesianMLP, posterior: Dict[str, dist.Normal]) -> AutoNormal:
    """
    An :class:`~pyro.infer.autoguide.AutoNormal` for ``model`` whose locs and scales are
    those of ``posterior`` (e.g. a fused posterior), ready for prediction or fine-tuning.

    Its parameters are set on the guide module; they enter the global parameter store the
    first time the guide runs, so run it in its own :meth:`~pyro.params.param_store.ParamStoreDict.scope`
    when another guide of a network with the same site names lives in the store.

    :param BayesianMLP model: a network whose site shapes match ``posterior``.
    :param dict posterior: site name -> ``Normal(loc, scale)``.
    """
    _check_shapes(model, posterior, "normal_guide")
    locs = {name: d.loc.detach().clone() for name, d in posterior.items()}  # not aliased
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=locs))
    with pyro.get_param_store().scope(), poutine.block():
        guide(torch.zeros(1, model.in_features), torch.zeros(1, dtype=torch.long))
    for name, d in posterior.items():
        _set(guide.scales, name, d.scale.detach().clone())
    return guide


def delta_guide(model: BayesianMLP, values: Dict[str, Tensor]) -> AutoDelta:
    """
    An :class:`~pyro.infer.autoguide.AutoDelta` (point estimate) for ``model`` at ``values``.

    :param BayesianMLP model: a network whose site shapes match ``values``.
    :param dict values: site name -> tensor.
    """
    _check_shapes(
        model, {name: dist.Delta(v, event_dim=v.dim()) for name, v in values.items()}, "delta_guide"
    )
    guide = AutoDelta(
        model, init_loc_fn=init_to_value(values={k: v.detach().clone() for k, v in values.items()})
    )
    with pyro.get_param_store().scope(), poutine.block():
        guide(torch.zeros(1, model.in_features), torch.zeros(1, dtype=torch.long))
    return guide


def _check_shapes(model: BayesianMLP, posterior: Dict[str, dist.Distribution], where: str) -> None:
    shapes = model.site_shapes()
    if set(posterior) != set(shapes):
        raise ValueError(f"{where}: expected sites {sorted(shapes)}, got {sorted(posterior)}")
    for name, d in posterior.items():
        if d.batch_shape + d.event_shape != shapes[name]:
            raise ValueError(
                f"{where}: site {name!r} has shape {tuple(d.batch_shape + d.event_shape)}, "
                f"the model expects {tuple(shapes[name])}"
            )


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(_get(module, parent), leaf, value)
