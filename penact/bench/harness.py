"""How ``penact bench`` measures, whatever the family: the settings of a run, the timing of a set
of peers (warm-up, interleaved rounds, medians), the prediction that skips a peer too slow to
wait for, the device's bandwidth, the peak memory of one call, and the environment a result was
measured in. Nothing here knows a family, an operation or a peer by name.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import functools
import gc
import hashlib
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import penact
from penact.experiments import cpu_model, source_state


@dataclasses.dataclass(frozen=True)
class Timing:
    """How the peers of one case are timed: ``warmup`` untimed calls each, then interleaved rounds
    until each peer has ``clamp(target_s / t, min_repeats, max_repeats)`` timed calls (``t``: its
    first timed call). A budgeted peer predicted to take longer than ``max_call_s`` per call is
    not called; one whose warm-up call took longer is not called again."""
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 15
    target_s: float = 0.5
    max_call_s: float = 20.0


@dataclasses.dataclass
class Settings:
    """One run of ``penact bench`` (built from the command line by ``penact.bench.settings_from_args``)."""
    device: torch.device
    dtype: torch.dtype
    families: tuple[str, ...]             # registry names, in registration order
    dims: tuple[int, ...]
    classes: tuple[int, ...]
    sizes: tuple[int, ...]
    regimes: dict[str, tuple[str, ...]]   # family -> its parameter regimes in this run
    ops: tuple[str, ...]
    peers: tuple[str, ...]
    excluded: dict[str, str]              # peer -> why this run leaves it out (shown as a skip)
    timing: Timing                        # of the grid
    headline_timing: Timing
    headline: bool
    headline_peers: tuple[str, ...]
    accuracy: bool
    accuracy_sample_n: int
    plot: bool
    progress: bool
    out: Path
    seed: int
    quick: bool


# ---------------------------------------------------------------------------------------------
# Peers and their timing


@dataclasses.dataclass
class Peer:
    """One way to compute an operation. ``fn`` runs it once and waits for it (JAX peers block);
    ``skip`` says why it is not measured, and ``counterpart=False`` that the peer has nothing that
    computes it at all (shown as ``n/a``); ``clock`` is ``"wall"`` (``time.perf_counter``),
    ``"cuda"`` (CUDA events) or ``"thread"`` (the calling thread's CPU time);
    ``estimate(budget)`` predicts the seconds of one call cheaply, for peers too slow to try;
    ``budgeted=False``: measured however long a call takes (what the others are compared with)."""
    name: str
    fn: Callable[[], Any] | None = None
    skip: str | None = None
    counterpart: bool = True
    clock: str = "wall"
    note: str = ""
    estimate: Callable[[float], float] | None = None
    budgeted: bool = True


def clock_for(device: torch.device) -> str:
    """The clock of peers that run on ``device``: CUDA events on a GPU (kernels run asynchronously)."""
    return "cuda" if device.type == "cuda" else "wall"


def timed_call(fn: Callable[[], Any], clock: str) -> float:
    """Seconds of one call of ``fn`` on ``clock`` (see :class:`Peer`)."""
    if clock == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    now = time.thread_time if clock == "thread" else time.perf_counter
    begin = now()
    fn()
    return now() - begin


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def measure(peers: list[Peer], timing: Timing, predicted: dict[str, float] | None = None) -> dict[str, dict]:
    """Times each peer: warm-up, then interleaved rounds (every pending peer once per round, in an
    order that rotates by one each round, so that a change of machine load hits all peers alike).

    Returns, per peer name, ``{"status": "ok" | "skipped" | "error" | "n/a", "time_s": median,
    "min_s", "times_s": [...], "warmup_s", "reason", "note"}``. ``predicted`` (name -> seconds per
    call, from smaller sizes of the same case) takes the place of a peer's own ``estimate``.
    """
    predicted = predicted or {}
    results: dict[str, dict] = {}
    active: list[Peer] = []
    for peer in peers:
        record = dict(status="skipped" if peer.counterpart else "n/a", reason=peer.skip, note=peer.note,
                      time_s=None, min_s=None, warmup_s=None, times_s=[])
        results[peer.name] = record
        if peer.skip:
            continue
        try:
            guess = predicted.get(peer.name) if peer.budgeted else None
            if guess is None and peer.budgeted and peer.estimate is not None:
                guess = peer.estimate(timing.max_call_s)
            if guess is not None and guess > timing.max_call_s:
                record["reason"] = f"predicted {guess:.1f} s per call > --max-call-s {timing.max_call_s:g}"
                continue
            for _ in range(timing.warmup):
                record["warmup_s"] = timed_call(peer.fn, peer.clock)
        except Exception as error:  # a peer that fails is reported, not fatal
            record.update(status="error", reason=_first_line(error))
            continue
        if peer.budgeted and record["warmup_s"] is not None and record["warmup_s"] > timing.max_call_s:
            record["reason"] = f"warm-up call took {record['warmup_s']:.1f} s > --max-call-s {timing.max_call_s:g}"
            continue
        record["status"] = "ok"
        active.append(peer)
    wanted = {peer.name: timing.min_repeats for peer in active}
    for round_index in range(timing.max_repeats):
        pending = [peer for peer in active if len(results[peer.name]["times_s"]) < wanted[peer.name]]
        if not pending:
            break
        shift = round_index % len(pending)
        for peer in pending[shift:] + pending[:shift]:
            times = results[peer.name]["times_s"]
            times.append(timed_call(peer.fn, peer.clock))
            if len(times) == 1:
                wanted[peer.name] = max(timing.min_repeats,
                                        min(timing.max_repeats, math.ceil(timing.target_s / max(times[0], 1e-9))))
    for peer in active:
        times = results[peer.name]["times_s"]
        results[peer.name].update(time_s=statistics.median(times), min_s=min(times))
    return results


def timing_summary(result: dict) -> dict:
    """One peer's result of :func:`measure` as ``{median_s, min_s, max_s, repeat}``, or ``{error}``
    (the reason it was not measured)."""
    if result["status"] != "ok":
        return dict(error=f"{result['status']}: {result['reason']}")
    times = result["times_s"]
    return dict(median_s=result["time_s"], min_s=result["min_s"], max_s=max(times), repeat=len(times))


def predict(history: list[tuple[int, float]], size: int) -> float | None:
    """Seconds per call at ``size`` from ``(size, seconds)`` at smaller sizes: affine through the
    last two points, proportional from one (an overestimate where fixed costs dominate)."""
    if not history:
        return None
    (n1, t1) = history[-1]
    if len(history) == 1:
        return t1 * size / n1
    (n0, t0) = history[-2]
    slope = max((t1 - t0) / (n1 - n0), 0.0)
    return t1 + slope * (size - n1)


def cuda_graph(fn: Callable[[], Any]) -> Callable[[], None]:
    """``fn`` captured once in a CUDA graph (after a call on a side stream, as capture requires);
    returns the graph's ``replay``. Raises RuntimeError when ``fn`` cannot be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


# ---------------------------------------------------------------------------------------------
# Bandwidth


def measure_bandwidth(device: torch.device, repeats: int = 7) -> dict:
    """The device's memory bandwidth, from three passes over a buffer (256 MiB on a CPU, 1 GiB on
    a GPU) timed in interleaved rounds: ``dst.copy_(src)`` (reads and writes the buffer),
    ``dst.zero_()`` (writes only), ``src.sum()`` (reads only). ``bytes_per_s`` is the copy's
    bytes read plus written per second, the bound of the grid's ``bw bound`` column; the
    ``*_write_bytes_per_s`` and ``sum_read_bytes_per_s`` are the rates of the bytes each pass
    writes or reads."""
    nbytes = (2**30 if device.type == "cuda" else 256 * 2**20)
    results = _passes(device, nbytes, repeats)
    release_memory(device)  # the buffers
    seconds = {name: result["time_s"] for name, result in results.items()}
    return dict(bytes_per_s=2 * nbytes / seconds["copy"], buffer_bytes=nbytes, time_s=seconds["copy"],
                copy_write_bytes_per_s=nbytes / seconds["copy"], zero_write_bytes_per_s=nbytes / seconds["zero"],
                sum_read_bytes_per_s=nbytes / seconds["sum"],
                **{name: timing_summary(result) for name, result in results.items()},
                method=f"medians of {repeats} interleaved rounds of copy_, zero_ and sum over {nbytes // 2**20} MiB "
                       "float32; bytes_per_s: copy's bytes read + written")


def _passes(device: torch.device, nbytes: int, repeats: int) -> dict[str, dict]:
    """The three passes of :func:`measure_bandwidth`, timed together (the buffers die on return)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    total = torch.empty((), dtype=torch.float32, device=device)
    clock = clock_for(device)
    passes = [Peer("copy", lambda: dst.copy_(src), clock=clock), Peer("zero", dst.zero_, clock=clock),
              Peer("sum", lambda: torch.sum(src, dim=0, out=total), clock=clock)]
    return measure(passes, Timing(warmup=1, min_repeats=repeats, max_repeats=repeats, target_s=0.0,
                                  max_call_s=math.inf))


def release_memory(device: torch.device) -> None:
    """Collects garbage (a case's inputs, its peers' closures and autograd graphs) and, on a GPU,
    returns the cached blocks, so that the next case starts from the same free memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Peak memory


def _resident_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1])
    return values


