"""
Fuse LDA topic models trained on separate corpora with different vocabularies, and score them.

Two problems: Brown split by genre (15 heterogeneous clients), AP split at random into J=5 clients.
Each client keeps its own vocabulary (the words of its training documents) and trains an LDA with the
mean-field Dirichlet guide by natural-gradient SVI (10 passes, minibatches of 32). Held-out documents (20%
of each client's; for AP 20% of all) are scored by document completion (proportions fitted on a random half of
each document's words, the other half scored), over the union vocabulary, for: every local model (best,
mean; words a client never saw at the prior's concentration), naive averaging of topics by index, the fused
model (nonparametric, default price: ``fused``; and with as many global topics as a client has:
``fused_parametric``), and one LDA with the same number of topics as a client trained on the pooled training
documents. Coherence: mean UMass (top 10 words) on the pooled training corpus. Weights: clients' word counts.

Prints one JSON list, one object per corpus::

    [{"corpus": "brown", "J": 15, "rows": {"fused": {"heldout_ll_per_word": ..., "coherence": ...,
      "num_topics": ...}, "fused_parametric": {...}, "pooled": {...}, "naive_average": {...},
      "local_best": {...}, "local_mean": {...}}, "support": [...], "seconds": ..., ...}, ...]

Usage: ``python benchmarks/lda_fusion.py [--small] [--corpus brown ap] [--seed 0]``.
"""

import argparse
import json
import math
import sys
import time

import pyro
import torch

from pyro_fusion import fuse_lda
from pyro_fusion.adapters.lda import average_topics_by_index, union_vocabulary
from pyro_fusion.datasets.ap import load_ap
from pyro_fusion.datasets.brown import load_brown
from pyro_fusion.datasets import Corpus
from pyro_fusion.metrics.topics import document_completion, topic_word_matrix, umass_coherence
from pyro_fusion.models.lda import LDA

TEST_FRACTION = 0.2
BATCH_SIZE = 32


def split_by_label(corpus: Corpus, generator: torch.Generator):
    """Clients = label values (genres); each keeps ``TEST_FRACTION`` of its documents (at least 1) out."""
    train, test = [], []
    for label in corpus.labels.unique().tolist():
        docs = (corpus.labels == label).nonzero().squeeze(-1)
        docs = docs[torch.randperm(len(docs), generator=generator)]
        num_test = max(1, round(TEST_FRACTION * len(docs)))
        test.append(docs[:num_test])
        train.append(docs[num_test:])
    return train, torch.cat(test)


def split_random(corpus: Corpus, num_clients: int, generator: torch.Generator):
    """A random test set, and the remaining documents dealt at random into ``num_clients`` equal parts."""
    docs = torch.randperm(len(corpus), generator=generator)
    num_test = round(TEST_FRACTION * len(corpus))
    return list(docs[num_test:].tensor_split(num_clients)), docs[:num_test]


def scores(topics: torch.Tensor, test: Corpus, train_counts: torch.Tensor, seed: int) -> dict:
    return {
        "heldout_ll_per_word": document_completion(topics, test.counts, seed=seed),
        "coherence": umass_coherence(topics, train_counts),
        "num_topics": int(topics.shape[0]),
    }


def num_steps_for(num_docs: int, passes: float, batch_size: int) -> int:
    """SVI steps for ``passes`` passes over ``num_docs`` documents (at least 50)."""
    return max(50, math.ceil(passes * num_docs / batch_size))


def run(name, corpus, train_index, test_index, num_topics, passes, seed, log, price=None):
    start = time.time()
    pyro.set_rng_seed(seed)
    clients = [corpus.subset(idx).restrict_vocabulary() for idx in train_index]
    models = []
    for j, client in enumerate(clients):
        model = LDA(num_topics, client.vocab, name=f"{name}.client{j}")
        model.fit(client, num_steps=num_steps_for(len(client), passes, BATCH_SIZE), batch_size=BATCH_SIZE)
        models.append(model)
        log(
            f"{name}: client {j} ({len(client)} docs, {len(client.vocab)} words) trained, {time.time() - start:.0f}s"
        )
    union = union_vocabulary([m.vocab for m in models])
    test = corpus.subset(test_index).reindex(union)
    pooled_train = corpus.subset(torch.cat(train_index)).reindex(union)
    pooled = LDA(num_topics, union, name=f"{name}.pooled")
    pooled.fit(
        pooled_train, num_steps=num_steps_for(len(pooled_train), passes, BATCH_SIZE), batch_size=BATCH_SIZE
    )
    log(f"{name}: pooled trained, {time.time() - start:.0f}s")

    weights = [c.num_words for c in clients]
    fusion = fuse_lda(models, weights=weights, name=f"{name}.fused", price=price)
    fused, result = fusion.model, fusion.result
    log(
        f"{name}: fused into {result.num_global} topics ({result.iterations} sweeps), {time.time() - start:.0f}s"
    )
    fusion_k = fuse_lda(models, weights=weights, name=f"{name}.fused_k", num_global=num_topics)
    fused_k, result_k = fusion_k.model, fusion_k.result
    log(f"{name}: fused into {num_topics} topics (parametric), {time.time() - start:.0f}s")
    naive = topic_word_matrix(average_topics_by_index(models, union).distributions()["topic_words"])
    local = [scores(topic_word_matrix(fused_like(m, union)), test, pooled_train.counts, seed) for m in models]
    best = max(local, key=lambda r: r["heldout_ll_per_word"])
    rows = {
        "fused": scores(fused.topic_word_matrix(), test, pooled_train.counts, seed),
        "fused_parametric": scores(fused_k.topic_word_matrix(), test, pooled_train.counts, seed),
        "pooled": scores(pooled.topic_word_matrix(), test, pooled_train.counts, seed),
        "naive_average": scores(naive, test, pooled_train.counts, seed),
        "local_best": best,
        "local_mean": {k: sum(r[k] for r in local) / len(local) for k in best},
    }
    return {
        "corpus": name,
        "J": len(models),
        "rows": rows,
        "support": result.support.tolist(),
        "support_parametric": result_k.support.tolist(),
        "train_docs": sum(len(c) for c in clients),
        "test_docs": len(test),
        "vocab": len(union),
        "topics_per_client": num_topics,
        "passes": passes,
        "price": result.price,
        "seconds": round(time.time() - start, 1),
    }


def fused_like(model: LDA, union):
    """A client's topic posterior over the union vocabulary (unseen words at the prior)."""
    from pyro_fusion.adapters.lda import topic_components

    return topic_components(model, union).distributions()["topic_words"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--small", action="store_true", help="few documents and SVI steps (a smoke run)")
    parser.add_argument("--corpus", nargs="+", default=["brown", "ap"], choices=["brown", "ap"])
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--passes", type=float, default=None, help="SVI passes over each training corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--price", type=float, default=None, help="price of a global topic (default: fuse's)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrix products: one thread is much faster on a shared machine
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    passes = args.passes or (2 if args.small else 10)
    out = []
    for name in args.corpus:
        pyro.clear_param_store()
        generator = torch.Generator().manual_seed(args.seed)
        if name == "brown":
            corpus = load_brown()
            if args.small:
                corpus = corpus.subset((corpus.labels < 4).nonzero().squeeze(-1))
            train, test = split_by_label(corpus, generator)
        else:
            corpus = load_ap()
            if args.small:
                corpus = corpus.subset(torch.arange(300))
            train, test = split_random(corpus, 5, generator)
        out.append(run(name, corpus, train, test, args.topics, passes, args.seed, log, args.price))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
