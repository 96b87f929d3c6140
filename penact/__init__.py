"""penact: fast, exact sampling and log-densities of the distributions of penultimate activations
that a classifier's final layer defines (a generative-discriminative pair with its softmax)."""
from . import _ops as ops
from .base import ClassConditionalDistribution
from .distribution import PenultimateDistribution
from .distributions import HypersphericalUniform, VonMisesFisher
from .rectified import RectifiedDistribution

__all__ = ["ops", "ClassConditionalDistribution", "PenultimateDistribution", "RectifiedDistribution", "VonMisesFisher",
           "HypersphericalUniform"]
__version__ = "0.1.0"
