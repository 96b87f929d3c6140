"""What each family brings to ``penact bench``: its operations and parameter regimes, the
parameters of a case, its operators and their pure-torch twins in one calling form, its headline
set and targets, and the references its accuracy is judged by.

One class per family, filed under the registry's name (:func:`penact.family_names`); the
distribution itself always comes from :func:`penact.get_family`. The rest of ``penact.bench``
reaches a family through :func:`bench_family` and the methods of :class:`FamilyBench` only.

The operators' calling form: ``module`` is :mod:`penact.ops` or :mod:`penact.reference` (the
twins take the operators' arguments), so one method gives penact's call and the composite's.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from types import ModuleType
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

import penact
from penact import ops, reference
from penact.families import ClassConditionalDistribution

# The operations, in the order the report lists them. Row operations take a batch x [N, D] (or
# draw one); element operations are elementwise over N arguments; parameter operations are
# functions of the parameters alone, so their cost does not depend on N.
ROW_OPS = ("sample", "log_prob", "log_prob_backward", "log_prob_all", "log_marginal", "rsample_backward")
PARAMETER_OPS = ("log_partition",)
ELEMENT_OPS = ("log_bessel_iv", "bessel_iv_ratio", "vmf_log_normalizer")
OPS = ROW_OPS + PARAMETER_OPS + ELEMENT_OPS


@dataclasses.dataclass(frozen=True)
class Headline:
    """A family's headline set: one problem (``size`` rows, ``dim``, ``classes``, ``regime``) and
    the targets on penact's time over the limit's (``targets``: op -> bound) and on the peak
    memory of ``sample`` over its output (``memory_target``, None where the issue sets none)."""
    issue: str
    size: int
    dim: int
    classes: int
    regime: str
    targets: dict[str, float]
    memory_target: float | None


class FamilyBench(abc.ABC):
    """One family's part of the benchmark (see the module's docstring)."""

    name: ClassVar[str]                   # the registry key
    ops: ClassVar[tuple[str, ...]]        # in the order of OPS
    regimes: ClassVar[dict[str, str]]     # name -> what its parameters look like
    default_regime: ClassVar[str]         # where operations independent of the regime run
    regime_ops: ClassVar[tuple[str, ...]]  # operations whose cost depends on the regime
    trainable: ClassVar[tuple[str, ...]]  # base-measure parameters rsample differentiates, beside weight
    headline: ClassVar[Headline]
    # The sample statistic whose mean the accuracy section compares with its exact expectation,
    # and the measure of a sample's distance from the family's support.
    statistic: ClassVar[str]
    expectation: ClassVar[str]
    support_error: ClassVar[str]

    @property
    def distribution(self) -> type[ClassConditionalDistribution]:
        return penact.get_family(self.name)

    # -- parameters of a case ------------------------------------------------------------------

    @abc.abstractmethod
    def parameters(self, dim: int, num_classes: int, regime: str,
                   generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        """``weight [C, D]`` (float64) and the family's base-measure parameters (the keyword
        arguments of its constructor) for ``regime``, drawn from ``generator``."""

    def headline_parameters(self, headline: Headline, generator: torch.Generator):
        """:meth:`parameters` of the headline set."""
        return self.parameters(headline.dim, headline.classes, headline.regime, generator)

    def headline_regime(self, headline: Headline) -> str:
        """The headline's parameters in words."""
        return f"{headline.regime}: {self.regimes[headline.regime]}"

    # -- operators: penact's (module=penact.ops) and the twins' (module=penact.reference) ------

    @abc.abstractmethod
    def log_partition(self, module: ModuleType, dist: ClassConditionalDistribution) -> Tensor:
        """``log Z_y``, ``[C]``."""

    @abc.abstractmethod
    def log_prob(self, module: ModuleType, dist: ClassConditionalDistribution, x: Tensor, labels: Tensor,
                 log_partition: Tensor) -> Tensor:
        """``log p(x_i | labels[i])``, ``[N]``, with ``log_partition [C]`` given."""

    @abc.abstractmethod
    def log_prob_all(self, module: ModuleType, dist: ClassConditionalDistribution, x: Tensor,
                     log_partition: Tensor) -> Tensor:
        """``log p(x_i | c)``, ``[N, C]``, with ``log_partition [C]`` given."""

    @abc.abstractmethod
    def twin_sample(self, dist: ClassConditionalDistribution, labels: Tensor) -> Tensor:
        """The pure-torch twin's draw, ``[N, D]`` (differentiable as far as the twin's
        operations are)."""

    # -- accuracy references -------------------------------------------------------------------

    @abc.abstractmethod
    def mp_log_partition(self, mp: ModuleType, dist: ClassConditionalDistribution) -> Tensor:
        """``log Z_y`` from mpmath (``mp``: ``tests/mp_reference.py``), float64 ``[C]``."""

    @abc.abstractmethod
    def sample_statistic(self, dist: ClassConditionalDistribution, x: np.ndarray) -> np.ndarray:
        """The statistic of each row of a float64 sample ``x [N, D]`` of class 0, ``[N]``."""

    @abc.abstractmethod
    def mp_expectation(self, mp: ModuleType, dist: ClassConditionalDistribution) -> float:
        """The statistic's expectation under class 0, from mpmath."""

    @abc.abstractmethod
    def distance_from_support(self, dist: ClassConditionalDistribution, x: np.ndarray) -> float:
        """How far the finite rows of ``x [N, D]`` lie from the support (0 on it)."""


