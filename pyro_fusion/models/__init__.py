"""Pyro models whose trained guides pyro_fusion knows how to fuse, and their shared training helpers."""
from .bnn import (
    BayesianLinear,
    BayesianMLP,
    Evaluation,
    delta_guide,
    evaluate,
    normal_guide,
    normal_posterior,
    predictive_probs,
    train_svi,
)
from .clustering import kmeans
from .gmm import GMMPrior, fit_gmm, gmm_model, gmm_sites, kmeans_init_values, prior_component, run_svi
from .hmm import (
    FittedHMM,
    HMMParams,
    HMMPrior,
    decode,
    fit_gaussian_hmm,
    forward_backward,
    gaussian_hmm_model,
    single_threaded,
    viterbi,
)
from .lda import LDA, DocumentEncoder, expected_log, fit_doc_topics
from .training import svi_steps

__all__ = [
    "BayesianLinear",
    "BayesianMLP",
    "DocumentEncoder",
    "Evaluation",
    "FittedHMM",
    "GMMPrior",
    "HMMParams",
    "HMMPrior",
    "LDA",
    "decode",
    "delta_guide",
    "evaluate",
    "expected_log",
    "fit_doc_topics",
    "fit_gaussian_hmm",
    "fit_gmm",
    "forward_backward",
    "gaussian_hmm_model",
    "gmm_model",
    "gmm_sites",
    "kmeans",
    "kmeans_init_values",
    "normal_guide",
    "normal_posterior",
    "predictive_probs",
    "prior_component",
    "run_svi",
    "single_threaded",
    "svi_steps",
    "train_svi",
    "viterbi",
]
