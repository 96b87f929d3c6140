"""A shifted domain for MNIST models: scikit-learn's handwritten digits (another source of
handwriting, standing in for USPS, which no package carries), framed the way MNIST frames its
digits.

MNIST's construction (LeCun et al.): each NIST digit was size-normalized to fit a 20x20 box
(preserving its aspect ratio, anti-aliased to grey levels), then placed in the 28x28 field with the
integer translation that brings its centre of mass nearest the field's centre (measured on the
60,000 training images: the centre of mass lies in [13.5, 14.5] on both axes, mean 14.0).
scikit-learn's 8x8 digits are already size-normalized to their box (every image spans all 8 rows;
each pixel counts the set pixels of a 4x4 block of a 32x32 bitmap, 0..16). So the 8x8 box plays
the part of MNIST's 20x20 box: :func:`frame_like_mnist` upsamples it bilinearly to 20x20 and
places it by the same centre-of-mass rule.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

MNIST_SIZE = 28
BOX_SIZE = 20
# MNIST's centre-of-mass target, in pixel indices (0..27) on both axes.
CENTRE = 14


def frame_like_mnist(images: Tensor) -> Tensor:
    """``images: [N, 1, h, w]`` in ``[0, 1]`` (a digit filling its box) -> ``[N, 1, 28, 28]``.

    Each image is resized to 20x20 (bilinear, ``align_corners=False``: a convex combination of
    neighbouring pixels, so values stay in ``[0, 1]`` and no ringing appears, unlike bicubic), then
    put in a zero 28x28 field at the integer offset ``round(14 - c)`` per axis, ``c`` its centre of
    mass in 20x20 pixel indices, clipped to ``[0, 8]`` so the box stays inside the field. An
    all-zero image is placed at the centre (offset 4).
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape [N, 1, h, w], got {tuple(images.shape)}")
    boxes = nn.functional.interpolate(images.float(), size=(BOX_SIZE, BOX_SIZE), mode="bilinear",
                                      align_corners=False)
    mass = boxes.sum(dim=(1, 2, 3))
    position = torch.arange(BOX_SIZE, dtype=boxes.dtype)
    centre_row = (boxes.sum(dim=3).squeeze(1) * position).sum(dim=1) / mass
    centre_col = (boxes.sum(dim=2).squeeze(1) * position).sum(dim=1) / mass
    margin = MNIST_SIZE - BOX_SIZE
    offsets = torch.stack([centre_row, centre_col], dim=1).nan_to_num(nan=(BOX_SIZE - 1) / 2)
    offsets = (CENTRE - offsets).round().clamp(0, margin).long()
    framed = boxes.new_zeros(len(boxes), 1, MNIST_SIZE, MNIST_SIZE)
    for image, box, (row, col) in zip(framed, boxes, offsets.tolist()):
        image[:, row:row + BOX_SIZE, col:col + BOX_SIZE] = box
    return framed


def load_digits_28() -> tuple[Tensor, Tensor]:
    """All 1,797 of scikit-learn's digits framed like MNIST (:func:`frame_like_mnist`), in
    scikit-learn's order: ``images: [1797, 1, 28, 28]`` float32 in ``[0, 1]``, ``labels: [1797]``
    int64.

    All of them, not the project's training split (:func:`penact.data.load_digits_split`): this
    domain is data an MNIST teacher never saw (alternative data for distillation, or a test of the
    teacher's transfer), and no model is trained and evaluated on it, so nothing needs holding
    out; the split's parts, framed, are ``frame_like_mnist(load_digits_split().train_images)``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The 0..16 counts scaled to [0, 1], as penact.data.digits scales them.
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    return frame_like_mnist(images), torch.from_numpy(digits.target).long()
