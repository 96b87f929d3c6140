"""The registry of families: name -> class (see :mod:`penact.families`)."""
from __future__ import annotations

from .base import ClassConditionalDistribution

_REGISTRY: dict[str, type[ClassConditionalDistribution]] = {}


def register_family(family: type[ClassConditionalDistribution]) -> type[ClassConditionalDistribution]:
    """Files ``family`` under ``family.name`` (usable as a class decorator).

    Raises:
        ValueError: the name is taken by another class.
    """
    taken = _REGISTRY.get(family.name)
    if taken is not None and taken is not family:
        raise ValueError(f"family name {family.name!r} is taken by {taken.__qualname__}")
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> type[ClassConditionalDistribution]:
    """The family registered as ``name``.

    Raises:
        ValueError: no family has that name (the message lists those that do).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"family must be one of {family_names()}, got {name!r}") from None


def family_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)
