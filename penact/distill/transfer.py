"""Transfer sets for distillation: the unlabelled images a student is taught on, built from a data
set's training split (``train_images: [N, 1, H, W]`` in ``[0, 1]``, ``train_labels: [N]``).

- ``in-domain``: the teacher's training images (labels hidden);
- ``corrupted``: the same images under a fixed random shift (see ``corrupt``), one corrupted copy
  per image, drawn once from the run's seed;
- ``partial``: the training images of classes 0-4 only;
- ``shifted``: another source of handwriting, for 28x28 data (MNIST): all of scikit-learn's
  digits framed like MNIST (``penact.data.load_digits_28``, standing in for USPS);
- ``noise``: as many images of i.i.d. Gaussian pixels with the training images' mean and standard
  deviation (MNIST: 0.1307, 0.3081, i.e. ``N(0, 1)`` in the normalized input space LeNet-5 reads,
  DAFL's random-noise baseline), not clipped, drawn once from the run's seed;
- ``none``: no images at all (data-free distillation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import load_digits_28

TRANSFER_SETS = ("in-domain", "corrupted", "partial", "shifted", "noise", "none")
PARTIAL_CLASSES = (0, 1, 2, 3, 4)
DEFAULT_SEVERITY = 3.0
# Per unit of severity: the bound of the uniform rotation angle and the std of the pixel noise.
ROTATION_DEGREES_PER_SEVERITY = 45.0
NOISE_STD_PER_SEVERITY = 0.25
SHIFTED_IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class TransferSet:
    """``images: [M, 1, H, W]`` and, where they exist, their true ``labels: [M]`` (never shown to a
    student: they measure how far the set lies from the teacher's domain); None for noise."""

    images: Tensor
    labels: Tensor | None


def corrupt(images: Tensor, severity: float, generator: torch.Generator) -> Tensor:
    """Rotates each image ``[N, 1, H, W]`` (values in ``[0, 1]``) by an angle uniform in
    ``+-45 * severity`` degrees (bilinear, zero fill), adds Gaussian noise of std
    ``0.25 * severity`` and clips to ``[0, 1]``. ``severity = 0`` returns a copy of ``images``.

    At the default severity 3 (rotations up to 135 degrees, noise std 0.75) a digits teacher at 98%
    classifies about 16% of the corrupted training images correctly.
    """
    if not (math.isfinite(severity) and severity >= 0):
        raise ValueError(f"severity must be a finite non-negative number, got {severity}")
    count = images.shape[0]
    angle = (torch.rand(count, generator=generator, dtype=images.dtype) * 2 - 1) * math.radians(
        ROTATION_DEGREES_PER_SEVERITY * severity)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    rotation = torch.stack([torch.stack([cos, -sin, zero], dim=1), torch.stack([sin, cos, zero], dim=1)], dim=1)
    grid = F.affine_grid(rotation, list(images.shape), align_corners=False)
    rotated = F.grid_sample(images, grid, align_corners=False)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype) * (NOISE_STD_PER_SEVERITY * severity)
    return (rotated + noise).clamp_(0, 1)


def transfer_set(name: str, data, severity: float = DEFAULT_SEVERITY, seed: int = 0) -> TransferSet:
    """The transfer set ``name`` (one of ``TRANSFER_SETS``) for ``data``'s training split (``M = 0``
    images for ``none``). ``seed`` fixes the corruption's and the noise's draws.

    Raises:
        ValueError: an unknown name, or ``shifted`` for images that are not ``[N, 1, 28, 28]``.
    """
    images, labels = data.train_images, data.train_labels
    if name == "in-domain":
        return TransferSet(images, labels)
    if name == "corrupted":
        return TransferSet(corrupt(images, severity, torch.Generator().manual_seed(seed)), labels)
    if name == "partial":
        keep = torch.isin(labels, torch.tensor(PARTIAL_CLASSES))
        return TransferSet(images[keep], labels[keep])
    if name == "shifted":
        if tuple(images.shape[1:]) != SHIFTED_IMAGE_SHAPE:
            raise ValueError(f"the shifted domain is made for {SHIFTED_IMAGE_SHAPE} images (MNIST), got "
                             f"{tuple(images.shape[1:])}")
        return TransferSet(*load_digits_28())
    if name == "noise":
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed), dtype=images.dtype)
        return TransferSet(images.mean() + images.std() * noise, None)
    if name == "none":
        return TransferSet(images[:0], labels[:0])
    raise ValueError(f"transfer set must be one of {TRANSFER_SETS}, got {name!r}")


def transfer_images(name: str, data, severity: float = DEFAULT_SEVERITY, seed: int = 0) -> Tensor:
    """The images of :func:`transfer_set`, ``[M, 1, H, W]``."""
    return transfer_set(name, data, severity, seed).images
