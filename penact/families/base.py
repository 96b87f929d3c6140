"""The protocol every penact family follows: a class-conditional model ``p(a | y)`` of a final
layer's input whose generative classifier is exactly ``softmax(W a + b)`` (a
generative-discriminative pair), so trainers, the demo and the benchmarks take any family.

A family is an exponential family in the final layer's weight rows over a class-independent base
measure ``nu`` on its support:

    log p(a | y) = w_y . a + log (d nu / d lambda)(a) - log_partition_y,
    log p(y)     = log softmax(b + log_partition)_y,

whence ``p(y | a) = softmax(W a + b)_y`` for every ``a`` in the support. What differs between
families is the support (a sphere of radius ``r``, the non-negative orthant, ...), the base measure
and its parameters, which subclasses define along with the fused operators that sample and
evaluate them.
"""
from __future__ import annotations

import abc
import copy
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._random import resolve_seed


def check_finite(name: str, t: Tensor) -> None:
    """Raises ValueError naming ``name`` if ``t`` holds a non-finite value."""
    # A value check is a data-dependent branch, which torch.compile cannot trace: compiled code
    # skips it (validate the parameters once, outside the compiled function).
    if torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")


def checked_layer(weight: Tensor, bias: Tensor | None, min_dim: int, validate_args: bool = True) -> tuple[Tensor, Tensor]:
    """A final layer's ``(weight [C, D], bias [C])`` after the checks every family needs: float32 or
    float64, ``C >= 1``, ``D >= min_dim`` and, with ``validate_args``, finite values (a check that
    synchronizes with a GPU); ``bias=None`` becomes zeros.

    Raises:
        ValueError: naming the argument and what was expected.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a tensor of shape [C, D], got {getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"weight must be float32 or float64, got {weight.dtype}")
    if weight.shape[1] < min_dim:
        raise ValueError(f"weight must have D >= {min_dim} columns, got D = {weight.shape[1]}")
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one class (row)")
    if validate_args:
        check_finite("weight", weight.detach())
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape [C] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if bias.dtype != weight.dtype or bias.device != weight.device:
        raise ValueError(f"bias must match weight's dtype and device ({weight.dtype}, {weight.device}), "
                         f"got {bias.dtype}, {bias.device}")
    if validate_args:
        check_finite("bias", bias.detach())
    return weight, bias


class ClassConditionalDistribution(abc.ABC):
    """A family of class-conditional distributions of penultimate activations, defined by a final
    linear layer ``(weight [C, D], bias [C])`` and the family's own base-measure parameters.

    Subclasses set ``name`` (the key under which :func:`penact.families.register_family` files them)
    and ``default_match``, and implement the abstract methods; the mixture quantities (``log_prior``,
    ``sample_n``, ``log_marginal``, ``posterior``) follow from them here, once for every family.
    """

    #: The registry key ("sphere", "rectified", ...).
    name: ClassVar[str]
    #: How input synthesis matches a teacher activation to a sampled one (``penact.distill``):
    #: ``"cosine"`` for families whose samples are directions, ``"mse"`` for those that live where
    #: raw activations live.
    default_match: ClassVar[str]

    weight: Tensor
    bias: Tensor

    # -- construction --------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def fit(cls, linear: nn.Linear, activations: Tensor, labels: Tensor | None = None) -> "ClassConditionalDistribution":
        """The family of ``linear`` with its base-measure parameters fitted to real activations
        ``[N, D]`` of the layer's input (``labels: [N]`` default to the classifier's predictions)."""

    def detach(self) -> "ClassConditionalDistribution":
        """The same distribution with every tensor parameter detached from autograd (not checked
        again: no synchronization with a GPU)."""
        return self._with_tensors(lambda t: t.detach())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ClassConditionalDistribution":
        """The same distribution with every tensor parameter on ``device`` and/or in ``dtype``
        (float32 or float64), as ``Tensor.to`` (autograd follows). The values were checked when
        it was built; nothing is checked again, so nothing synchronizes."""
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return self._with_tensors(lambda t: t.to(device=device, dtype=dtype))

    def with_weight(self, weight: Tensor, bias: Tensor | None = None) -> "ClassConditionalDistribution":
        """A distribution of this family with other weight rows (``weight: [K, D]``, one class per
        row; ``bias: [K]`` or zeros) and the same base-measure parameters, e.g. per-sample posteriors
        of a VAE. The rows are not value-checked (no synchronization with a GPU: for training loops).

        Raises:
            ValueError: a weight of another width, dtype or device, or a bias that does not match it.
        """
        if weight.dim() != 2 or weight.shape[1] != self.dim or weight.dtype != self.weight.dtype \
                or weight.device != self.weight.device:
            raise ValueError(f"weight must have shape [K, {self.dim}], dtype {self.weight.dtype} and device "
                             f"{self.weight.device}, got {tuple(weight.shape)}, {weight.dtype}, {weight.device}")
        new = copy.copy(self)
        new.weight, new.bias = checked_layer(weight, bias, min_dim=self.dim, validate_args=False)
        return new

    def _with_tensors(self, change) -> "ClassConditionalDistribution":
        """A shallow copy with change(t) in place of every tensor attribute (a family keeps its
        parameters as tensor attributes: weight, bias and its base-measure parameters)."""
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(new, name, change(value))
        return new

    # -- the support ---------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """D, the dimension of the activations."""
        return self.weight.shape[1]

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return self.weight.shape[0]

    @abc.abstractmethod
    def support(self, activations: Tensor) -> Tensor:
        """The point of the family's support that stands for each raw activation ``[N, D]`` (the
        sphere family evaluates ``r a / ||a||``; the rectified family ``a`` itself)."""

    # -- parameters ----------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def log_partition(self) -> Tensor:
        """``log Z_y = log int exp(w_y . a) nu(da)``, ``[C]`` (differentiable in the parameters)."""

    @property
    def log_prior(self) -> Tensor:
        """``log p(y) = log softmax(b + log Z)_y``, ``[C]``: the prior that makes the GD pair exact."""
        return torch.log_softmax(self.bias + self.log_partition, dim=0)

    # -- sampling and densities ----------------------------------------------------------------

    def sample(self, labels: Tensor, seed: int | None = None, offset: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draws one activation per label, ``x_i ~ p(x | labels[i])``, ``[N, D]``, without gradients.

        Row ``i`` depends only on ``(seed, offset + i, labels[i])`` and the parameters
        (docs/randomness.md). With ``seed=None`` a fresh seed comes from ``generator`` (default:
        ``torch.manual_seed``'s).
        """
        with torch.no_grad():
            return self.rsample(labels, seed=seed, offset=offset, generator=generator)

    @abc.abstractmethod
    def rsample(self, labels: Tensor, seed: int | None = None, offset: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """:meth:`sample` (the same values), differentiable in the parameters."""

    @abc.abstractmethod
    def log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log p(x_i | y_i)``, ``[N]``."""

    def log_prob_all(self, x: Tensor) -> Tensor:
        """``log p(x_i | c)`` for every class, ``[N, C]``."""
        return self._log_prob_all(x, self.log_partition)

    @abc.abstractmethod
    def _log_prob_all(self, x: Tensor, log_partition: Tensor) -> Tensor:
        """:meth:`log_prob_all` given ``log_partition`` (computed once by the mixture quantities)."""

    def sample_n(self, n: int, seed: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draws ``n`` pairs ``(x, y)`` from the joint: ``y ~ p(y)``, then ``x ~ p(x | y)``.

        Labels come from a ``torch.Generator`` seeded with ``seed`` (a fresh seed when None), the
        activations from the Philox streams ``(seed, i)``. Returns ``x: [n, D]``, ``y: [n]``.
        """
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        seed, _ = resolve_seed(seed, None, generator)
        label_generator = torch.Generator().manual_seed(seed % 2**63)
        probs = self.log_prior.detach().double().exp().cpu()
        labels = torch.multinomial(probs, n, replacement=True, generator=label_generator) if n else torch.empty(0, dtype=torch.long)
        labels = labels.to(self.weight.device)
        return self.sample(labels, seed=seed, offset=0), labels

    def log_joint_all(self, x: Tensor) -> Tensor:
        """``log p(x_i, c) = log p(x_i | c) + log p(c)``, ``[N, C]`` (``log Z`` computed once)."""
        log_partition = self.log_partition
        return self._log_prob_all(x, log_partition) + torch.log_softmax(self.bias + log_partition, dim=0)

    def log_marginal(self, x: Tensor) -> Tensor:
        """``log p(x_i) = logsumexp_c log p(x_i, c)``, ``[N]`` (the free energy of the classifier)."""
        return torch.logsumexp(self.log_joint_all(x), dim=1)

    def posterior(self, x: Tensor) -> Tensor:
        """``p(c | x_i)``, ``[N, C]``; equals ``softmax(W x + b)`` on the support (the GD pair)."""
        return torch.softmax(self.log_joint_all(x), dim=1)

    # -- closed forms --------------------------------------------------------------------------

    @abc.abstractmethod
    def mean(self) -> Tensor:
        """``E[a | y]``, ``[C, D]`` (a method, like :meth:`entropy`: per-class tables computed on demand)."""

    @abc.abstractmethod
    def entropy(self) -> Tensor:
        """The entropy of each class, ``[C]``, w.r.t. the family's reference measure."""

    @abc.abstractmethod
    def kl(self, other: "ClassConditionalDistribution") -> Tensor:
        """``KL(p(. | y) || other(. | y))`` per class, ``[C]``, for a distribution of the same family."""

    # -- generator transfer (penact.generate) --------------------------------------------------

    @property
    @abc.abstractmethod
    def centred_weight_size(self) -> int:
        """The width of the correction :meth:`centred_weight` takes."""

    @abc.abstractmethod
    def centred_weight(self, activations: Tensor, correction: Tensor) -> Tensor:
        """Weight rows ``[N, D]`` for :meth:`with_weight` whose distribution is centred on each
        activation ``[N, D]`` (on :meth:`support`) and moved by ``correction: [N, centred_weight_size]``
        (zero: centred on the activation): a VAE encoder's posterior in this family."""

    def latent_prior(self) -> "ClassConditionalDistribution":
        """The detached copy a generator uses as its prior of activations (:meth:`detach` unless a
        family needs to keep every density finite on generated activations)."""
        return self.detach()
