"""What every penact family shares: a class-conditional model p(a | y) whose generative classifier
is exactly ``softmax(W a + b)`` (a generative-discriminative pair), so trainers take any family."""
from __future__ import annotations

import abc

import torch
from torch import Tensor

from ._random import resolve_seed


def check_finite(name: str, t: Tensor) -> None:
    """Raises ValueError naming ``name`` if ``t`` holds a non-finite value."""
    # A value check is a data-dependent branch, which torch.compile cannot trace: compiled code
    # skips it (validate the parameters once, outside the compiled function).
    if torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")


def checked_layer(weight: Tensor, bias: Tensor | None, min_dim: int) -> tuple[Tensor, Tensor]:
    """A final layer's ``(weight [C, D], bias [C])`` after the checks every family needs: float32 or
    float64, finite, ``C >= 1``, ``D >= min_dim``; ``bias=None`` becomes zeros.

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
    check_finite("weight", weight.detach())
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape [C] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if bias.dtype != weight.dtype or bias.device != weight.device:
        raise ValueError(f"bias must match weight's dtype and device ({weight.dtype}, {weight.device}), "
                         f"got {bias.dtype}, {bias.device}")
    check_finite("bias", bias.detach())
    return weight, bias


class ClassConditionalDistribution(abc.ABC):
    """A family of class-conditional distributions of penultimate activations, defined by a final
    linear layer ``(weight [C, D], bias [C])``, with prior ``log_prior [C]`` such that
    ``posterior(a) = softmax(weight a + bias)``.

    Subclasses provide ``weight``, ``bias``, ``log_prior``, ``sample``, ``log_prob`` and
    ``log_prob_all``; the mixture quantities below follow from them.
    """

    weight: Tensor
    bias: Tensor

    @property
    def dim(self) -> int:
        """D, the dimension of the activations."""
        return self.weight.shape[1]

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return self.weight.shape[0]

    @property
    @abc.abstractmethod
    def log_prior(self) -> Tensor:
        """``log p(y)``, ``[C]``."""

    @abc.abstractmethod
    def sample(self, labels: Tensor, seed: int | None = None, offset: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draws one activation per label, ``[N, D]``; row i uses the stream ``(seed, offset + i)``."""

    @abc.abstractmethod
    def log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log p(x_i | y_i)``, ``[N]``."""

    @abc.abstractmethod
    def log_prob_all(self, x: Tensor) -> Tensor:
        """``log p(x_i | c)`` for every class, ``[N, C]``."""

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
        """``log p(x_i, c) = log p(x_i | c) + log p(c)``, ``[N, C]``."""
        return self.log_prob_all(x) + self.log_prior

    def log_marginal(self, x: Tensor) -> Tensor:
        """``log p(x_i) = logsumexp_c log p(x_i, c)``, ``[N]`` (the free energy of the classifier)."""
        return torch.logsumexp(self.log_joint_all(x), dim=1)

    def posterior(self, x: Tensor) -> Tensor:
        """``p(c | x_i)``, ``[N, C]``; equals ``softmax(W x + b)`` on the support (the GD pair)."""
        return torch.softmax(self.log_joint_all(x), dim=1)
