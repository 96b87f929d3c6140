"""penact's families of penultimate-activation distributions and their registry.

Trainers, the demo and the benchmarks never name a family class: they look one up by name
(``get_family("sphere")``) and use the protocol of :class:`ClassConditionalDistribution`. A new
family is its own module here (plus its operators) and one registration line below.
"""
from __future__ import annotations

from .base import ClassConditionalDistribution
from .registry import family_names, get_family, register_family

# The families: importing a module registers its class (one line per family).
from .sphere import SphereDistribution  # noqa: E402
from .rectified import RectifiedDistribution  # noqa: E402

__all__ = ["ClassConditionalDistribution", "SphereDistribution", "RectifiedDistribution", "register_family",
           "get_family", "family_names"]