def class_kappas(num_classes: int, low: float, high: float) -> Tensor:
    """``[C]`` concentrations log-spaced over ``[low, high]`` (float64); their geometric mean for one class."""
    if num_classes == 1:
        return torch.tensor([math.sqrt(low * high)], dtype=torch.float64)
    return torch.logspace(math.log10(low), math.log10(high), num_classes, dtype=torch.float64)


class SphereBench(FamilyBench):
    """The sphere (von Mises-Fisher) family at radius 1: scipy and TFP take unit vectors as they are."""

    name = "sphere"
    ops = ROW_OPS + ELEMENT_OPS
    # kappa of the C classes log-spaced over these multiples of D
    kappa_multiples = {"small": (0.005, 0.05), "~D": (0.5, 2.0), "large": (50.0, 500.0)}
    regimes = {name: f"kappa log-spaced in [{low:g}, {high:g}] x D" for name, (low, high) in kappa_multiples.items()}
    default_regime = "~D"
    regime_ops = ("sample", "rsample_backward") + ELEMENT_OPS
    trainable = ()
    headline = Headline(issue="issue 2", size=100_000, dim=512, classes=100, regime="linspace(50, 500, C)",
                        targets={"sample": 1.0, "log_prob": 1.5, "log_prob_all": 1.2}, memory_target=1.1)
    statistic = "mean mu . u"
    expectation = "A_D(kappa)"
    support_error = "max abs(norm(u) - 1)"
    radius = 1.0

    @staticmethod
    def _weight(dim: int, kappa: Tensor, generator: torch.Generator) -> Tensor:
        directions = torch.randn(kappa.numel(), dim, generator=generator, dtype=torch.float64)
        return directions / directions.norm(dim=1, keepdim=True) * kappa[:, None]

    def argument_range(self, dim: int, regime: str) -> tuple[float, float]:
        """The concentrations of ``regime``, where the special functions are evaluated."""
        low, high = self.kappa_multiples[regime]
        return low * dim, high * dim

    def parameters(self, dim, num_classes, regime, generator):
        kappa = class_kappas(num_classes, *self.argument_range(dim, regime))
        return self._weight(dim, kappa / self.radius, generator), dict(radius=self.radius)

    def headline_parameters(self, headline, generator):
        # kappa linearly between 50 and 500 across the classes, as issue 2 states it
        kappa = torch.linspace(50.0, 500.0, headline.classes, dtype=torch.float64)
        return self._weight(headline.dim, kappa / self.radius, generator), dict(radius=self.radius)

    def headline_regime(self, headline):
        return f"kappa = {headline.regime}"

    def log_partition(self, module, dist):
        # penact.reference has no twin of the special functions: both use penact's normalizer
        return -ops.vmf_log_normalizer(dist.dim, dist.kappa)

    def log_prob(self, module, dist, x, labels, log_partition):
        return module.vmf_log_prob(x, dist.weight, -log_partition, labels, dist.radius)

    def log_prob_all(self, module, dist, x, log_partition):
        return module.vmf_log_prob_all(x, dist.weight, -log_partition, dist.radius)

    def twin_sample(self, dist, labels):
        return reference.vmf_sample(dist.mean_direction, dist.kappa, labels, dist.radius)

    def mp_log_partition(self, mp, dist):
        return torch.tensor([-float(mp.vmf_log_normalizer(dist.dim, float(k))) for k in dist.kappa],
                            dtype=torch.float64)

    def sample_statistic(self, dist, x):
        return (x / dist.radius) @ dist.mean_direction[0].double().cpu().numpy()

    def mp_expectation(self, mp, dist):
        return float(mp.bessel_ratio(0.5 * dist.dim - 1, float(dist.kappa[0])))

    def distance_from_support(self, dist, x):
        return float(np.abs(np.linalg.norm(x / dist.radius, axis=1) - 1).max())


