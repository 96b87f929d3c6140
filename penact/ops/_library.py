"""What every operator module shares: the compiled library (importing ``penact._C`` runs the
operator registrations of ``csrc/``) and the conversion of seeds to the schema's ``int``."""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (loading the library registers torch.ops.penact)

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
