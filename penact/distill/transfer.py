"""Transfer sets for distillation: the unlabelled images a student is taught on.

- ``in-domain``: the teacher's training images (labels hidden);
- ``corrupted``: the same images under a fixed random shift (see ``corrupt``), one corrupted copy
  per image, drawn once from the run's seed;
- ``partial``: the training images of classes 0-4 only;
- ``none``: no images at all (data-free distillation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import DigitsSplit

TRANSFER_SETS = ("in-domain", "corrupted", "partial", "none")
PARTIAL_CLASSES = (0, 1, 2, 3, 4)
DEFAULT_SEVERITY = 3.0
# Per unit of severity: the bound of the uniform rotation angle and the std of the pixel noise.
ROTATION_DEGREES_PER_SEVERITY = 45.0
NOISE_STD_PER_SEVERITY = 0.25


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


def transfer_images(name: str, data: DigitsSplit, severity: float = DEFAULT_SEVERITY, seed: int = 0) -> Tensor:
    """The transfer set ``name`` (one of ``TRANSFER_SETS``) built from ``data``'s training split,
    ``[M, 1, 8, 8]`` (``M = 0`` for ``none``). ``seed`` fixes the corruption draw."""
    if name == "in-domain":
        return data.train_images
    if name == "corrupted":
        return corrupt(data.train_images, severity, torch.Generator().manual_seed(seed))
    if name == "partial":
        keep = torch.isin(data.train_labels, torch.tensor(PARTIAL_CLASSES))
        return data.train_images[keep]
    if name == "none":
        return data.train_images[:0]
    raise ValueError(f"transfer set must be one of {TRANSFER_SETS}, got {name!r}")
