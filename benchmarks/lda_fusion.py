"""
Fuse LDA topic models trained on separate corpora with different vocabularies, and score them.

Two problems: Brown split by genre (15 heterogeneous clients), AP split at random into J=5 clients.
Each client keeps its own vocabulary (the words of its training documents) and trains an LDA with the
mean-field Dirichlet guide by online variational Bayes (``LDA.fit``: 10 passes, minibatches of at most 128,
at least 50 steps). Held-out documents (20% of each client's; for AP 20% of all) are scored by document
completion (proportions fitted on a random half of each document's words, the other half scored), over the
union vocabulary, for: every local model (best, mean; words a client never saw at the prior's concentration),
naive averaging of topics by index, the fused model (nonparametric, default price: ``fused``; and with as many
global topics as a client has: ``fused_parametric``), one LDA with as many topics as a client trained on the
pooled training documents for exactly the same passes (``pooled``), one with as many topics as ``fused``
found (``pooled_matched``: the like-for-like comparison for ``fused``), and scikit-learn's online LDA on the
pooled documents (``sklearn_pooled``: same priors, topics and passes, ``learning_offset=10``,
``learning_decay=0.7``, batches of 128, documents in a seeded random order, one thread; needs the ``bench``
extra). Coherence: mean UMass (top 10 words) on the pooled training corpus. Weights: clients' word counts.

Every row reports ``fit_cpu_s`` (CPU seconds to produce its topics: for the local rows one client's
training, on average for ``local_mean``; for fused and naive rows all clients' training plus the fusion) and
``score_cpu_s`` / ``score_wall_s`` (its document completion; the held-out counts are made sparse once for all
rows, and ``score_cpu_s_all_rows`` of a run includes that). Prints one JSON object::

    {"runs": [{"corpus": "brown", "seed": 0, "J": 15, "rows": {"fused": {"heldout_ll_per_word": ...,
      "coherence": ..., "num_topics": ..., "fit_cpu_s": ..., "score_cpu_s": ..., "score_wall_s": ...}, ...},
      "support": [...], ...}, ...],
     "summary": {"brown": {"fused": {"heldout_ll_per_word": {"mean": ..., "std": ..., "min": ..., "max": ...},
      "fit_cpu_s": ..., "score_cpu_s": ..., "num_topics": ...}, ...}, ...}, "environment": {...}}

Usage: ``python benchmarks/lda_fusion.py [--small] [--corpus brown ap] [--seeds 0 1 2]``.
"""

import argparse
import json
import math
import statistics
import sys
import time

import pyro
import torch

from _environment import data_path, run_environment
from pyro_fusion import fuse_lda
from pyro_fusion.adapters.lda import average_topics_by_index, topic_components, union_vocabulary
from pyro_fusion.datasets import Corpus
from pyro_fusion.datasets.ap import load_ap
from pyro_fusion.datasets.brown import load_brown
from pyro_fusion.metrics.topics import document_completion, topic_word_matrix, umass_coherence
from pyro_fusion.models.lda import LDA
from pyro_fusion.price import RULES
from pyro_fusion.sparse_counts import SparseCounts

TEST_FRACTION = 0.2
BATCH_SIZE = 128
TOPIC_PRIOR = 0.05


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


def num_steps_for(num_docs: int, passes: float, batch_size: int, min_steps: int = 0) -> int:
    """Minibatch steps for ``passes`` passes over ``num_docs`` documents (at least ``min_steps``)."""
    return max(min_steps, math.ceil(passes * math.ceil(num_docs / batch_size)))


class Clock:
    """CPU and wall seconds since creation."""

    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def seconds(self):
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


def scores(topics: torch.Tensor, test: SparseCounts, train_counts: torch.Tensor, seed: int, fit_cpu_s: float):
    clock = Clock()
    heldout = document_completion(topics, test, seed=seed)
    score_cpu, score_wall = clock.seconds()
    return {
        "heldout_ll_per_word": heldout,
        "coherence": umass_coherence(topics, train_counts),
        "num_topics": int(topics.shape[0]),
        "fit_cpu_s": round(fit_cpu_s, 3),
        "score_cpu_s": round(score_cpu, 3),
        "score_wall_s": round(score_wall, 3),
    }


