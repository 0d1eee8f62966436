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
# # Warm-starting SVI from a fused posterior
#
# Ten clients each fit a Gaussian mixture to their own 300 points and share only their trained
# guides. After fusing the guides, a model on the pooled data (or a new client's model) need
# not start from scratch: `fuse_gmms(...).guide` is a ready `AutoNormal` whose locs *and
# scales* are the fused posterior. Here we train the same model on the pooled data twice:
#
# - **cold**: `AutoNormal` with its defaults (`init_to_feasible`, `init_scale=0.1`), except that
#   the component means start at K distinct random data points, as in Pyro's GMM tutorial
#   (starting every mean at the same point leaves the components indistinguishable);
# - **warm**: `fused.guide`, the fused posterior written back into the global model;
#
# with the same optimiser and learning-rate schedule, and count the SVI steps each needs to come
# within 1% of the cold start's final ELBO.
#
# Run with `PYRO_FUSION_SMALL=1` for a reduced size; the plot is saved as `warm_start.png` in the
# folder `$PYRO_FUSION_OUTPUT` (default `outputs`).

# %%
import json
import os

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer.autoguide import AutoNormal, init_to_feasible, init_to_value

from pyro_fusion import extract, fuse_gmms
from pyro_fusion.apps import small_run
from pyro_fusion.models.gmm import fit_gmm, gmm_model, gmm_sites, run_svi

SMALL = small_run()
NUM_CLIENTS = 3 if SMALL else 10
POINTS = 100 if SMALL else 300
CLIENT_STEPS = 40 if SMALL else 150
POOLED_STEPS = 60 if SMALL else 600
WINDOW = 5  # steps over which the (single-sample) loss is averaged before comparing it to the target
OUTPUT = os.environ.get("PYRO_FUSION_OUTPUT", "outputs")
torch.set_num_threads(1)
pyro.set_rng_seed(0)

# %% [markdown]
# ## Clients: four 2-D Gaussian components, each client sees a random subset of them

# %%
generator = torch.Generator().manual_seed(0)
true_locs = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, -4.0]])
true_scale_tril = torch.linalg.cholesky(torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
datasets, kept = [], []
for j in range(NUM_CLIENTS):
    idx = torch.randperm(4, generator=generator)[: 2 + j % 3]
    labels = idx[torch.randint(len(idx), (POINTS,), generator=generator)]
    noise = torch.randn(POINTS, 2, generator=generator) @ true_scale_tril.T
    datasets.append(true_locs[labels] + noise)
    kept.append(idx)

posteriors = []
for j, data in enumerate(datasets):
    guide = fit_gmm(data, len(kept[j]), num_steps=CLIENT_STEPS, seed=j)
    posteriors.append(extract(guide, **gmm_sites(), weight=len(data)))
pyro.clear_param_store()  # the clients keep their guides; a new AutoNormal must not pick up their parameters
fused = fuse_gmms(posteriors)
print("global components found:", fused.num_global)

# %% [markdown]
# ## Cold and warm starts on the pooled data

# %%
pooled = torch.cat(datasets)
K = fused.num_global

pyro.set_rng_seed(1)
random_points = pooled[torch.randperm(len(pooled))[:K]]
cold = AutoNormal(gmm_model, init_loc_fn=init_to_value(values={"locs": random_points}, fallback=init_to_feasible))
cold_losses = run_svi(cold, pooled, K, POOLED_STEPS)

pyro.set_rng_seed(1)
warm_losses = run_svi(fused.guide, pooled, K, POOLED_STEPS)  # the same sites as gmm_model(pooled, K)


# %%
def steps_to_target(losses, target):
    """First step (1-based) whose loss, averaged over the last WINDOW steps (fewer at the
    start), is at most ``target``; None if never."""
    losses = torch.tensor(losses, dtype=torch.float64)
    totals = torch.cat([torch.zeros(1, dtype=torch.float64), losses.cumsum(0)])
    steps = torch.arange(1, len(losses) + 1)
    smoothed = (totals[steps] - totals[(steps - WINDOW).clamp(min=0)]) / steps.clamp(max=WINDOW)
    hits = (smoothed <= target).nonzero()
    return int(hits[0]) + 1 if len(hits) else None


final = sum(cold_losses[-WINDOW:]) / WINDOW
target = final + 0.01 * abs(final)
cold_steps = steps_to_target(cold_losses, target)
warm_steps = steps_to_target(warm_losses, target)

# %%
os.makedirs(OUTPUT, exist_ok=True)
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(range(1, POOLED_STEPS + 1), cold_losses, label="cold start (random data points)")
ax.plot(range(1, POOLED_STEPS + 1), warm_losses, label="warm start (fused guide)")
ax.axhline(target, color="gray", linestyle="--", label="within 1% of cold final")
low = min(min(cold_losses), min(warm_losses))
ax.set_ylim(low - 0.01 * abs(final), final + 0.2 * abs(final))  # the cold start's first steps are far above
ax.set_xlabel("SVI step")
ax.set_ylabel("loss (negative ELBO)")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUTPUT, "warm_start.png"))

# %%
print(json.dumps({"cold_steps_to_target": cold_steps, "warm_steps_to_target": warm_steps}))
