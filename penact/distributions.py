"""``torch.distributions`` drop-ins on penact's fused kernels: :class:`VonMisesFisher` and
:class:`HypersphericalUniform` on the unit sphere ``S^{D-1}``, with closed-form
``torch.distributions.kl_divergence`` between them (docs/model.md, section 2).

Conventions are ``torch.distributions``': ``batch_shape = loc.shape[:-1]`` broadcast with
``concentration.shape``, ``event_shape = (D,)``, ``sample(sample_shape)`` returns
``sample_shape + batch_shape + (D,)``, ``validate_args`` raises ``ValueError`` naming the argument.
Any batch shape is flattened onto the per-row kernels (row ``j N + b`` draws sample ``j`` of batch
element ``b``, with labels ``arange(M) % N``), never a Python loop. Randomness: ``sample`` and
``rsample`` take penact's optional ``seed``/``offset``/``generator`` (``penact._random``); without
them a fresh seed comes from ``torch.manual_seed``'s generator.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl

from . import ops
from ._random import resolve_seed

__all__ = ["VonMisesFisher", "HypersphericalUniform", "unit_sphere"]


class _UnitSphere(constraints.Constraint):
    """Vectors whose norm along the last dimension is 1 to ``sqrt(eps)`` of their dtype (1.5e-8 in
    float64, 3.5e-4 in float32): loose enough for any rounding of a normalized vector, tight enough
    to catch a forgotten normalization."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        tolerance = math.sqrt(torch.finfo(value.dtype).eps)
        return (torch.linalg.vector_norm(value, dim=-1) - 1).abs() <= tolerance

    def __repr__(self) -> str:
        return "UnitSphere()"


class _FiniteNonnegative(constraints.Constraint):
    def check(self, value: Tensor) -> Tensor:
        return (value >= 0) & torch.isfinite(value)

    def __repr__(self) -> str:
        return "FiniteNonnegative()"


unit_sphere = _UnitSphere()
_finite_nonnegative = _FiniteNonnegative()


