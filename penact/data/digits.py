"""scikit-learn's built-in handwritten digits (1797 images, 8x8, 10 classes; shipped with
scikit-learn, so nothing is downloaded), split once into a fixed stratified train/test split.

Every consumer (the demo, the distillation trainer, the tests) uses the same split, so accuracies
reported by one are comparable with the others.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

# The split is part of the benchmark's definition: changing either constant changes every number.
TEST_FRACTION = 0.25
SPLIT_SEED = 0
NUM_CLASSES = 10
IMAGE_SIZE = 8


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed split. Images are ``float32`` in ``[0, 1]`` (the raw 0..16 intensities / 16).

    ``train_images: [N_train, 1, 8, 8]``, ``train_labels: [N_train]`` (int64),
    ``test_images: [N_test, 1, 8, 8]``, ``test_labels: [N_test]``.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


@functools.lru_cache(maxsize=1)
def _load() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train_index, test_index = train_test_split(torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION,
                                               random_state=SPLIT_SEED, stratify=labels.numpy())
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    return DigitsSplit(images[train_index], labels[train_index], images[test_index], labels[test_index])


def load_digits_split() -> DigitsSplit:
    """The fixed stratified split of scikit-learn's digits (75% train, 25% test), as CPU tensors.

    Cached: every call returns tensors that share memory; clone before modifying them in place.
    """
    return _load()