def fit_lda(corpus: Corpus, num_topics: int, passes: float, name: str, min_steps: int = 0):
    """Our LDA (online VB, the default fit) and its fit CPU seconds."""
    clock = Clock()
    model = LDA(num_topics, corpus.vocab, topic_prior=TOPIC_PRIOR, name=name)
    model.fit(corpus, num_steps=num_steps_for(len(corpus), passes, BATCH_SIZE, min_steps), batch_size=BATCH_SIZE)
    return model, clock.seconds()[0]


def fit_sklearn(corpus: Corpus, num_topics: int, passes: float, seed: int):
    """scikit-learn's online VB with our priors, topic count and passes: topics ``[K, V]`` and fit CPU seconds."""
    import scipy.sparse
    from sklearn.decomposition import LatentDirichletAllocation

    # scikit-learn takes the documents in the order given, every pass; the pooled corpus is grouped by client
    # (for Brown: by genre), so give it a seeded random order, as a user would
    order = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(seed))
    counts = scipy.sparse.csr_matrix(corpus.counts[order].double().numpy())
    model = LatentDirichletAllocation(
        n_components=num_topics,
        doc_topic_prior=1.0 / num_topics,
        topic_word_prior=TOPIC_PRIOR,
        learning_method="online",
        learning_offset=10.0,
        learning_decay=0.7,
        batch_size=BATCH_SIZE,
        max_iter=max(1, round(passes)),
        evaluate_every=-1,
        max_doc_update_iter=100,
        mean_change_tol=1e-3,
        random_state=seed,
        n_jobs=1,
    )
    clock = Clock()
    model.fit(counts)
    fit_cpu = clock.seconds()[0]
    topics = torch.as_tensor(model.components_ / model.components_.sum(1, keepdims=True))
    return topics, fit_cpu


def run(name, corpus, train_index, test_index, num_topics, passes, seed, log, price=None, min_client_steps=50):
    start = time.time()
    pyro.set_rng_seed(seed)
    clients = [corpus.subset(idx).restrict_vocabulary() for idx in train_index]
    models, client_cpu = [], []
    for j, client in enumerate(clients):
        model, cpu = fit_lda(client, num_topics, passes, f"{name}.client{j}", min_client_steps)
        models.append(model)
        client_cpu.append(cpu)
        log(f"{name}: client {j} ({len(client)} docs, {len(client.vocab)} words), {time.time() - start:.0f}s")
    union = union_vocabulary([m.vocab for m in models])
    test = corpus.subset(test_index).reindex(union)
    pooled_train = corpus.subset(torch.cat(train_index)).reindex(union)
    pooled, pooled_cpu = fit_lda(pooled_train, num_topics, passes, f"{name}.pooled")
    log(f"{name}: pooled trained, {time.time() - start:.0f}s")

    weights = [c.num_words for c in clients]
    clock = Clock()
    fusion = fuse_lda(models, weights=weights, name=f"{name}.fused", price=price)
    fused, result = fusion.model, fusion.result
    fused_cpu = sum(client_cpu) + clock.seconds()[0]
    log(f"{name}: fused into {result.num_global} topics ({result.iterations} sweeps), {time.time() - start:.0f}s")
    clock = Clock()
    fusion_k = fuse_lda(models, weights=weights, name=f"{name}.fused_k", num_global=num_topics)
    fused_k, result_k = fusion_k.model, fusion_k.result
    fused_k_cpu = sum(client_cpu) + clock.seconds()[0]
    log(f"{name}: fused into {num_topics} topics (parametric), {time.time() - start:.0f}s")
    pooled_matched, pooled_matched_cpu = fit_lda(pooled_train, result.num_global, passes, f"{name}.pooled_matched")
    log(f"{name}: pooled with {result.num_global} topics trained, {time.time() - start:.0f}s")
    sklearn_topics, sklearn_cpu = fit_sklearn(pooled_train, num_topics, passes, seed)
    log(f"{name}: scikit-learn trained, {time.time() - start:.0f}s")
    clock = Clock()
    naive = topic_word_matrix(average_topics_by_index(models, union).distributions()["topic_words"])
    naive_cpu = sum(client_cpu) + clock.seconds()[0]

    train_counts = pooled_train.counts
    clock = Clock()
    test_counts = SparseCounts.from_dense(test.counts)  # once for all rows
    setup_cpu = clock.seconds()[0]
    local = [
        scores(topic_word_matrix(fused_like(m, union)), test_counts, train_counts, seed, cpu)
        for m, cpu in zip(models, client_cpu)
    ]
    best = max(local, key=lambda r: r["heldout_ll_per_word"])
    rows = {
        "fused": scores(fused.topic_word_matrix(), test_counts, train_counts, seed, fused_cpu),
        "fused_parametric": scores(fused_k.topic_word_matrix(), test_counts, train_counts, seed, fused_k_cpu),
        "pooled": scores(pooled.topic_word_matrix(), test_counts, train_counts, seed, pooled_cpu),
        "pooled_matched": scores(
            pooled_matched.topic_word_matrix(), test_counts, train_counts, seed, pooled_matched_cpu
        ),
        "sklearn_pooled": scores(sklearn_topics, test_counts, train_counts, seed, sklearn_cpu),
        "naive_average": scores(naive, test_counts, train_counts, seed, naive_cpu),
        "local_best": best,
        "local_mean": {k: sum(r[k] for r in local) / len(local) for k in best},
    }
    log(f"{name}: scored, {time.time() - start:.0f}s")
    return {
        "corpus": name,
        "seed": seed,
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
        "score_cpu_s_all_rows": round(
            setup_cpu
            + sum(r["score_cpu_s"] for r in local)
            + sum(rows[k]["score_cpu_s"] for k in rows if not k.startswith("local")),
            3,
        ),
        "seconds": round(time.time() - start, 1),
    }


