"""The inputs of one case, shared by every peer and converted once for each peer's format."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .families import FamilyBench, Headline


class Problem:
    """Inputs of a case of ``family``: its distribution ``dist`` (``weight [C, D]`` and the
    base-measure parameters ``params``, as ``penact.get_family(name)(weight, None, **params)``),
    ``labels [N]`` uniform over the classes, and a materialized sample ``x [N, D]``, on ``device``
    in ``dtype``. Peers keep their own conversions (numpy, JAX) in :meth:`cached`."""

    def __init__(self, family: FamilyBench, weight: Tensor, params: dict[str, Tensor | float], size: int,
                 device: torch.device, dtype: torch.dtype, seed: int, generator: torch.Generator):
        self.family, self.size, self.device, self.dtype, self.seed = family, size, device, dtype, seed
        self.weight = weight.to(device=device, dtype=dtype)
        self.params = {key: value.to(device=device, dtype=dtype) if isinstance(value, Tensor) else value
                       for key, value in params.items()}
        self.num_classes, self.dim = self.weight.shape
        self.labels = torch.randint(0, self.num_classes, (size,), generator=generator).to(device)
        self.dist = family.distribution(self.weight, None, **self.params)
        self._cache: dict[str, Any] = {}

    @classmethod
    def of_regime(cls, family: FamilyBench, dim: int, num_classes: int, regime: str, size: int,
                  device: torch.device, dtype: torch.dtype, seed: int) -> "Problem":
        """A grid case: the family's parameters of ``regime`` (seeded by ``seed``)."""
        generator = torch.Generator().manual_seed(seed)
        weight, params = family.parameters(dim, num_classes, regime, generator)
        return cls(family, weight, params, size, device, dtype, seed, generator)

    @classmethod
    def of_headline(cls, family: FamilyBench, headline: Headline, device: torch.device, dtype: torch.dtype,
                    seed: int) -> "Problem":
        """The family's headline set ``headline`` (its own or one with other sizes)."""
        generator = torch.Generator().manual_seed(seed)
        weight, params = family.headline_parameters(headline, generator)
        return cls(family, weight, params, headline.size, device, dtype, seed, generator)

    def cast(self, dtype: torch.dtype) -> "Problem":
        """The same parameters, labels and sample in ``dtype`` (for the accuracy section: a
        float32 problem cast to float64 holds the same values)."""
        other = object.__new__(Problem)
        other.__dict__.update(self.__dict__, dtype=dtype, _cache={})
        other.weight = self.weight.to(dtype)
        other.params = {key: value.to(dtype) if isinstance(value, Tensor) else value
                        for key, value in self.params.items()}
        other.dist = self.family.distribution(other.weight, None, **other.params)
        other.x = self.x.to(dtype)
        return other

    @functools.cached_property
    def x(self) -> Tensor:
        """A materialized ``[N, D]`` sample: penact's, or the twin's where penact cannot run on this device."""
        try:
            return self.dist.sample(self.labels, seed=self.seed + 1, offset=0)
        except RuntimeError:
            return self.family.twin_sample(self.dist, self.labels)

    @functools.cached_property
    def cotangent(self) -> Tensor:
        """A fixed ``[N, D]`` incoming gradient for the backward of ``rsample``."""
        generator = torch.Generator().manual_seed(self.seed + 2)
        return torch.randn(self.size, self.dim, generator=generator, dtype=torch.float64).to(self.device, self.dtype)

    def log_partition(self, module) -> Tensor:
        """``log Z``, ``[C]``, computed once by ``module`` (penact.ops or penact.reference)."""
        return self.cached(f"log_partition {module.__name__}",
                           lambda: self.family.log_partition(module, self.dist).detach())

    def leaves(self) -> tuple[dict[str, Tensor], Any]:
        """The parameters rsample differentiates, as fresh autograd leaves (``weight`` and the
        family's ``trainable`` ones), and the distribution built from them."""
        leaves = {"weight": self.weight.detach().clone().requires_grad_()}
        leaves.update({key: self.params[key].detach().clone().requires_grad_() for key in self.family.trainable})
        params = {**self.params, **{key: leaves[key] for key in self.family.trainable}}
        return leaves, self.family.distribution(leaves["weight"], None, **params)

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` on first use of ``key`` (a peer's converted inputs), then the same object."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def numpy(self) -> dict[str, np.ndarray]:
        """float64 numpy copies: ``x`` on the support, ``weight``, ``labels`` and ``log_prior``."""
        def build():
            x = self.dist.support(self.x.detach().double()).cpu().numpy()
            return dict(x=x, weight=self.weight.double().cpu().numpy(), labels=self.labels.cpu().numpy(),
                        log_prior=self.dist.log_prior.detach().double().cpu().numpy())
        return self.cached("numpy", build)


class ElementProblem:
    """``N`` arguments log-spaced over ``argument_range`` (a regime's concentrations), at
    ``order = D/2 - 1``: the inputs of the element operations (the special functions)."""

    def __init__(self, dim: int, size: int, argument_range: tuple[float, float], device: torch.device,
                 dtype: torch.dtype):
        self.dim, self.size, self.order = dim, size, 0.5 * dim - 1.0
        self.device, self.dtype = device, dtype
        self.x = torch.logspace(math.log10(argument_range[0]), math.log10(argument_range[1]), size,
                                dtype=torch.float64).to(device=device, dtype=dtype)
        self._cache: dict[str, Any] = {}

    cached = Problem.cached

    @property
    def x64(self) -> np.ndarray:
        return self.cached("x64", lambda: self.x.double().cpu().numpy())

