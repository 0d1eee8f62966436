"""Exponential families: distributions <-> natural parameters, log-normalizers, mean maps."""
from .base import ElementwiseFamily, ExponentialFamily
from .dirichlet import Dirichlet, dirichlet_concentration
from .discrete import Bernoulli, Categorical
from .gamma import Beta, Gamma, gamma_shape
from .gaussian import MultivariateNormal, NormalWishart, NormalWishartDistribution, wishart_dof
from .normal import DiagNormal, PointMass
from .registry import FAMILIES, family_from_spec, family_of
from .vector import VectorFamily

__all__ = [
    "Bernoulli",
    "Beta",
    "Categorical",
    "DiagNormal",
    "Dirichlet",
    "ElementwiseFamily",
    "ExponentialFamily",
    "FAMILIES",
    "Gamma",
    "MultivariateNormal",
    "NormalWishart",
    "NormalWishartDistribution",
    "PointMass",
    "VectorFamily",
    "dirichlet_concentration",
    "family_from_spec",
    "family_of",
    "gamma_shape",
    "wishart_dof",
]
