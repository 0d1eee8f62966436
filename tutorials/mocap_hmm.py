# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fusing hidden Markov models trained on separate motion-capture sequences
#
# Six people's exercise sessions were recorded with motion capture (the CMU "mocap6" data
# of Fox et al., 2014: 12 joint angles at 10 frames per second, each frame labelled with one
# of 12 exercises such as jumping jacks, squats or arm circles). Suppose every session stays
# with its owner: each owner (a *client*) may train a model on their own sequence and share
# the trained model, never the frames.
#
# Each client fits a Pyro HMM with Gaussian emissions. Its hidden states are behaviours,
# but client 3's state 5 has nothing to do with client 4's state 5. `pyro_fusion` matches
# the states of all clients by KL divergence between their posteriors, builds one global
# HMM, and we then segment every sequence with it and compare with the true exercises.
#
# Set `PYRO_FUSION_SMALL=1` to run a tiny version (two sequences, few SVI steps); the figure is saved
# as `mocap_segmentation.png` in the folder `$PYRO_FUSION_OUTPUT` (default `outputs`).

# %%
import os

from pyro_fusion import fuse_hmms
from pyro_fusion.adapters.hmm import hmm_components, refine_hmm
from pyro_fusion.apps import small_run
from pyro_fusion.apps.mocap import plot_segmentation, pooled_standardiser, segmentation_scores, window_features
from pyro_fusion.datasets import load_mocap6
from pyro_fusion.models.hmm import HMMPrior, decode, fit_gaussian_hmm

SMALL = small_run()
OUTPUT = os.environ.get("PYRO_FUSION_OUTPUT", "outputs")
STEPS = 30 if SMALL else 400
CLIENTS = [0, 3] if SMALL else range(6)

# %% [markdown]
# ## The data, as each client sees it
#
# A frame-by-frame Gaussian cannot describe a periodic exercise as one state (the arms of a
# jumping jack go up *and* down), so each client describes frame `t` by the mean and the
# standard deviation of every channel over a one-second window around it: 24 features.
#
# To compare states across clients, everybody must use the same coordinates. The clients
# share only per-feature sums `(n, Σx, Σx²)` (what secure aggregation would give) and
# standardise with the pooled mean and standard deviation.

# %%
data = load_mocap6()
raw = [data.sequences[i] for i in CLIENTS]
labels = [data.labels[i] for i in CLIENTS]
names = [data.names[i] for i in CLIENTS]
features = [window_features(x, window=10) for x in raw]
mean, std = pooled_standardiser(features)
clients = [(f - mean) / std for f in features]
for name, x, y in zip(names, clients, labels):
    print(f"{name}: {len(x)} frames, {y.unique().numel()} behaviours")

# %% [markdown]
# ## The model
#
# `pyro_fusion.models.hmm.gaussian_hmm_model` is an ordinary Pyro model:
#
# ```python
# init = pyro.sample("init", Dirichlet(...))                 # initial distribution
# with pyro.plate("states", K):
#     trans = pyro.sample("trans", Dirichlet(alpha + kappa * eye(K)))   # sticky rows
#     loc = pyro.sample("loc", Normal(0, 2).expand([D]).to_event(1))
#     scale = pyro.sample("scale", LogNormal(log 0.5, 1).expand([D]).to_event(1))
# pyro.sample("obs", DiscreteHMM(init.log(), trans.log(), Normal(loc, scale).to_event(1)), obs=x)
# ```
#
# `DiscreteHMM` sums over the hidden states exactly (vectorised forward algorithm), so SVI
# only has to handle the continuous sites, with a mean-field `AutoNormal` guide.
# Each client uses K = 8 states (its sequence shows 5 to 8 exercises); states with less than
# one expected frame would be pruned before fusion.

# %%
prior = HMMPrior()
fits = []
for name, x in zip(names, clients):
    fit = fit_gaussian_hmm([x], num_states=8, prior=prior, num_steps=STEPS, seed=0)
    fits.append(fit)
    print(f"{name}: ELBO loss {fit.losses[0]:.0f} -> {fit.losses[-1]:.0f}, "
          f"occupancy {fit.occupancy.round().int().tolist()}")

# %% [markdown]
# ## What a client shares
#
# A state is a *component* with two fields read from the guide: the Normal posterior of its
# emission mean and the Normal posterior of its log emission scale (AutoNormal's
# unconstrained space, where KL divergences are the same as in the constrained one). The
# client also sends its expected state counts (initial and transition), computed by
# forward-backward on its own data.

# %%
components = hmm_components(fits[0])
print(components)
print({field: tuple(d.batch_shape) for field, d in components.distributions().items()})

# %% [markdown]
# ## Fusion
#
# `fuse_hmms` prunes empty states, calls `pyro_fusion.fuse` on all clients' states in the
# forward direction (its default for HMMs: each global state is the moment-matched cover of its
# clients' states) with a price per global state (the default rule, from the cost of a state's
# counterpart in another client and of the runner-up there), and rebuilds the global transition matrix by summing the clients' expected transition
# counts in the global state space. Like every `fuse_*` function it returns a `FusedModel`; for
# HMMs its `params` are the global HMM and `assignments` map each client's states to global ones
# (-1: pruned).

# %%
fused = fuse_hmms(fits, prior=prior)
print(f"{fused.num_global} global states; clients per state: {fused.result.support.tolist()}")
for name, a in zip(names, fused.assignments):
    print(f"{name}: local state -> global state {a.tolist()}")

# %% [markdown]
# ## Segmenting with the fused model
#
# Every sequence is decoded with the Viterbi algorithm under the global HMM, so the same
# global state means the same behaviour in every sequence. Scores pool all frames:
# 1 − Hamming distance after the best one-to-one matching of states to behaviours, and the
# adjusted Rand index. A local model is only scored on its own sequence, an easier task.

# %%
fused_paths = [decode(fused.params, x) for x in clients]
local_paths = [fit.decode(x) for fit, x in zip(fits, clients)]
print("fused :", segmentation_scores(fused_paths, labels))
for name, path, y in zip(names, local_paths, labels):
    print(f"local {name}:", segmentation_scores([path], [y]))

# %% [markdown]
# ## Refining the fused model with federated EM
#
# Fusion is one-shot: it never looks at a frame. Starting from the fused HMM, a few rounds of
# federated EM keep its global states and adapt them to all the data: in each round every
# client runs forward-backward on its own sequence under the current global HMM and sends
# only per-state sums (`hmm_statistics`); the server adds them up and re-estimates the HMM
# (`em_update`). `refine_hmm` runs the rounds.

# %%
client_sequences = [[x] for x in clients]
refined, log_likelihoods = refine_hmm(fused.params, client_sequences, prior, num_rounds=10)
print("log-likelihood per round:", [round(v) for v in log_likelihoods])
refined_paths = [decode(refined, x) for x in clients]
print("fused + federated EM:", segmentation_scores(refined_paths, labels))

# %% [markdown]
# Both models' states against the true exercises, each sequence on its own time axis: a global state
# matched to an exercise (best one-to-one matching over all frames) takes its colour.

# %%
os.makedirs(OUTPUT, exist_ok=True)
models = {"fused (one-shot)": fused_paths, "fused + federated EM": refined_paths}
plot_segmentation(os.path.join(OUTPUT, "mocap_segmentation.png"), models, labels, names, data.behaviours);

# %% [markdown]
# The same pipeline, with the baselines (k-means on the local emission means, one HMM fitted
# on all sequences pooled), is `pyro-fusion demo` (`pyro_fusion.apps.mocap.run_demo`).
