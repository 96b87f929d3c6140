"""The teacher's distribution as a latent space: what the generators need from a family.

A :class:`LatentSpace` wraps the fitted class-conditional distribution ``p(a | y)`` of a teacher's
penultimate activations (any registered family, through its protocol) and gives:

- ``prior_sample(labels)``: activations drawn from the teacher's distribution of each class;
- ``embed(features)``: the teacher's own activation of an image, placed on the family's support
  (``support``: the sphere family models ``r a / ||a||``; the rectified family the raw ReLU output);
- ``posterior(features, correction)``: a reparameterizable posterior in the same family for a VAE
  encoder, the family's distribution with one weight row per image (``centred_weight``: centred
  on the teacher's reading of the image plus a learned correction), with the closed-form KL to a
  class of the teacher (labelled mode), to the classes weighted by the teacher's reading of the
  image (label-free, joint latent), and its log-density for the Monte Carlo KL to the class mixture;
- ``class_log_posterior(features)``: the teacher's class reading of an image;
- ``normalize(a)``: the network input, the direction of ``a`` scaled to norm ``sqrt(D)`` (unit-size
  coordinates whatever the radius or scale the teacher fitted; for the rectified family this
  drops the norm: the networks of every family see directions).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..families import ClassConditionalDistribution, family_names

FAMILIES = family_names()


class LatentSpace:
    """The latent space of one family, defined by the teacher's fitted ``distribution``.

    Args:
        distribution: a fitted family (its ``latent_prior()`` is used: parameters detached, the
            generators never train the teacher).
    """

    def __init__(self, distribution: ClassConditionalDistribution):
        self.family = distribution.name
        self.distribution = distribution.latent_prior()
        self.posterior_size = self.distribution.centred_weight_size

    def to(self, device: torch.device | str) -> LatentSpace:
        """This space with its distribution on ``device`` (moved without the constructor's value
        checks, which synchronize with a GPU)."""
        moved = copy.copy(self)
        moved.distribution = self.distribution.to(device)
        return moved

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
        return self.distribution.support(features)

    def prior_sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """``a_i ~ p(a | labels[i])``, ``[N, D]`` (no gradient), seeded from ``generator``."""
        return self.distribution.sample(labels, generator=generator)

    def class_log_posterior(self, features: Tensor) -> Tensor:
        """The teacher's class reading ``log p(y | x)``, ``[N, C]``, of images with activations ``features
        [N, D]``: on the family's support ``log_softmax(W x + b)`` at ``x = embed(features)`` (the GD
        pair), used as such so that it stays finite off the support too."""
        x = self.embed(features)
        return torch.log_softmax(x @ self.distribution.weight.T + self.distribution.bias, dim=1)

    def reading(self, a: Tensor, labels: Tensor) -> tuple[float, float, float]:
        """How class-clear activations ``a: [N, D]`` of classes ``labels: [N]`` are to the teacher:
        ``(share read as their class, mean margin, margin std)``, the margin ``log p(y | a) -
        max_{k != y} log p(k | a)`` (the logit margin; negative where the teacher reads another
        class). At one mean margin, a wider spread puts more activations below zero."""
        log_posterior = self.class_log_posterior(a)
        own = log_posterior.gather(1, labels[:, None]).squeeze(1)
        other = log_posterior.scatter(1, labels[:, None], -math.inf).max(dim=1).values
        margin = own - other
        return (float((log_posterior.argmax(dim=1) == labels).double().mean()), float(margin.mean()),
                float(margin.std()))

    def log_prior_density(self, a: Tensor, labels: Tensor | None) -> Tensor:
        """``log p(a | y)`` (labelled) or ``log p(a) = log sum_y p(y) p(a | y)`` (``labels=None``), ``[N]``."""
        if labels is None:
            return self.distribution.log_marginal(a)
        return self.distribution.log_prob(a, labels)

    def posterior(self, features: Tensor, correction: Tensor) -> Posterior:
        """The VAE posterior for images whose teacher activations are ``features: [N, D]``, moved by
        an encoder's ``correction: [N, posterior_size]`` (zero: centred on the activation)."""
        if correction.dim() != 2 or correction.shape != (features.shape[0], self.posterior_size):
            raise ValueError(f"correction must have shape [N, {self.posterior_size}] = "
                             f"[{features.shape[0]}, {self.posterior_size}], got {tuple(correction.shape)}")
        weight = self.distribution.centred_weight(self.embed(features), correction)
        return Posterior(self, self.distribution.with_weight(weight))


