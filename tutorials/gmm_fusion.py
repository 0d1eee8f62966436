# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fusing Gaussian mixtures trained by separate parties
#
# Several parties each fit a Bayesian Gaussian mixture in Pyro to their own data. The data
# never leave the parties; each shares only its trained mean-field guide. pyro_fusion reads the
# guides, matches their components (a party's component 0 need not be another's component 0,
# and not every party sees every cluster), and returns one global posterior, which can be
# written back as a Pyro guide or used as the prior of the next round.
#
# Set `PYRO_FUSION_SMALL=1` for a quick run.

# %%
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import ClippedAdam

from pyro_fusion import FusedPrior, extract, fuse_gmms, init_to_fused
from pyro_fusion.apps import small_run
from pyro_fusion.metrics import hausdorff
from pyro_fusion.models.gmm import fit_gmm, gmm_sites

SMALL = small_run()
POINTS = 100 if SMALL else 300
STEPS = 40 if SMALL else 200
torch.set_num_threads(1)
pyro.set_rng_seed(0)

# %% [markdown]
# ## 1. Four parties, three clusters
#
# Party `j` sees only some of the three clusters, with its own small shift of their means.

# %%
true_locs = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
seen_by_party = [[0, 1], [1, 2], [0, 2], [0, 1, 2]]
datasets = []
for j, seen in enumerate(seen_by_party):
    labels = torch.tensor(seen)[torch.randint(len(seen), (POINTS,))]
    shift = 0.1 * torch.randn(len(true_locs), 2)
    datasets.append(true_locs[labels] + shift[labels] + 0.7 * torch.randn(POINTS, 2))

# %% [markdown]
# ## 2. Each party trains its own model
#
# `gmm_model(data, K)` is an ordinary Pyro model: Dirichlet `weights`, and per component a
# Normal `locs`, a LogNormal `scales` and an LKJ `corr` site, with the assignments
# marginalised. `fit_gmm` trains an `AutoNormal` guide by SVI from a k-means++ start. Right
# after training, `extract` reads the guide: `locs`, `scales` and `corr` are split along
# dimension 0 into components, and the mixture `weights` (a simplex indexed by component) are
# rebuilt after matching. `weight=len(data)` makes larger parties count more.

# %%
posteriors = []
for j, data in enumerate(datasets):
    guide = fit_gmm(data, len(seen_by_party[j]), num_steps=STEPS, seed=j)
    posteriors.append(extract(guide, **gmm_sites(), weight=len(data)))
    print(f"party {j}: {posteriors[-1].num_components} components, locs\n{guide.locs.locs.detach()}")
pyro.clear_param_store()  # only the extracted posteriors leave the parties

# %% [markdown]
# ## 3. Fuse
#
# `fuse_gmms` matches the parties' components, averages the matched ones, and writes the
# result back as a Gaussian mixture of the global size. Nonparametric fusion finds the number of
# global components itself (the price of a new global component is set from the parties' own
# components, see `pyro_fusion.counterpart_price`). Like every `fuse_*` function it returns a
# `FusedModel`: `.model`, `.guide`, `.posterior` (here a `FusedPosterior`) and `.result`.

# %%
fused = fuse_gmms(posteriors)
fused_locs, fused_scales = fused.posterior.loc_scale("locs")
print("global components:", fused.num_global)
print("party -> global index:", [a.tolist() for a in fused.assignments])
print("parties per global component:", fused.result.support.tolist())
print("fused means:\n", fused_locs)
print("fused mixture weights:", fused.posterior.simplex["weights"][1])
print("Hausdorff distance to the true means:", hausdorff(fused_locs, true_locs))

# %% [markdown]
# The price decides when a local component opens a new global one. The default rule puts it
# between the typical cost of a component's counterpart in another party and the cost of the
# runner-up there, a component certainly different from it; `price="spread"`
# (`pyro_fusion.spread_price`) sets it from the spread between versions of one component
# found by fusing, and `price="closest-pair"` (the default before 0.2) from the cost between
# two components of one party. The user guide's "Choosing the price" compares them.

# %%
print("global components with price='spread':", fuse_gmms(posteriors, price="spread").num_global)

# %% [markdown]
# ## 4. The fused posterior as a Pyro guide
#
# `fused.model` is `gmm_model` sized to the global components (it takes the data only), and
# `fused.guide` an `AutoNormal` of it (named `FusedAutoNormal`, so it never collides with the
# parties' guides in the param store) with the fused locs and scales. It is ready for
# `Predictive`, `guide.median()` or more SVI.

# %%
pooled = torch.cat(datasets)
median = fused.guide.median(pooled)
print("global guide's median locs:\n", median["locs"])

# %% [markdown]
# ## 5. Next round: the fused posterior as a prior
#
# A new party with little data starts from what everyone learned: `FusedPrior` replaces the
# priors of the fused sites by the fused posterior, and `init_to_fused` starts its guide there.
# (The guide is built on the plain model, whose sites carry their constrained supports.)

# %%
new_data = true_locs[torch.randint(2, (POINTS // 4,))] + 0.7 * torch.randn(POINTS // 4, 2)
prior_model = FusedPrior(fused)(fused.model)
new_guide = AutoNormal(fused.model, init_loc_fn=init_to_fused(fused), init_scale=0.05)
svi = SVI(prior_model, new_guide, ClippedAdam({"lr": 0.01}), Trace_ELBO())
for step in range(STEPS):
    svi.step(new_data)
print("new party's locs (all global components, from 25% of one party's data):\n", new_guide.median(new_data)["locs"])