@functools.lru_cache(maxsize=None)
def _libc():
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


def _release_heap() -> None:
    """Collects garbage and hands freed heap back to the system, so that memory the next call
    reuses shows up in its resident-set growth."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _output_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return int(getattr(value, "nbytes", 0))


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict:
    """Peak extra memory of one call of ``fn`` and the bytes of its output.

    On the CPU: the growth of the process's resident set, ``VmHWM`` after the call minus ``VmRSS``
    before it (``/proc/self/status``), with the high-water mark reset through
    ``/proc/self/clear_refs`` and freed heap returned with ``malloc_trim`` first. It counts every
    page the call touches, whichever allocator asked for it (torch's, numpy's, XLA's, or a
    kernel's own scratch), which torch's CPU allocator keeps no statistics for. On CUDA:
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - before
        return dict(peak_bytes=peak, output_bytes=_output_bytes(out), method="torch.cuda.max_memory_allocated")
    if not Path("/proc/self/clear_refs").exists():
        return dict(peak_bytes=None, output_bytes=None, method="unavailable: needs Linux /proc")
    _release_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError as error:
        return dict(peak_bytes=None, output_bytes=None, method=f"unavailable: {error}")
    before = _resident_kib()["VmRSS"]
    out = fn()
    peak = _resident_kib()["VmHWM"]
    return dict(peak_bytes=(peak - before) * 1024, output_bytes=_output_bytes(out),
                method="VmHWM - VmRSS (/proc/self/status), high-water mark reset via clear_refs")


# ---------------------------------------------------------------------------------------------
# Environment


def _extension_binary() -> dict | None:
    """Which compiled ``penact._C`` was measured: it is rebuilt in place, apart from the commit."""
    path = Path(penact._C.__file__) if hasattr(penact, "_C") else None
    if path is None or not path.exists():
        return None
    stat = path.stat()
    return dict(file=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                modified=datetime.datetime.fromtimestamp(stat.st_mtime).astimezone().isoformat(timespec="seconds"))


def _command_output(args: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(args, capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
    return None


def uptime() -> str | None:
    """``uptime``'s line (the load averages, as the machine reports them)."""
    return _command_output(["uptime"])


def _cuda_details(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    return dict(multiprocessors=props.multi_processor_count, memory_bytes=props.total_memory,
                compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                driver=_command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                float32_matmul_precision=torch.get_float32_matmul_precision())


def environment(device: torch.device, versions: dict[str, str]) -> dict:
    """Where and from what a run was measured: the device (and on a GPU its properties and
    driver), the CPU and threads, ``versions`` (the peers') beside python, torch, numpy and
    penact, the commit and uncommitted files, the extension binary, the date, the command and the
    machine's load at the start."""
    commit, uncommitted = source_state()
    return dict(
        device=str(device),
        device_name=(torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()),
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        cpu_affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        platform=platform.platform(),
        versions={"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                  "penact": penact.__version__, **versions},
        git_commit=commit,
        git_dirty=(bool(uncommitted) if uncommitted is not None else None),
        git_uncommitted=uncommitted or [],
        extension=_extension_binary(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        uptime_start=uptime(),
        loadavg_start=list(os.getloadavg()),
        command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        **(_cuda_details(device) if device.type == "cuda" else {}),
    )
