"""Datasets for penact's trainers and demo (no downloads)."""
from .digits import DigitsSplit, load_digits_split

__all__ = ["DigitsSplit", "load_digits_split"]
