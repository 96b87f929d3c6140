"""The teacher's distribution as a latent space: what the generators need from each family.

A :class:`LatentSpace` wraps the fitted class-conditional distribution ``p(a | y)`` of a teacher's
penultimate activations (sphere or rectified) and gives:

- ``prior_sample(labels)``: activations drawn from the teacher's distribution of each class;
- ``embed(features)``: the teacher's own activation of an image, placed on the family's support
  (the sphere family models ``r a / ||a||``; the rectified family the raw ReLU output);
- ``posterior(features, correction)``: a reparameterizable posterior in the same space for a VAE
  encoder, centred on the teacher's reading of the image plus a learned correction (a von
  Mises-Fisher on the sphere; a rectified distribution with per-row natural parameters and the
  teacher's scale and zero mass), with the closed-form KL to a class of the teacher
  (labelled mode), to the classes weighted by the teacher's reading of the image (label-free,
  joint latent) and its log-density for the Monte Carlo KL to the class mixture;
- ``class_log_posterior(features)``: the teacher's class reading of an image;
- ``normalize(a)``: the network input, the direction of ``a`` scaled to norm ``sqrt(D)`` (unit-size
  coordinates whatever the radius or scale the teacher fitted; for the rectified family this
  drops the norm: the networks of both families see directions).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import kl_divergence

from ..base import ClassConditionalDistribution
from ..distribution import PenultimateDistribution
from ..distributions import VonMisesFisher
from ..rectified import RectifiedDistribution

FAMILIES = ("sphere", "rectified")


class LatentSpace:
    """The latent space of one family, defined by the teacher's fitted ``distribution``.

    Args:
        distribution: a fitted :class:`PenultimateDistribution` or :class:`RectifiedDistribution`
            (its parameters are detached: the generators never train the teacher).
    """

    def __init__(self, distribution: ClassConditionalDistribution):
        if isinstance(distribution, PenultimateDistribution):
            self.family = "sphere"
            self.distribution = PenultimateDistribution(distribution.weight.detach(), distribution.bias.detach(),
                                                        distribution.radius)
            self.posterior_size = distribution.dim + 1  # a direction and a concentration
        elif isinstance(distribution, RectifiedDistribution):
            self.family = "rectified"
            # A unit never zero in the fit data has zero_mass 0, and a generated image's zero there would
            # have log-density -inf: P(a_j = 0) is floored at about 1e-6 instead (m_j >= 1e-6 s_j).
            scale = distribution.scale.detach()
            self.distribution = RectifiedDistribution(distribution.weight.detach(), distribution.bias.detach(), scale,
                                                      torch.maximum(distribution.zero_mass.detach(), 1e-6 * scale))
            self.posterior_size = distribution.dim  # natural parameters
        else:
            raise TypeError(f"distribution must be a PenultimateDistribution or a RectifiedDistribution, "
                            f"got {type(distribution).__name__}")

    @property
    def dim(self) -> int:
        return self.distribution.dim

    @property
    def num_classes(self) -> int:
        return self.distribution.num_classes

    def normalize(self, a: Tensor) -> Tensor:
        return F.normalize(a, dim=1) * math.sqrt(self.dim)

    def embed(self, features: Tensor) -> Tensor:
        """The teacher's activations ``[N, D]`` of real images, on the family's support."""
        if self.family == "sphere":
            return self.distribution.radius * F.normalize(features, dim=1)
        return features

    def prior_sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """``a_i ~ p(a | labels[i])``, ``[N, D]`` (no gradient), seeded from ``generator``."""
        return self.distribution.sample(labels, generator=generator)

    def class_log_posterior(self, features: Tensor) -> Tensor:
        """The teacher's class reading ``log p(y | x)``, ``[N, C]``, of images with activations ``features
        [N, D]``: on the family's support ``log_softmax(W x + b)`` at ``x = embed(features)`` (the GD
        pair), used as such so that it stays finite off the support too."""
        x = self.embed(features)
        return torch.log_softmax(x @ self.distribution.weight.T + self.distribution.bias, dim=1)

    def log_prior_density(self, a: Tensor, labels: Tensor | None) -> Tensor:
        """``log p(a | y)`` (labelled) or ``log p(a) = log sum_y p(y) p(a | y)`` (``labels=None``), ``[N]``."""
        if labels is None:
            return self.distribution.log_marginal(a)
        return self.distribution.log_prob(a, labels)

    def posterior(self, features: Tensor, correction: Tensor) -> "Posterior":
        """The VAE posterior for images whose teacher activations are ``features: [N, D]``, moved by
        an encoder's ``correction: [N, posterior_size]`` (zero: centred on the activation)."""
        if correction.dim() != 2 or correction.shape != (features.shape[0], self.posterior_size):
            raise ValueError(f"correction must have shape [N, {self.posterior_size}] = "
                             f"[{features.shape[0]}, {self.posterior_size}], got {tuple(correction.shape)}")
        if self.family == "sphere":
            return SpherePosterior(self, F.normalize(features, dim=1) + correction[:, :-1], correction[:, -1])
        # The natural parameter whose truncated normal is centred at a: a / s^2, with t = s w = a / s
        # capped at 30 (a unit the fit found dead has a tiny scale; an activation there would overflow).
        scale = self.distribution.scale
        return RectifiedPosterior(self, (features / scale).clamp(max=30.0) / scale + correction)


