"""penact: fast, exact sampling and log-densities of the distributions of penultimate activations
that a classifier's final layer defines (a generative-discriminative pair with its softmax)."""
from . import ops
from .distributions import HypersphericalUniform, VonMisesFisher
from .families import (ClassConditionalDistribution, RectifiedDistribution, SphereDistribution, family_names,
                       get_family, register_family)

#: The sphere family's first name, kept as a documented alias.
PenultimateDistribution = SphereDistribution

__all__ = ["ops", "ClassConditionalDistribution", "SphereDistribution", "PenultimateDistribution",
           "RectifiedDistribution", "VonMisesFisher", "HypersphericalUniform", "get_family", "family_names",
           "register_family"]
__version__ = "0.2.0"
