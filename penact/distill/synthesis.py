"""Turning sampled penultimate activations back into inputs (docs/model.md, "How the distribution
serves distillation").

Given target activations ``a_i ~ p(a | y_i)`` drawn from the teacher's distribution, find images
``x_i = sigmoid(z_i)`` (pixels in ``(0, 1)``) that minimize

    match(f_T(x_i), a_i) + tv_weight * TV(x_i) + l2_weight * mean(x_i^2)

with Adam on ``z`` from ``z ~ N(0, 1)``, where ``f_T`` is the teacher's penultimate map and
``TV`` the mean absolute difference of neighbouring pixels (the light image prior). ``match`` is

- ``"cosine"``: ``1 - cos(f_T(x), a)``, for families whose samples are directions (the sphere);
- ``"mse"``: ``||f_T(x) - a||^2 / D``, for families whose samples live where activations live
  (the rectified family);
- ``"log_prob"``: ``-log p(f_T(x) | y) / D``, the negative log-density of the class itself
  (no target sample: pulls every ``x`` toward the class's mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..families import ClassConditionalDistribution

MATCH_LOSSES = ("auto", "cosine", "mse", "log_prob")


def resolve_match(match: str, distribution: ClassConditionalDistribution) -> str:
    """``"auto"`` is the family's own ``default_match``."""
    if match not in MATCH_LOSSES:
        raise ValueError(f"match must be one of {MATCH_LOSSES}, got {match!r}")
    return distribution.default_match if match == "auto" else match


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference of vertically and horizontally adjacent pixels, ``[N]``;
    ``images: [N, C, H, W]``."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(dim=1)
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return vertical + horizontal


def random_translate(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each image of ``images: [N, C, H, W]`` translated by its own integer offset, uniform in
    ``[-max_shift, max_shift]`` per axis and drawn by ``generator`` (on its own device: one on
    ``images``' device copies nothing from the host), with zeros shifted in:
    ``out[n, c, i, j] = images[n, c, i - dy_n, j - dx_n]``, 0 outside."""
    count, channels, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, count), device=generator.device, generator=generator)
    offsets = offsets.to(images.device)
    rows = (torch.arange(height, device=images.device) + offsets[0, :, None])[:, None, :, None]
    cols = (torch.arange(width, device=images.device) + offsets[1, :, None])[:, None, None, :]
    picked_rows = padded.gather(2, rows.expand(count, channels, height, padded.shape[3]))
    return picked_rows.gather(3, cols.expand(count, channels, height, width))


def class_quota(size: int, num_classes: int, device: torch.device | str = "cpu") -> Tensor:
    """``[C]`` counts summing to ``size``, as equal as they can be (the first ``size % C`` one more)."""
    quota = torch.full((num_classes,), size // num_classes, device=device)
    quota[:size % num_classes] += 1
    return quota


def balanced_rows(reads: Tensor, quota: Tensor) -> Tensor:
    """``quota.sum()`` row indices of ``reads: [N]`` (the class each row is read as): for every
    class ``c`` its first ``quota[c]`` rows, then, where a class has too few, the remaining rows in
    order (all rows when ``N`` is smaller)."""
    order = torch.argsort(reads, stable=True)
    sorted_reads = reads[order]
    rank_in_class = torch.empty_like(order)
    rank_in_class[order] = torch.arange(len(order), device=reads.device) - torch.searchsorted(sorted_reads, sorted_reads)
    kept = rank_in_class < quota[reads]
    return torch.cat([kept.nonzero().squeeze(1), (~kept).nonzero().squeeze(1)])[:int(quota.sum())]


def synthesize_inputs(teacher: nn.Module, distribution: ClassConditionalDistribution, targets: Tensor,
                      labels: Tensor, image_shape: tuple[int, ...], generator: torch.Generator, *, steps: int = 100,
                      lr: float = 0.1, match: str = "auto", tv_weight: float = 0.05, l2_weight: float = 0.0,
                      jitter: int = 0) -> Tensor:
    """Images ``[N, *image_shape]`` whose teacher activations ``teacher.features(x): [N, D]`` match
    ``targets: [N, D]`` (drawn for ``labels: [N]``). The initial ``z`` is drawn by ``generator`` on
    its own device (one on ``targets``' device copies nothing from the host), then moved to
    ``targets``' device; the teacher's parameters receive no gradient.

    ``jitter = k > 0``: at every step the teacher sees each image translated by its own random
    offset of up to ``k`` pixels per axis (:func:`random_translate`, drawn by ``generator``), so the
    match cannot rest on a pixel pattern tied to one position (DeepInversion's jitter, Yin et al.
    2020); the prior is taken on the untranslated image."""
    match = resolve_match(match, distribution)
    logits = torch.randn((targets.shape[0], *image_shape), generator=generator, device=generator.device)
    logits = logits.to(targets.device)
    logits.requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    requires_grad = [p.requires_grad for p in teacher.parameters()]
    teacher.requires_grad_(False)
    try:
        for _ in range(steps):
            images = torch.sigmoid(logits)
            activations = teacher.features(random_translate(images, jitter, generator) if jitter else images)
            if match == "cosine":
                mismatch = 1 - F.cosine_similarity(activations, targets, dim=1)
            elif match == "mse":
                mismatch = (activations - targets).square().mean(dim=1)
            else:
                mismatch = -distribution.log_prob(activations, labels) / activations.shape[1]
            prior = tv_weight * total_variation(images) + l2_weight * images.square().flatten(1).mean(dim=1)
            loss = (mismatch + prior).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for parameter, flag in zip(teacher.parameters(), requires_grad):
            parameter.requires_grad_(flag)
    return torch.sigmoid(logits).detach()
