"""
Evaluation metrics shared by the tests, benchmarks and applications (definitions: the user
guide, docs/guide/metrics): point sets (:mod:`~pyro_fusion.metrics.points`), labellings
(:mod:`~pyro_fusion.metrics.labels`) and topic models (:mod:`~pyro_fusion.metrics.topics`).
"""
from .labels import adjusted_rand_index, best_matching_accuracy, contingency_table, match_labels
from .points import hausdorff, ot_distance
from .topics import document_completion, fold_in, split_halves, top_words, topic_word_matrix, umass_coherence

__all__ = [
    "adjusted_rand_index",
    "best_matching_accuracy",
    "contingency_table",
    "document_completion",
    "fold_in",
    "hausdorff",
    "match_labels",
    "ot_distance",
    "split_halves",
    "top_words",
    "topic_word_matrix",
    "umass_coherence",
]