class Posterior:
    """A batch of per-row posteriors ``q(a | x_i)``: the family's distribution with one weight row,
    i.e. one "class", per image (``rows``)."""

    def __init__(self, space: LatentSpace, rows: ClassConditionalDistribution):
        self.space = space
        self.dist = rows
        self.rows = torch.arange(rows.num_classes, device=rows.weight.device)

    @property
    def batch_size(self) -> int:
        return self.rows.shape[0]

    def repeat(self, times: int) -> Posterior:
        """The rows repeated ``times`` times (row ``k N + i`` is row ``i``)."""
        return Posterior(self.space, self.dist.with_weight(self.dist.weight.repeat(times, 1)))

    def rsample(self, generator: torch.Generator) -> Tensor:
        """One reparameterized draw per row, ``[N, D]``."""
        return self.dist.rsample(self.rows, generator=generator)

    def log_prob(self, a: Tensor) -> Tensor:
        """``log q(a_i | x_i)``, ``[N]``, in the measure of the teacher's ``log_prob``."""
        return self.dist.log_prob(a, self.rows)

    def kl_to_class(self, labels: Tensor) -> Tensor:
        """``KL(q(. | x_i) || p(. | labels[i]))`` in closed form, ``[N]``."""
        prior = self.space.distribution
        return self.dist.kl(prior.with_weight(prior.weight[labels]))

    def kl_to_classes(self) -> Tensor:
        """``KL(q(. | x_i) || p(. | c))`` for every class, ``[N, C]`` (the rows repeated per class)."""
        rows, classes = self.batch_size, self.space.num_classes
        labels = torch.arange(classes, device=self.rows.device).repeat_interleave(rows)
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


# The base-measure parameter of each family that sets how far its draws lie along their class's
# weight, the one a calibrated fit rescales: the sphere's radius (kappa_y = r ||w_y||) and the
# rectified family's scales (the non-zero part of a_j is N(s_j^2 w_yj, s_j^2) truncated to a > 0).
# Any value keeps the GD pair: p(y | a) = softmax(W a + b) for every radius and scale.
SPREAD = {"sphere": "radius", "rectified": "scale"}


def with_spread(distribution: ClassConditionalDistribution, factor: float) -> ClassConditionalDistribution:
    """``distribution`` with its spread parameter (:data:`SPREAD`) multiplied by ``factor > 0``.

    Raises:
        ValueError: a family without an entry in :data:`SPREAD`.
    """
    if distribution.name not in SPREAD:
        raise ValueError(f"no spread parameter is known for the {distribution.name!r} family (SPREAD: {tuple(SPREAD)})")
    spread = copy.copy(distribution)
    setattr(spread, SPREAD[distribution.name], getattr(distribution, SPREAD[distribution.name]) * factor)
    return spread


# What a calibrated fit matches to the real activations: the mean class margin, or the share of
# draws the teacher reads as their class (LatentSpace.reading's first two figures).
CALIBRATION_TARGETS = ("margin", "share")


def calibrated(distribution: ClassConditionalDistribution, features: Tensor, labels: Tensor, seed: int,
               per_class: int = 500, bracket: tuple[float, float] = (0.25, 4.0), iterations: int = 30,
               target: str = "margin") -> tuple[ClassConditionalDistribution, float]:
    """The fit whose draws are as class-clear to the teacher as its real activations: ``distribution``
    (a maximum-likelihood fit) with its spread multiplied by the ``factor`` at which ``per_class``
    draws of every class match the real activations ``features: [N, D]`` of classes ``labels: [N]``
    (on the support) in ``target``: the mean margin (:meth:`LatentSpace.reading`), or the share
    read as their class (the smallest such factor: the share is a step function of it). By
    bisection on ``log factor`` within ``bracket``, the same draws' seeds at every step (both
    figures then increase with the factor). Returns ``(distribution, factor)``; a factor at the
    bracket's edge means the figures do not meet inside it."""
    if target not in CALIBRATION_TARGETS:
        raise ValueError(f"target must be one of {CALIBRATION_TARGETS}, got {target!r}")
    figure = {"share": 0, "margin": 1}[target]  # LatentSpace.reading's order
    goal = LatentSpace(distribution).reading(distribution.support(features).to(distribution.weight.dtype),
                                             labels)[figure]
    draw_labels = torch.arange(distribution.num_classes, device=labels.device).repeat_interleave(per_class)

    def measured(log_factor: float) -> float:
        space = LatentSpace(with_spread(distribution, math.exp(log_factor)))
        return space.reading(space.prior_sample(draw_labels, torch.Generator().manual_seed(seed)), draw_labels)[figure]

    low, high = math.log(bracket[0]), math.log(bracket[1])
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (middle, high) if measured(middle) < goal else (low, middle)
    factor = math.exp((low + high) / 2) if target == "margin" else math.exp(high)
    return with_spread(distribution, factor), factor


def shuffle_within_class(a: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
    """``a: [N, D]`` with every coordinate permuted independently among the rows of each class
    (``labels: [N]``; permutations drawn on the CPU from ``generator``): each class keeps its
    coordinates' marginals and loses their dependence, the independence every family assumes given
    the class (``shuffled[i, j] = a[pi_j(i), j]`` with ``pi_j`` a permutation within ``labels[i]``'s rows)."""
    shuffled = torch.empty_like(a)
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().squeeze(1)
        order = torch.rand(rows.shape[0], a.shape[1], generator=generator).argsort(dim=0).to(a.device)
        shuffled[rows] = a[rows].gather(0, order)
    return shuffled


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with gradients off for its parameters (a teacher or a judge)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