def fused_like(model: LDA, union):
    """A client's topic posterior over the union vocabulary (unseen words at the prior)."""
    return topic_components(model, union).distributions()["topic_words"]


def summarize(runs: list) -> dict:
    """Per corpus and row: the held-out log-likelihood's mean, spread and range over seeds, mean seconds."""
    summary = {}
    for name in dict.fromkeys(r["corpus"] for r in runs):
        mine = [r for r in runs if r["corpus"] == name]
        summary[name] = {}
        for row in mine[0]["rows"]:
            values = [r["rows"][row]["heldout_ll_per_word"] for r in mine]
            summary[name][row] = {
                "heldout_ll_per_word": {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "max": max(values),
                },
                "num_topics": statistics.fmean(r["rows"][row]["num_topics"] for r in mine),
                "fit_cpu_s": statistics.fmean(r["rows"][row]["fit_cpu_s"] for r in mine),
                "score_cpu_s": statistics.fmean(r["rows"][row]["score_cpu_s"] for r in mine),
            }
    return summary


def _price(text: str):
    """``--price``: a rule name or a positive number."""
    return text if text in RULES else float(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--small", action="store_true", help="few documents and passes (a smoke run)")
    parser.add_argument("--corpus", nargs="+", default=["brown", "ap"], choices=["brown", "ap"])
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--passes", type=float, default=None, help="passes over each training corpus")
    parser.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0], help="one run per seed")
    parser.add_argument("--price", type=_price, default=None,
                        help="price of a global topic: a number or a rule of pyro_fusion.price (default: fuse's)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrix products: one thread is much faster on a shared machine
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    passes = args.passes or (2 if args.small else 10)
    runs = []
    for seed in args.seeds:
        for name in args.corpus:
            pyro.clear_param_store()
            generator = torch.Generator().manual_seed(seed)
            if name == "brown":
                corpus = load_brown()
                if args.small:
                    corpus = corpus.subset((corpus.labels < 4).nonzero().squeeze(-1))
                train, test = split_by_label(corpus, generator)
            else:
                corpus = load_ap(data_path("ap", "PYRO_FUSION_AP"))
                if args.small:
                    corpus = corpus.subset(torch.arange(300))
                train, test = split_random(corpus, 5, generator)
            # a client with one minibatch per pass would otherwise take only `passes` steps
            min_steps = 10 if args.small else 50
            runs.append(run(name, corpus, train, test, args.topics, passes, seed, log, args.price, min_steps))
    print(json.dumps({"runs": runs, "summary": summarize(runs), "environment": run_environment()}))


if __name__ == "__main__":
    main()
