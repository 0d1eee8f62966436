"""Adapters: read a model family's trained guides as :class:`~pyro_fusion.Components` and write fused ones back."""
from .bnn import PRICE_RULES, FusedMLP, fuse_mlps, naive_average
from .hmm import FusedHMM, HMMStatistics, em_update, fuse_hmms, hmm_components, hmm_statistics, refine_hmm
from .lda import (
    align_concentration,
    average_topics_by_index,
    fuse_lda,
    topic_components,
    topic_prior_component,
    union_vocabulary,
)

__all__ = [
    "FusedHMM",
    "FusedMLP",
    "HMMStatistics",
    "PRICE_RULES",
    "align_concentration",
    "average_topics_by_index",
    "em_update",
    "fuse_hmms",
    "fuse_lda",
    "fuse_mlps",
    "hmm_components",
    "hmm_statistics",
    "naive_average",
    "refine_hmm",
    "topic_components",
    "topic_prior_component",
    "union_vocabulary",
]