def _check_dtype(name: str, dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {dtype}")


def _check_dim(dim: int) -> int:
    if dim < 2:
        raise ValueError(f"the dimension D must be at least 2, got {dim}")
    return dim


class VonMisesFisher(Distribution):
    r"""von Mises-Fisher distribution on the unit sphere ``S^{D-1}``:

        p(u) = C_D(kappa) exp(kappa mu . u)   w.r.t. the uniform surface measure,
        log C_D(k) = (D/2 - 1) log k - (D/2) log(2 pi) - log I_{D/2-1}(k).

    Args:
        loc: ``[..., D]`` unit mean directions ``mu``, float32 or float64, ``D >= 2``.
        concentration: ``[...]`` (broadcast against ``loc.shape[:-1]``), finite, ``>= 0``
            (``0`` is the uniform law).
        validate_args: as in ``torch.distributions``.

    ``rsample`` is differentiable in ``loc`` and ``concentration`` (implicit reparameterization for
    the cosine ``t = mu . u``, projection for the direction: :mod:`penact.ops.vmf`).
    ``log_prob`` evaluates a value at its direction ``value / ||value||``, like penact's kernels.

    Raises:
        ValueError: a scalar or non-float ``loc``, ``D < 2``, and with validation a ``loc`` off the
            unit sphere or a negative or non-finite ``concentration``.
    """

    arg_constraints = {"loc": unit_sphere, "concentration": _finite_nonnegative}
    support = unit_sphere
    has_rsample = True

    def __init__(self, loc: Tensor, concentration: Tensor | float, validate_args: bool | None = None):
        if not isinstance(loc, Tensor) or loc.dim() < 1:
            raise ValueError(f"loc must be a tensor of shape [..., D], got {getattr(loc, 'shape', type(loc))}")
        _check_dtype("loc", loc.dtype)
        _check_dim(loc.shape[-1])
        concentration = torch.as_tensor(concentration, dtype=loc.dtype, device=loc.device)
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], concentration.shape)
        self.loc = loc.expand(batch_shape + loc.shape[-1:])
        self.concentration = concentration.expand(batch_shape)
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    @property
    def dim(self) -> int:
        """D: the sphere is ``S^{D-1}`` in ``R^D``."""
        return self.event_shape[0]

    def expand(self, batch_shape, _instance=None) -> "VonMisesFisher":
        new = self._get_checked_instance(VonMisesFisher, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.concentration = self.concentration.expand(batch_shape)
        super(VonMisesFisher, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # -- closed forms --------------------------------------------------------------------------

    @property
    def mean_resultant(self) -> Tensor:
        """``A_D(kappa) = E[mu . u]``, ``batch_shape``."""
        return ops.vmf_mean_resultant(self.dim, self.concentration)

    @property
    def log_normalizer(self) -> Tensor:
        """``log C_D(kappa)``, ``batch_shape``."""
        return ops.vmf_log_normalizer(self.dim, self.concentration)

    @property
    def mean(self) -> Tensor:
        """``E[u] = A_D(kappa) mu``."""
        return self.mean_resultant.unsqueeze(-1) * self.loc

    @property
    def mode(self) -> Tensor:
        """``mu`` (for ``kappa = 0`` every point is a mode; ``mu`` is returned all the same)."""
        return self.loc

    @property
    def variance(self) -> Tensor:
        """The diagonal of ``Cov[u] = (A/kappa) I + (1 - A^2 - D A/kappa) mu mu^T`` (docs/model.md, section 4);
        ``A/kappa -> 1/D`` at ``kappa = 0``."""
        kappa = self.concentration
        positive = kappa > 0
        safe = torch.where(positive, kappa, torch.ones_like(kappa))
        at_safe = ops.vmf_mean_resultant(self.dim, safe)
        mean_resultant = torch.where(positive, at_safe, torch.zeros_like(kappa))
        ratio = torch.where(positive, at_safe / safe, torch.full_like(kappa, 1 / self.dim))
        along = 1 - mean_resultant.square() - self.dim * ratio
        return ratio.unsqueeze(-1) + along.unsqueeze(-1) * self.loc.square()

    def entropy(self) -> Tensor:
        """``H = -log C_D(kappa) - kappa A_D(kappa)`` w.r.t. the uniform surface measure."""
        return -self.log_normalizer - self.concentration * self.mean_resultant

    # -- sampling and densities ----------------------------------------------------------------

    def _flat_parameters(self) -> tuple[Tensor, Tensor]:
        """``loc [N, D]`` and ``concentration [N]`` over the flattened batch."""
        return self.loc.reshape(-1, self.dim), self.concentration.reshape(-1)

    def rsample(self, sample_shape=torch.Size(), seed: int | None = None, offset: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Draws ``sample_shape + batch_shape + (D,)``, differentiable in ``loc`` and ``concentration``.

        Row ``j N + b`` of the flattened draw (sample ``j`` of batch element ``b``, ``N`` elements in
        the batch) uses the Philox stream ``(seed, offset + j N + b)``.
        """
        shape = self._extended_shape(sample_shape)
        seed, offset = resolve_seed(seed, offset, generator)
        loc, concentration = self._flat_parameters()
        rows = math.prod(shape[:-1])
        if rows == 0:
            return loc.new_empty(shape)
        labels = torch.arange(rows, device=loc.device)
        if rows > loc.shape[0]:
            labels %= loc.shape[0]
        return ops.vmf_rsample(loc, concentration, labels, 1.0, seed, offset).reshape(shape)

    def sample(self, sample_shape=torch.Size(), seed: int | None = None, offset: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """:meth:`rsample` without gradients (the same values for the same seed)."""
        with torch.no_grad():
            return self.rsample(sample_shape, seed=seed, offset=offset, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log C_D(kappa) + kappa mu . value / ||value||``, ``value: [..., D]`` broadcast against
        ``batch_shape + (D,)``; one fused row kernel over the broadcast rows."""
        if self._validate_args:
            self._validate_sample(value)
        dim = self.dim
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        weight = self.concentration.unsqueeze(-1) * self.loc
        log_normalizer = self.log_normalizer
        batch_ndim = len(self.batch_shape)
        if batch_ndim == 0 or shape[len(shape) - batch_ndim:] == self.batch_shape:
            # The batch varies fastest in the broadcast rows: the parameters need no copy.
            weight, log_normalizer = weight.reshape(-1, dim), log_normalizer.reshape(-1)
        else:
            weight, log_normalizer = weight.expand(shape + (dim,)).reshape(-1, dim), log_normalizer.expand(shape).reshape(-1)
        x = value.to(weight.dtype).expand(shape + (dim,)).reshape(-1, dim)
        rows = x.shape[0]
        if rows == 0:
            return weight.new_empty(shape)
        labels = torch.arange(rows, device=x.device) % weight.shape[0]
        return ops.vmf_log_prob(x, weight, log_normalizer, labels, 1.0).reshape(shape)


class HypersphericalUniform(Distribution):
    r"""The uniform distribution on ``S^{D-1}``: density ``C_D(0) = Gamma(D/2) / (2 pi^(D/2))`` w.r.t.
    the surface measure, i.e. ``-log |S^{D-1}|`` in log form.

    Args:
        dim: ``D >= 2``.
        batch_shape: the batch shape (no parameter varies across it).
        dtype: float32 or float64 (default: ``torch.get_default_dtype()``).
        device: where samples and densities are made.
        validate_args: as in ``torch.distributions``.

    Sampling is penact's vMF sampler at ``kappa = 0``; ``rsample`` is the same draw (there is no
    parameter to differentiate).
    """

    arg_constraints: dict = {}
    support = unit_sphere
    has_rsample = True

    def __init__(self, dim: int, batch_shape=torch.Size(), dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, validate_args: bool | None = None):
        self._dim = _check_dim(int(dim))
        self._dtype = dtype if dtype is not None else torch.get_default_dtype()
        _check_dtype("dtype", self._dtype)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        super().__init__(torch.Size(batch_shape), torch.Size([self._dim]), validate_args=validate_args)

    @property
    def dim(self) -> int:
        return self._dim

    def expand(self, batch_shape, _instance=None) -> "HypersphericalUniform":
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        new._dim, new._dtype, new._device = self._dim, self._dtype, self._device
        super(HypersphericalUniform, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def log_normalizer(self) -> Tensor:
        """``log C_D(0) = -log |S^{D-1}|``, a scalar tensor."""
        return ops.vmf_log_normalizer(self._dim, torch.zeros((), dtype=self._dtype, device=self._device))

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.batch_shape + self.event_shape, dtype=self._dtype, device=self._device)

    @property
    def mode(self) -> Tensor:
        """Every point is a mode: NaN, as ``torch.distributions.Uniform`` answers."""
        return torch.full(self.batch_shape + self.event_shape, math.nan, dtype=self._dtype, device=self._device)

    @property
    def variance(self) -> Tensor:
        return torch.full(self.batch_shape + self.event_shape, 1 / self._dim, dtype=self._dtype, device=self._device)

    def entropy(self) -> Tensor:
        """``log |S^{D-1}|``, ``batch_shape``."""
        return (-self.log_normalizer).expand(self.batch_shape)

    def rsample(self, sample_shape=torch.Size(), seed: int | None = None, offset: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Draws ``sample_shape + batch_shape + (D,)``; row ``i`` of the flattened draw uses the
        Philox stream ``(seed, offset + i)``."""
        shape = self._extended_shape(sample_shape)
        seed, offset = resolve_seed(seed, offset, generator)
        axis = torch.zeros(1, self._dim, dtype=self._dtype, device=self._device)
        axis[0, 0] = 1
        kappa = torch.zeros(1, dtype=self._dtype, device=self._device)
        labels = torch.zeros(math.prod(shape[:-1]), dtype=torch.long, device=self._device)
        return ops.vmf_sample(axis, kappa, labels, 1.0, seed, offset).reshape(shape)

    def sample(self, sample_shape=torch.Size(), seed: int | None = None, offset: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        return self.rsample(sample_shape, seed=seed, offset=offset, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log C_D(0)`` broadcast to ``broadcast(value.shape[:-1], batch_shape)``."""
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return self.log_normalizer.to(value.device).expand(shape)

    def __repr__(self) -> str:
        return f"HypersphericalUniform(dim={self._dim}, batch_shape={tuple(self.batch_shape)}, dtype={self._dtype})"


# -- closed-form KL divergences (docs/model.md, section 2) ---------------------------------------------------


def _check_same_sphere(p: Distribution, q: Distribution) -> int:
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL divergence needs distributions on one sphere, got event shapes "
                         f"{tuple(p.event_shape)} and {tuple(q.event_shape)}")
    return p.event_shape[0]


@register_kl(VonMisesFisher, VonMisesFisher)
def _kl_vmf_vmf(p: VonMisesFisher, q: VonMisesFisher) -> Tensor:
    """``log C_D(k1) - log C_D(k2) + A_D(k1) (k1 - k2 mu2 . mu1)``, with
    ``k1 - k2 mu2 . mu1 = (k1 - k2) + k2 ||mu1 - mu2||^2 / 2``: no cancellation for close directions."""
    _check_same_sphere(p, q)
    half_chord2 = 0.5 * (p.loc - q.loc).square().sum(dim=-1)
    return (p.log_normalizer - q.log_normalizer
            + p.mean_resultant * ((p.concentration - q.concentration) + q.concentration * half_chord2))


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: HypersphericalUniform) -> Tensor:
    """``log C_D(k) + k A_D(k) - log C_D(0)`` (minus the entropy, plus ``log |S^{D-1}|``)."""
    _check_same_sphere(p, q)
    shape = torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    return (-p.entropy() - q.log_normalizer.to(p.loc.device)).expand(shape)


@register_kl(HypersphericalUniform, VonMisesFisher)
def _kl_uniform_vmf(p: HypersphericalUniform, q: VonMisesFisher) -> Tensor:
    """``log C_D(0) - log C_D(k)`` (``E[mu . u] = 0`` under the uniform law)."""
    _check_same_sphere(p, q)
    shape = torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    return (p.log_normalizer.to(q.loc.device) - q.log_normalizer).expand(shape)


@register_kl(HypersphericalUniform, HypersphericalUniform)
def _kl_uniform_uniform(p: HypersphericalUniform, q: HypersphericalUniform) -> Tensor:
    _check_same_sphere(p, q)
    return torch.zeros(torch.broadcast_shapes(p.batch_shape, q.batch_shape), dtype=p._dtype, device=p._device)
