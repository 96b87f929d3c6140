"""What the trainers share (the distiller's and the generators' loops): keeping a loop on its device.

A CUDA loop stays fast while the host runs ahead of the GPU: it queues kernels and never waits for
one. The host waits (synchronizes) whenever it reads a value the GPU computes (``float(t)``,
``t.item()``, ``t.tolist()``, ``bool(t)``, ``t.cpu()``), and also when it copies pageable host
memory to the device (``t.to("cuda")`` of an ordinary CPU tensor waits for every kernel already
queued on the stream). What is here lets a loop avoid both:

- :func:`host_to_device`: a CPU tensor on the device through pinned memory, without waiting;
- :class:`IntervalMeans`: per-step losses summed on the device and read once per logging interval;
- :class:`PartTimer`: seconds spent in named parts of a loop, timed on the GPU by CUDA events and
  read once per interval (on the CPU: the wall clock).

A fitted family goes to a loop's device as ``distribution.detach().to(device)`` (no value check:
they synchronize).
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import Tensor



def synchronize(device: torch.device) -> None:
    """Waits for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``. A CPU tensor bound for CUDA is staged in pinned memory (already
    pinned tensors, e.g. from ``DataLoader(pin_memory=True)``, are used as they are) and copied
    with ``non_blocking=True``: the host does not wait for the GPU, and PyTorch's pinned-memory
    allocator keeps the staging buffer until the copy has run."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return (tensor if tensor.is_pinned() else tensor.pin_memory()).to(device, non_blocking=True)


class IntervalMeans:
    """Means of per-step scalar tensors over a logging interval: :meth:`add` sums them on their
    device (no synchronization), :meth:`read` brings the means to the host (one synchronization)
    and starts a new interval."""

    def __init__(self):
        self._sums: dict[str, Tensor] = {}
        self._count = 0

    def add(self, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            value = value.detach()
            self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._count += 1

    def read(self) -> dict[str, float]:
        """``{name: mean}`` over the steps added since the last read (empty when none were)."""
        if not self._count:
            return {}
        names = list(self._sums)
        means = (torch.stack([self._sums[name] for name in names]) / self._count).tolist()
        self._sums, self._count = {}, 0
        return dict(zip(names, means))


class PartTimer:
    """Seconds spent in named parts of a loop on ``device``, read without a synchronization per part.

    On CUDA each ``with timer.part(name):`` records a CUDA event on the device's current stream
    before and after the part (recording does not wait), so the time is the GPU's, not that of
    queueing kernels; :meth:`collect` waits once for the device and reads every pending pair. On
    the CPU, where kernels run as they are called, the wall clock. :meth:`collect` also returns the
    wall-clock seconds since the previous collect (or :meth:`start`) as ``"total"``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._seconds: dict[str, float] = defaultdict(float)
        self._since = time.perf_counter()

    def _event(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            start = self._event()
            yield
            self._pending.append((name, start, self._event()))
        else:
            started = time.perf_counter()
            yield
            self._seconds[name] += time.perf_counter() - started

    def start(self) -> None:
        """Starts the wall clock of ``"total"`` afresh."""
        self._since = time.perf_counter()

    def collect(self) -> dict[str, float]:
        """``{"total": wall seconds, part: seconds, ...}`` since the last collect; waits for the device."""
        synchronize(self.device)
        now = time.perf_counter()
        for name, start, end in self._pending:
            self._seconds[name] += start.elapsed_time(end) / 1000  # milliseconds
        seconds = {"total": now - self._since, **self._seconds}
        self._pending, self._seconds, self._since = [], defaultdict(float), now
        return seconds