class Posterior:
    """A batch of per-row posteriors ``q(a | x_i)``."""

    def rsample(self, generator: torch.Generator) -> Tensor:
        """One reparameterized draw per row, ``[N, D]``."""
        raise NotImplementedError

    def log_prob(self, a: Tensor) -> Tensor:
        """``log q(a_i | x_i)``, ``[N]``, in the measure of the teacher's ``log_prob``."""
        raise NotImplementedError

    def kl_to_class(self, labels: Tensor) -> Tensor:
        """``KL(q(. | x_i) || p(. | labels[i]))`` in closed form, ``[N]``."""
        raise NotImplementedError

    @property
    def batch_size(self) -> int:
        raise NotImplementedError

    def repeat(self, times: int) -> "Posterior":
        """The rows repeated ``times`` times (row ``k N + i`` is row ``i``)."""
        raise NotImplementedError

    def kl_to_classes(self) -> Tensor:
        """``KL(q(. | x_i) || p(. | c))`` for every class, ``[N, C]`` (the rows repeated per class)."""
        rows, classes = self.batch_size, self.space.num_classes
        labels = torch.arange(classes, device=self.space.distribution.weight.device).repeat_interleave(rows)
        return self.repeat(classes).kl_to_class(labels).view(classes, rows).T

    def kl(self, a: Tensor, labels: Tensor | None, class_posterior: Tensor | None = None, *,
           free_kl: str = "joint") -> Tensor:
        """The KL term of the ELBO, ``[N]``.

        With ``labels``: closed form to class ``labels[i]``. Label-free (``labels=None``), against
        the teacher's class mixture ``p(a) = sum_c p(c) p(a | c)``:

        - ``free_kl="joint"``: the class is a latent too, with ``q(c | x_i) = class_posterior[i]``
          (the teacher's posterior at its own activation of the image): ``KL(q(c | x) ||
          p(c)) + sum_c q(c | x) KL(q(a | x) || p(a | c))``, in closed form; it bounds the KL to
          the mixture from above (the ELBO of the joint latent).
        - ``free_kl="mixture"``: the one-draw Monte Carlo estimate ``log q(a_i | x_i) - log p(a_i)``
          (``a``: the draw from :meth:`rsample`, ``log p`` by ``log_marginal``).
        """
        if labels is not None:
            return self.kl_to_class(labels)
        if free_kl == "mixture":
            return self.log_prob(a) - self.space.log_prior_density(a, None)
        if free_kl != "joint":
            raise ValueError(f"free_kl must be 'joint' or 'mixture', got {free_kl!r}")
        log_q = torch.log(class_posterior.clamp_min(torch.finfo(class_posterior.dtype).tiny))
        class_kl = (class_posterior * (log_q - self.space.distribution.log_prior)).sum(dim=1)
        return class_kl + (class_posterior * self.kl_to_classes()).sum(dim=1)


class SpherePosterior(Posterior):
    """``u ~ vMF(normalize(direction), kappa)``, ``a = r u``, with ``kappa`` the teacher's mean
    concentration times ``softplus(log_kappa) / log 2`` (1 at ``log_kappa = 0``)."""

    def __init__(self, space: LatentSpace, direction: Tensor, log_kappa: Tensor):
        self.space = space
        mean_kappa = float(space.distribution.kappa.mean())
        concentration = F.softplus(log_kappa) * (mean_kappa / math.log(2.0)) + 1e-3
        self.vmf = VonMisesFisher(F.normalize(direction, dim=1), concentration, validate_args=False)

    @property
    def batch_size(self) -> int:
        return self.vmf.loc.shape[0]

    def repeat(self, times: int) -> "SpherePosterior":
        new = SpherePosterior.__new__(SpherePosterior)
        new.space = self.space
        new.vmf = VonMisesFisher(self.vmf.loc.repeat(times, 1), self.vmf.concentration.repeat(times),
                                 validate_args=False)
        return new

    def rsample(self, generator: torch.Generator) -> Tensor:
        return self.space.distribution.radius * self.vmf.rsample(generator=generator)

    def log_prob(self, a: Tensor) -> Tensor:
        return self.vmf.log_prob(a)

    def kl_to_class(self, labels: Tensor) -> Tensor:
        return kl_divergence(self.vmf, self.space.distribution.component(labels))


class RectifiedPosterior(Posterior):
    """``q(a | x_i)``: the rectified distribution with natural parameters ``natural[i]`` and the teacher's
    scale and zero mass, an exponential family shared with the prior (closed-form KL)."""

    def __init__(self, space: LatentSpace, natural: Tensor):
        self.space = space
        dist = space.distribution
        self.rows = torch.arange(natural.shape[0], device=natural.device)
        self.dist = RectifiedDistribution(natural, None, dist.scale, dist.zero_mass)

    @property
    def batch_size(self) -> int:
        return self.rows.shape[0]

    def repeat(self, times: int) -> "RectifiedPosterior":
        return RectifiedPosterior(self.space, self.dist.weight.repeat(times, 1))

    def rsample(self, generator: torch.Generator) -> Tensor:
        return self.dist.rsample(self.rows, generator=generator)

    def log_prob(self, a: Tensor) -> Tensor:
        return self.dist.log_prob(a, self.rows)

    def kl_to_class(self, labels: Tensor) -> Tensor:
        prior = self.space.distribution
        return self.dist.kl(RectifiedDistribution(prior.weight[labels], None, prior.scale, prior.zero_mass))


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with gradients off for its parameters (a teacher or a judge)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
