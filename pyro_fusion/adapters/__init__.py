"""
Adapters: how each model family is read into posteriors, matched, and written back
(:class:`~pyro_fusion.adapters.base.FusionAdapter`), with one front door per family that
returns a :class:`~pyro_fusion.adapters.base.FusedModel`.
"""
from .base import ENGINE_OPTIONS, FusedModel, FuseSettings, FusionAdapter, Layout, Price
from .bnn import (
    PRICE_RULES,
    MLPAdapter,
    fuse_mlps,
    fused_layer,
    layer_units,
    match_layer,
    naive_average,
    output_bias,
    output_columns,
    unit_components,
    write_mlp,
)
from .gmm import GMMAdapter, fuse_gmms
from .guide import GuideAdapter, fuse_posteriors
from .hmm import (
    HMMAdapter,
    HMMReadout,
    HMMStatistics,
    em_update,
    fuse_hmms,
    hmm_components,
    hmm_statistics,
    refine_hmm,
)
from .lda import (
    LDAAdapter,
    LDAReadout,
    align_concentration,
    average_topics_by_index,
    fuse_lda,
    topic_components,
    topic_prior_component,
    union_vocabulary,
)

__all__ = [
    "ENGINE_OPTIONS",
    "FuseSettings",
    "FusedModel",
    "FusionAdapter",
    "GMMAdapter",
    "GuideAdapter",
    "HMMAdapter",
    "HMMReadout",
    "HMMStatistics",
    "LDAAdapter",
    "LDAReadout",
    "Layout",
    "MLPAdapter",
    "PRICE_RULES",
    "Price",
    "align_concentration",
    "average_topics_by_index",
    "em_update",
    "fuse_gmms",
    "fuse_hmms",
    "fuse_lda",
    "fuse_mlps",
    "fuse_posteriors",
    "fused_layer",
    "hmm_components",
    "hmm_statistics",
    "layer_units",
    "match_layer",
    "naive_average",
    "output_bias",
    "output_columns",
    "refine_hmm",
    "topic_components",
    "topic_prior_component",
    "union_vocabulary",
    "unit_components",
    "write_mlp",
]
