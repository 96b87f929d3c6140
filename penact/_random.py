"""Seeds and offsets for penact's counter-based sampling (docs/randomness.md).

A call with an explicit ``seed`` uses the Philox streams ``(seed, offset + i)`` for its rows
``i`` (``offset`` defaults to 0), so the same arguments always give the same samples. With
``seed=None`` a fresh 64-bit seed is drawn from ``generator`` (default: ``torch.default_generator``,
so ``torch.manual_seed`` makes runs reproducible and consecutive calls never share a stream).
"""
from __future__ import annotations

import hashlib

import torch


def resolve_seed(seed: int | None, offset: int | None, generator: torch.Generator | None) -> tuple[int, int]:
    if seed is None:
        if offset is not None:
            raise ValueError("offset needs an explicit seed: pass seed= as well, or neither")
        source = generator if generator is not None else torch.default_generator
        if source.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator (it only supplies seeds), got one on {source.device}")
        seed = int(torch.randint(0, 2**63 - 1, (), generator=source))
        return seed, 0
    seed, offset = int(seed), 0 if offset is None else int(offset)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    if offset < 0:
        raise ValueError(f"offset must be non-negative, got {offset}")
    return seed, offset


def stream_seed(*parts) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (for stateless, resumable generators)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
