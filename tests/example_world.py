"""The names the API reference's examples share (shown on the API reference's first page).

Two parties trained the same Pyro model with 3 and 4 components; ``posts`` are their extracted
posteriors, ``guide`` is the second party's trained ``AutoNormal`` and ``fused`` their fusion.
"""
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal
from pyro.optim import Adam

from pyro_fusion import extract, fuse_posteriors


def model(data, K):
    """K components, each a 2-D location; ``data[k]`` observes component k."""
    with pyro.plate("components", K):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 10.0).to_event(1))
    pyro.sample("obs", dist.Normal(loc, 1.0).to_event(2), obs=data)


def handwritten_guide(data, K):
    """A mean-field guide written by hand for ``model``."""
    loc = pyro.param("loc_loc", torch.zeros(K, 2))
    scale = pyro.param("loc_scale", torch.ones(K, 2), constraint=dist.constraints.positive)
    with pyro.plate("components", K):
        pyro.sample("loc", dist.Normal(loc, scale).to_event(1))


def train_guide(data, K, num_steps=200):
    guide = AutoNormal(model)
    svi = SVI(model, guide, Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(num_steps):
        svi.step(data, K)
    return guide


posts = []
for K, shift in [(4, 0.05), (3, 0.0)]:
    pyro.clear_param_store()
    data = torch.arange(K * 2.0).reshape(K, 2) * 3 + shift
    guide = train_guide(data, K)
    posts.append(extract(guide, data, K, components={"loc": 0}))
new_data = torch.arange(8.0).reshape(4, 2) * 3 + 0.1  # a new party's data, 4 components
fused = fuse_posteriors(posts, model=model, model_args=lambda k: (torch.zeros(k, 2), k))
