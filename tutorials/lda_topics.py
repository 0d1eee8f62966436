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
# # Fusing topic models trained on separate corpora
#
# Fifteen parties each hold the documents of one genre of the Brown corpus and train their own LDA
# (Pyro, mean-field Dirichlet guide), over their own vocabulary. Nobody shares documents. `pyro_fusion`
# aligns the topics into the union vocabulary (a word a party never saw keeps the prior's concentration),
# matches topics across parties by KL divergence and averages the matched ones, and returns one global
# LDA. We print the top words of the fused topics, which genres contributed to each, and plot the
# party × global-topic support matrix.
#
# Set `PYRO_FUSION_SMALL=1` for a quick run on three genres; figures go to `$PYRO_FUSION_OUTPUT`
# (default `outputs/`).

# %%
import os

import matplotlib.pyplot as plt
import pyro
import torch

from pyro_fusion import fuse_lda
from pyro_fusion.adapters.lda import topic_components
from pyro_fusion.apps import small_run
from pyro_fusion.datasets.brown import load_brown
from pyro_fusion.metrics.topics import document_completion, top_words, topic_word_matrix
from pyro_fusion.models.lda import LDA

SMALL = small_run()
OUTPUT = os.environ.get("PYRO_FUSION_OUTPUT", "outputs")
NUM_TOPICS = 4 if SMALL else 10
STEPS = 10 if SMALL else 50  # online VB steps per party; a genre (a few dozen documents) is one minibatch
os.makedirs(OUTPUT, exist_ok=True)
torch.set_num_threads(1)
pyro.set_rng_seed(0)

# %% [markdown]
# ## One corpus per genre, each with its own vocabulary
# A fifth of every genre's documents is held out for scoring, and another fifth arrives later (after fusion).

# %%
brown = load_brown()
genres = brown.label_names[:3] if SMALL else brown.label_names
generator = torch.Generator().manual_seed(0)
clients, held_out, later = [], [], []
for g, genre in enumerate(genres):
    docs = (brown.labels == brown.label_names.index(genre)).nonzero().squeeze(-1)
    docs = docs[torch.randperm(len(docs), generator=generator)]
    if SMALL:
        docs = docs[:10]
    num_test = max(1, len(docs) // 5)
    held_out.append(docs[:num_test])
    later.append(docs[num_test : 2 * num_test])
    clients.append(brown.subset(docs[2 * num_test :]).restrict_vocabulary())
    print(f"{genre:16s} {len(clients[-1]):3d} documents, {len(clients[-1].vocab):5d} words")

# %% [markdown]
# ## Each party trains its LDA
# `fit` is online variational Bayes: every minibatch's topic proportions are fitted per document by coordinate
# ascent, then the topics take a natural-gradient step.

# %%
models = []
for genre, corpus in zip(genres, clients):
    model = LDA(NUM_TOPICS, corpus.vocab, name=genre)
    model.fit(corpus, num_steps=STEPS)
    models.append(model)

# %% [markdown]
# ## Fuse
# Weights are the parties' numbers of words; the number of global topics is learned. `fuse_lda`
# returns a `FusedModel`: the global `LDA` over the union vocabulary (`.model`), its topics
# (`.posterior`) and the matching (`.result`).

# %%
fused = fuse_lda(models, weights=[c.num_words for c in clients])
result, global_lda = fused.result, fused.model
print(f"{result.num_global} global topics from {sum(m.num_topics for m in models)} local ones")

# %%
contributors = [[] for _ in range(result.num_global)]
for genre, assignment in zip(genres, result.assignments):
    for g in assignment.tolist():
        contributors[g].append(genre)
order = result.support.argsort(descending=True).tolist()
shown = order[:8]  # the topics most parties share
for g, words in zip(shown, top_words(global_lda.topic_word_matrix()[shown], global_lda.vocab, 8)):
    print(f"topic {g:3d} [{', '.join(contributors[g])}]: {' '.join(words)}")
print(f"... and {len(order) - len(shown)} more topics ({(result.support == 1).sum()} held by one party only)")

# %% [markdown]
# ## Held-out documents of every genre, by document completion

# %%
test = brown.subset(torch.cat(held_out)).reindex(global_lda.vocab)
for genre, model in zip(genres, models):
    # the local topics over the union vocabulary (words the party never saw at the prior)
    local = topic_word_matrix(topic_components(model, global_lda.vocab).distributions()["topic_words"])
    print(f"local {genre:16s} {document_completion(local, test.counts):.3f}")
fused_score = document_completion(global_lda.topic_word_matrix(), test.counts)
print(f"fused {'':16s} {fused_score:.3f}")

# %% [markdown]
# ## Warm start: the fused model goes on learning from new documents
# More documents of every genre arrive after fusion. The global LDA goes on training on them in one call:
# `fit` starts from the topics in its guide (the fused ones), and `prior=global_lda.topic_posterior()` makes the
# fused posterior the topics' prior, so the new documents add their evidence to what the parties learned.
# (Without it, online VB drifts, step by step, towards a model of the new documents alone.) Words outside the
# fused vocabulary are dropped by `reindex`.

# %%
new_documents = brown.subset(torch.cat(later)).reindex(global_lda.vocab)
global_lda.fit(new_documents, num_steps=20, batch_size=32, prior=global_lda.topic_posterior())
warm_score = document_completion(global_lda.topic_word_matrix(), test.counts)
print(f"fused, then {len(new_documents)} new documents: {warm_score:.3f} (fused alone: {fused_score:.3f})")

# %% [markdown]
# ## Which party supports which global topic

# %%
support = torch.zeros(len(genres), result.num_global)
for j, assignment in enumerate(result.assignments):
    support[j, assignment] = 1.0
fig, ax = plt.subplots(figsize=(min(16, 2 + 0.12 * result.num_global), 0.4 * len(genres) + 1.5))
ax.imshow(support[:, order].numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
ax.set_yticks(range(len(genres)), genres)
ax.set_xlabel("global topic (by support)")
ax.set_title("party × global-topic support")
fig.tight_layout()
path = os.path.join(OUTPUT, "lda_support.png")
fig.savefig(path, dpi=100)
print("saved", path)
