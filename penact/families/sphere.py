"""The sphere (von Mises-Fisher) family of a classifier's penultimate activations (docs/model.md).

For a final layer ``z = W a + b`` and a radius ``r``, class ``y`` has on the sphere ``||x|| = r``

    p(x | y) = C_D(kappa_y) exp(w_y . x),   kappa_y = r ||w_y||,   mu_y = w_y / ||w_y||,

and with ``log p(y) = b_y - log C_D(kappa_y) - log Z`` the generative classifier is exactly
``softmax(W x + b)``. An activation ``a != 0`` off the sphere is evaluated at ``r a / ||a||``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .._random import resolve_seed
from ..distributions import VonMisesFisher
from .base import ClassConditionalDistribution, checked_layer
from .registry import register_family


def _check_radius(radius) -> float:
    radius = float(radius)
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a finite positive number, got {radius}")
    return radius


@register_family
class SphereDistribution(ClassConditionalDistribution):
    """The von Mises-Fisher GD pair of a final linear layer (also exported as
    ``penact.PenultimateDistribution``, its first name).

    Args:
        weight: ``[C, D]`` (``nn.Linear.weight``), float32 or float64, finite, ``D >= 2``.
        bias: ``[C]`` or None (zeros).
        radius: ``r > 0``, the norm at which activations are modeled.
        validate_args: check that weight and bias are finite (a check that synchronizes with a GPU).

    Raises:
        ValueError: bad shapes, dtypes, non-finite parameters or a non-positive radius.
    """

    name = "sphere"
    default_match = "cosine"  # samples are directions: match the direction of an activation

    def __init__(self, weight: Tensor, bias: Tensor | None = None, radius: float = 1.0, validate_args: bool = True):
        self.weight, self.bias = checked_layer(weight, bias, min_dim=2, validate_args=validate_args)
        self.radius = _check_radius(radius)

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, radius: float = 1.0) -> "SphereDistribution":
        """The distribution of ``linear`` (its parameters are used as they are, with autograd)."""
        return cls(linear.weight, linear.bias, radius)

    @classmethod
    def fit(cls, linear: nn.Linear, activations: Tensor, labels: Tensor | None = None,
            radius: str | float = "mle") -> "SphereDistribution":
        """Fits the radius to real activations ``[N, D]`` of the layer's input.

        ``radius="norm"``: the mean ``||a||``. ``radius="mle"``: the maximum-likelihood radius,
        the root of ``sum_i A_D(r ||w_{y_i}||) ||w_{y_i}|| = sum_i w_{y_i} . a_i / ||a_i||``
        (``labels`` default to the classifier's predictions). A number is used as given.

        Raises:
            ValueError: bad shapes, or no positive MLE (the activations do not align with their
                class weights on average).
        """
        weight = linear.weight.detach()
        if activations.dim() != 2 or activations.shape[1] != weight.shape[1]:
            raise ValueError(f"activations must have shape [N, D] with D = {weight.shape[1]}, got {tuple(activations.shape)}")
        if activations.shape[0] == 0:
            raise ValueError("activations must hold at least one row to fit a radius")
        a = activations.detach().to(weight.dtype)
        if radius == "norm":
            radius = float(a.norm(dim=1).mean())
        elif radius == "mle":
            if labels is None:
                labels = linear(a).argmax(dim=1)
            if labels.shape != (a.shape[0],):
                raise ValueError(f"labels must have shape [N] = [{a.shape[0]}], got {tuple(labels.shape)}")
            radius = _mle_radius(weight, a, labels.long())
        elif isinstance(radius, str):
            raise ValueError(f"radius must be 'mle', 'norm' or a positive number, got {radius!r}")
        return cls(linear.weight, linear.bias, radius)

    # -- parameters ----------------------------------------------------------------------------

    @property
    def kappa(self) -> Tensor:
        """Concentrations ``r ||w_y||``, ``[C]``."""
        return self.radius * self.weight.norm(dim=1)

    @property
    def mean_direction(self) -> Tensor:
        """Unit mean directions ``w_y / ||w_y||``, ``[C, D]``; a zero row (``kappa = 0``, the
        uniform law) gets the first axis, which the sampler treats as any other direction."""
        norms = self.weight.norm(dim=1, keepdim=True)
        axis = torch.zeros_like(self.weight)
        axis[:, 0] = 1
        return torch.where(norms > 0, self.weight / norms.clamp_min(torch.finfo(self.weight.dtype).tiny), axis)

    @property
    def log_normalizer(self) -> Tensor:
        """``log C_D(kappa_y)``, ``[C]``: the vMF normalizing constant, ``-log_partition``."""
        return ops.vmf_log_normalizer(self.dim, self.kappa)

    @property
    def log_partition(self) -> Tensor:
        """``log Z_y = -log C_D(kappa_y)``, ``[C]`` (w.r.t. the uniform measure on the sphere ``||x|| = r``)."""
        return -self.log_normalizer

    def support(self, activations: Tensor) -> Tensor:
        """``r a / ||a||``: the sphere family models directions."""
        return self.radius * torch.nn.functional.normalize(activations, dim=1)

    # -- sampling and densities ----------------------------------------------------------------

    def rsample(self, labels: Tensor, seed: int | None = None, offset: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Draws ``x_i ~ p(x | labels[i])`` on the sphere of radius r, ``[N, D]`` (:meth:`sample`'s
        values), differentiable in ``weight`` through ``kappa`` and ``mean_direction``: implicit
        reparameterization of the cosine ``t = mu . u`` for the concentration, the projection that
        makes the direction for ``mu`` (:mod:`penact.ops.vmf`).
        """
        seed, offset = resolve_seed(seed, offset, generator)
        return ops.vmf_rsample(self.mean_direction, self.kappa, labels, self.radius, seed, offset)

    def component(self, y) -> VonMisesFisher:
        """The class-``y`` distribution of the direction ``u = x / r`` as a
        :class:`penact.VonMisesFisher` (``loc = mu_y``, ``concentration = kappa_y``),
        differentiable in ``weight``. ``y``: an int, or an integer tensor whose shape becomes the
        batch shape."""
        return VonMisesFisher(self.mean_direction[y], self.kappa[y])

    def log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log p(x_i | labels[i])`` at the direction of ``x: [N, D]``, ``[N]``."""
        return ops.vmf_log_prob(x, self.weight, self.log_normalizer, labels, self.radius)

    def _log_prob_all(self, x: Tensor, log_partition: Tensor) -> Tensor:
        """``log p(x_i | c)`` at the direction of ``x: [N, D]`` for every class, ``[N, C]`` (one matrix product)."""
        return ops.vmf_log_prob_all(x, self.weight, -log_partition, self.radius)

    # -- closed forms: those of the drop-in VonMisesFisher, per class -----------------------------

    def _components(self) -> VonMisesFisher:
        """Every class's :meth:`component` as one batch of shape ``[C]``."""
        return VonMisesFisher(self.mean_direction, self.kappa, validate_args=False)

    @property
    def mean_resultant(self) -> Tensor:
        """``A_D(kappa_y) = E[mu_y . u]``, ``[C]``."""
        return ops.vmf_mean_resultant(self.dim, self.kappa)

    def mean(self) -> Tensor:
        """``E[x | y] = r A_D(kappa_y) mu_y``, ``[C, D]``."""
        return self.radius * self._components().mean

    def entropy(self) -> Tensor:
        """Differential entropy of ``u = x / r`` per class w.r.t. the uniform surface measure of the
        unit sphere: ``-log C_D(kappa) - kappa A_D(kappa)``, ``[C]``."""
        return self._components().entropy()

    def kl(self, other: "SphereDistribution") -> Tensor:
        """``KL(p(. | y) || other(. | y))`` per class for directions ``u``, ``[C]``:
        ``log C_D(k1) - log C_D(k2) + A_D(k1) (k1 - k2 mu2 . mu1)`` (in the drop-in's form without
        cancellation for close directions)."""
        if not isinstance(other, SphereDistribution) or other.weight.shape != self.weight.shape:
            raise ValueError(f"other must be a SphereDistribution with weight of shape {tuple(self.weight.shape)}, "
                             f"got {other!r}")
        return torch.distributions.kl_divergence(self._components(), other._components())

    # -- generator transfer --------------------------------------------------------------------

    @property
    def centred_weight_size(self) -> int:
        return self.dim + 1  # a change of direction and a log-concentration

    def centred_weight(self, activations: Tensor, correction: Tensor) -> Tensor:
        """The vMF centred on each activation's direction moved by ``correction[:, :D]``, with
        concentration the classes' mean ``kappa`` times ``softplus(correction[:, D]) / log 2`` (1 at
        zero), plus 1e-3 (never exactly uniform): ``weight = kappa mu / r``."""
        direction = F.normalize(F.normalize(activations, dim=1) + correction[:, :-1], dim=1)
        mean_kappa = self.kappa.detach().mean()
        concentration = F.softplus(correction[:, -1]) * (mean_kappa / math.log(2.0)) + 1e-3
        return (concentration / self.radius).unsqueeze(1) * direction

    def __repr__(self) -> str:
        return (f"SphereDistribution(num_classes={self.num_classes}, dim={self.dim}, radius={self.radius:.6g}, "
                f"dtype={self.weight.dtype}, device={self.weight.device})")


def _mle_radius(weight: Tensor, a: Tensor, labels: Tensor) -> float:
    """Root in r of ``sum_c n_c A_D(r k_c) k_c = s``, ``k_c = ||w_c||``, ``s = sum_i w_{y_i} . u_i``.

    The left side rises from 0 to ``sum_c n_c k_c`` (A_D increases from 0 to 1), so the root is
    unique when ``0 < s < sum_c n_c k_c``; bisection on log r, bracketed by doubling."""
    w = weight.double()
    u = a.double()
    u = u / u.norm(dim=1, keepdim=True)
    target = float((w[labels] * u).sum())
    counts = torch.bincount(labels, minlength=w.shape[0]).double()
    norms = w.norm(dim=1)
    ceiling = float((counts * norms).sum())
    if not target > 0:
        raise ValueError("radius='mle' has no positive root: the activations do not point along their class "
                         f"weights on average (sum of w_y . u = {target:.4g}); use radius='norm' or a number")
    if target >= ceiling:
        raise ValueError("radius='mle' diverges: every activation points exactly along its class weight")
    dim = w.shape[1]

    def excess(r: float) -> float:
        return float((counts * ops.vmf_mean_resultant(dim, r * norms) * norms).sum()) - target

    low, high = 1e-12, 1.0
    while excess(high) < 0:
        low, high = high, high * 2
    for _ in range(200):
        mid = math.sqrt(low * high)
        if excess(mid) < 0:
            low = mid
        else:
            high = mid
        if high / low - 1 < 1e-13:
            break
    return math.sqrt(low * high)
