"""What every operator module shares: the compiled library (importing ``penact._C`` runs the
operator registrations of ``csrc/``) and the conversion of seeds to the schema's ``int``."""
from __future__ import annotations

import contextlib

import torch

from .. import _C

library = torch.ops.penact


def as_int64(seed: int) -> int:
    """A seed in ``[0, 2^64)`` as the int64 with the same bits (the operator schema's ``int``).

    Raises:
        ValueError: a seed outside ``[0, 2^64)``.
    """
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


@contextlib.contextmanager
def skip_device_checks():
    """Within this context the CUDA operators skip the host side of their value checks.

    Every operator checks the values it reads (labels in range, unit mean directions, non-negative
    activations, valid base-measure parameters) inside its kernels; on CUDA, raising needs the
    kernels' findings on the host, one synchronization per call. In a training loop whose inputs
    are known to be valid (labels the loop made itself, activations of a ReLU), that stall can be
    skipped: out-of-range labels then give NaN rows (never an out-of-bounds read), other bad values
    NaN or undefined results, and nothing is raised. The CPU operators always check (their findings
    need no synchronization), and so does graph capture never (it forbids synchronization). The
    switch is process-wide, restored on exit.
    """
    previous = _C._set_device_checks(False)
    try:
        yield
    finally:
        _C._set_device_checks(previous)