def mp_log_z(w: float, s: float, m: float):
    """``log z(w; s, m) = log(m + s sqrt(2 pi) exp(t^2 / 2) Phi(t))``, ``t = s w``, in mpmath's
    working precision (50 digits once ``tests/mp_reference.py`` is loaded)."""
    import mpmath
    t = mpmath.mpf(s) * mpmath.mpf(w)
    return mpmath.log(m + s * mpmath.sqrt(2 * mpmath.pi) * mpmath.exp(t * t / 2) * mpmath.ncdf(t))


def mp_mean(w: float, s: float, m: float):
    """``E[a | w; s, m] = (1 - m / z) s (t + phi(t) / Phi(t))``: the mass off the atom times the
    mean of ``Normal(s t, s^2)`` truncated to ``(0, inf)``."""
    import mpmath
    t = mpmath.mpf(s) * mpmath.mpf(w)
    return (1 - m / mpmath.exp(mp_log_z(w, s, m))) * s * (t + mpmath.npdf(t) / mpmath.ncdf(t))


class RectifiedBench(FamilyBench):
    """The rectified family, with the parameters of bench_rectified.py (issue 5): ``s`` in (0.5, 3),
    ``m`` in (0.5, 1.5), so that 30-50% of the coordinates are exact zeros."""

    name = "rectified"
    ops = ROW_OPS + PARAMETER_OPS
    weight_std = {"bulk": 0.1, "tail": 1.0}
    regimes = {"bulk": "W ~ N(0, 0.1^2), a trained layer's scale: s w mostly within +-1",
               "tail": "W ~ N(0, 1): about an eighth of the (class, coordinate) pairs past s w = -2, "
                       "drawn by the exponential rejection sampler"}
    default_regime = "bulk"
    regime_ops = ("sample", "rsample_backward", "log_partition")
    trainable = ("scale", "zero_mass")
    headline = Headline(issue="issue 5", size=100_000, dim=512, classes=100, regime="bulk",
                        targets={"sample": 1.0, "log_prob": 1.5}, memory_target=None)
    statistic = "mean of a_j"
    expectation = "E[mean a_j]"
    support_error = "max(0, -min a)"

    def parameters(self, dim, num_classes, regime, generator):
        weight = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64) * self.weight_std[regime]
        scale = 0.5 + 2.5 * torch.rand(dim, generator=generator, dtype=torch.float64)
        zero_mass = 0.5 + torch.rand(dim, generator=generator, dtype=torch.float64)
        return weight, dict(scale=scale, zero_mass=zero_mass)

    def log_partition(self, module, dist):
        return module.rectified_log_partition(dist.weight, dist.scale, dist.zero_mass)

    def log_prob(self, module, dist, x, labels, log_partition):
        return module.rectified_log_prob(x, dist.weight, dist.scale, dist.zero_mass, log_partition, labels)

    def log_prob_all(self, module, dist, x, log_partition):
        return module.rectified_log_prob_all(x, dist.weight, dist.scale, dist.zero_mass, log_partition)

    def twin_sample(self, dist, labels):
        return reference.rectified_sample(dist.weight, dist.scale, dist.zero_mass, labels)

    @staticmethod
    def _coordinates(dist) -> zip:
        return zip(dist.scale.double().tolist(), dist.zero_mass.double().tolist())

    def mp_log_partition(self, mp, dist):
        return torch.tensor([float(sum(mp_log_z(w, s, m) for w, (s, m) in zip(row, self._coordinates(dist))))
                             for row in dist.weight.double().tolist()], dtype=torch.float64)

    def sample_statistic(self, dist, x):
        return x.mean(axis=1)

    def mp_expectation(self, mp, dist):
        row = dist.weight[0].double().tolist()
        return float(sum(mp_mean(w, s, m) for w, (s, m) in zip(row, self._coordinates(dist)))) / dist.dim

    def distance_from_support(self, dist, x):
        return float(max(0.0, -x.min())) if x.size else 0.0


_BENCHES = {bench.name: bench for bench in (SphereBench(), RectifiedBench())}


def bench_family(name: str) -> FamilyBench:
    """The benchmark part of the registered family ``name``.

    Raises:
        ValueError: ``name`` is not registered (from :func:`penact.get_family`), or is registered
            but has no class here yet.
    """
    penact.get_family(name)
    if name not in _BENCHES:
        raise ValueError(f"family {name!r} is registered but penact.bench has no FamilyBench for it "
                         "(add one in penact/bench/families.py)")
    return _BENCHES[name]
