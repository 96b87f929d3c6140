"""The CUDA kernels against the hardware and against torch, on one GPU, in one run (issue 3's goals):

- ``sample``, N = 1e6, D in {64, 512, 2048}, C = 1000, float32 (and bfloat16) output: bytes
  written per second against the device's write bandwidth, time against ``torch.randn(N, D)``,
  and speed-up over the composite PyTorch sampler (``penact.reference``);
- ``log_prob`` (labelled) and its backward, same sizes: bytes read per second against the read
  bandwidth;
- ``log_prob_all``: time against ``torch.addmm`` of the same shapes.

Bandwidths are measured in the same run: a device-to-device copy of 1 GiB (its write rate, bytes
copied / time, is the issue's reference; its read rate is the same number), a ``zero_`` (pure
writes) and a ``sum`` (pure reads) of 1 GiB. Timing: CUDA events around each call, 3 warm-up
calls, the median of ``--repeat`` calls. penact's eager calls include the host synchronization
of the label-range check; the ``graph`` column replays the same call from a CUDA graph (where the
kernels' own guard replaces that check), i.e. the kernels alone.

    python benchmarks/bench_cuda.py [--out benchmarks/results/cuda-<device>-<date>.json]
                                    [--dims 64,512,2048] [--n 1000000] [--with-tests]

Writes the JSON (device, driver, torch, CUDA, commit, every measurement) and prints a table;
``--with-tests`` also runs ``pytest tests/test_cuda.py`` and stores its summary in the JSON.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing

from penact import reference  # noqa: E402
from penact import ops  # noqa: E402

GiB = 2**30
# Issue 3's goals, as (metric, comparison, bound).
GOALS = {
    "sample": ("write_fraction_copy", ">=", 0.70),
    "sample_vs_randn": ("time_ratio", "<=", 1.3),
    "sample_vs_composite": ("speedup", ">=", 20.0),
    "log_prob": ("read_fraction", ">=", 0.80),
    "log_prob_all": ("time_ratio", "<=", 1.1),
}


def cuda_time(fn, repeat: int, warmup: int = 3) -> dict:
    """Median seconds of fn() between CUDA events, after warm-up calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return dict(median_s=statistics.median(times), min_s=min(times), max_s=max(times), repeat=repeat)


def graph_time(fn, repeat: int) -> dict | None:
    """The same call captured once in a CUDA graph and replayed; None if it cannot be captured."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as error:
        return dict(error=str(error).splitlines()[0])
    return cuda_time(graph.replay, repeat)


def free_memory():
    gc.collect()
    torch.cuda.empty_cache()


def measure_bandwidth(repeat: int) -> dict:
    src = torch.ones(GiB // 4, device="cuda")
    dst = torch.empty_like(src)
    copy = cuda_time(lambda: dst.copy_(src), repeat)
    zero = cuda_time(lambda: dst.zero_(), repeat)
    total = torch.empty((), device="cuda")
    read = cuda_time(lambda: torch.sum(src, dim=0, out=total), repeat)
    del src, dst
    free_memory()
    return dict(
        buffer_bytes=GiB,
        copy_write_bytes_per_s=GiB / copy["median_s"],  # = its read rate; read + write is twice this
        zero_write_bytes_per_s=GiB / zero["median_s"],
        sum_read_bytes_per_s=GiB / read["median_s"],
        copy=copy, zero=zero, sum=read,
    )


def problem(n: int, dim: int, num_classes: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    weight = torch.randn(num_classes, dim, device="cuda", generator=g) * (3.0 / math.sqrt(dim))
    weight *= torch.rand(num_classes, 1, device="cuda", generator=g) * 100 + 1
    kappa = weight.norm(dim=1)
    mu = weight / kappa[:, None]
    labels = torch.randint(0, num_classes, (n,), device="cuda", generator=g)
    lognorm = ops.vmf_log_normalizer(dim, kappa.double()).float()
    return mu, kappa, weight, lognorm, labels


def bench_dim(n: int, dim: int, num_classes: int, bandwidth: dict, repeat: int, composite: bool) -> list[dict]:
    rows = []
    mu, kappa, weight, lognorm, labels = problem(n, dim, num_classes)
    radius = 5.0

    def row(op, dtype, timing, bytes_moved=None, baseline=None, baseline_timing=None, graph=None, **extra):
        entry = dict(op=op, n=n, dim=dim, num_classes=num_classes, dtype=str(dtype).replace("torch.", ""),
                     time=timing, graph=graph, bytes=bytes_moved, baseline=baseline, baseline_time=baseline_timing)
        t = timing["median_s"]
        if bytes_moved is not None:
            entry["bytes_per_s"] = bytes_moved / t
        if baseline_timing is not None and "median_s" in baseline_timing:
            entry["time_ratio"] = t / baseline_timing["median_s"]
            entry["speedup"] = baseline_timing["median_s"] / t
        entry.update(extra)
        rows.append(entry)
        print_row(entry)

    for out_dtype in (torch.float32, torch.bfloat16):
        def sample():
            return ops.vmf_sample(mu, kappa, labels, radius, 7, 0, dtype=out_dtype)
        timing = cuda_time(sample, repeat)
        written = n * dim * out_dtype.itemsize
        randn = cuda_time(lambda: torch.randn(n, dim, device="cuda", dtype=out_dtype), repeat)
        row("sample", out_dtype, timing, written, "torch.randn(N, D)", randn, graph_time(sample, repeat),
            write_fraction_copy=written / timing["median_s"] / bandwidth["copy_write_bytes_per_s"],
            write_fraction_zero=written / timing["median_s"] / bandwidth["zero_write_bytes_per_s"])
        free_memory()

    if composite:
        try:
            timing = cuda_time(lambda: reference.vmf_sample(mu, kappa, labels, radius), max(3, repeat // 3), warmup=1)
        except torch.OutOfMemoryError as error:
            timing = dict(error=f"out of memory: {str(error).splitlines()[0]}")
        penact_time = rows[0]["time"]
        row("sample_vs_composite", torch.float32, penact_time, None, "penact.reference.vmf_sample", timing)
        free_memory()

    x = mu[labels] * radius + torch.randn(n, dim, device="cuda") * 0.3
    read = n * dim * x.element_size() + n * (labels.element_size() + 4)

    def log_prob():
        return ops.vmf_log_prob(x, weight, lognorm, labels, radius)
    norm_pass = cuda_time(lambda: x.norm(dim=1), repeat)
    timing = cuda_time(log_prob, repeat)
    row("log_prob", torch.float32, timing, read, "x.norm(dim=1)", norm_pass, graph_time(log_prob, repeat),
        read_fraction=read / timing["median_s"] / bandwidth["sum_read_bytes_per_s"],
        read_fraction_copy=read / timing["median_s"] / bandwidth["copy_write_bytes_per_s"])
    composite_lp = cuda_time(lambda: reference.vmf_log_prob(x, weight, lognorm, labels, radius), repeat)
    row("log_prob_vs_composite", torch.float32, timing, None, "penact.reference.vmf_log_prob", composite_lp)

    grad = torch.randn(n, device="cuda")
    backward_op = torch.ops.penact.vmf_log_prob_backward.default
    moved = 2 * n * dim * x.element_size()  # read x, write grad_x (weight rows stay in L2)
    timing = cuda_time(lambda: backward_op(grad, x, weight, labels, radius, True, True), repeat)
    clone = cuda_time(lambda: x.clone(), repeat)
    row("log_prob_backward", torch.float32, timing, moved, "x.clone()", clone,
        moved_fraction_copy=moved / timing["median_s"] / (2 * bandwidth["copy_write_bytes_per_s"]))
    free_memory()

    try:
        timing = cuda_time(lambda: ops.vmf_log_prob_all(x, weight, lognorm, radius), repeat)
        addmm = cuda_time(lambda: torch.addmm(lognorm, x, weight.t()), repeat)
        row("log_prob_all", torch.float32, timing, None, "torch.addmm(lognorm, x, W^T)", addmm)
    except torch.OutOfMemoryError as error:
        rows.append(dict(op="log_prob_all", n=n, dim=dim, error=str(error).splitlines()[0]))
    del x, grad
    free_memory()
    return rows


def print_header():
    print(f"{'op':<22}{'D':>6} {'dtype':<9}{'ms':>9}{'graph ms':>10}{'GB/s':>8}  {'of peak':>8}  "
          f"{'baseline':<31}{'base ms':>9}{'ratio':>8}")


def print_row(entry):
    ms = entry["time"]["median_s"] * 1e3
    graph = entry.get("graph") or {}
    graph_ms = f"{graph['median_s'] * 1e3:.3f}" if "median_s" in graph else "-"
    gbs = f"{entry['bytes_per_s'] / 1e9:.0f}" if "bytes_per_s" in entry else "-"
    fraction = next((entry[k] for k in ("write_fraction_copy", "read_fraction", "moved_fraction_copy") if k in entry), None)
    of_peak = f"{fraction:.2f}" if fraction is not None else "-"
    base = entry.get("baseline_time") or {}
    base_ms = f"{base['median_s'] * 1e3:.3f}" if "median_s" in base else base.get("error", "-")[:9]
    ratio = f"{entry['time_ratio']:.3f}" if "time_ratio" in entry else "-"
    if entry["op"].endswith("composite") and "speedup" in entry:
        ratio = f"x{entry['speedup']:.0f}"
    print(f"{entry['op']:<22}{entry['dim']:>6} {entry['dtype']:<9}{ms:>9.3f}{graph_ms:>10}{gbs:>8}  {of_peak:>8}  "
          f"{(entry.get('baseline') or '-'):<31}{base_ms:>9}{ratio:>8}")


def goal_checks(rows: list[dict]) -> list[dict]:
    checks = []
    for entry in rows:
        if entry.get("dtype") != "float32":
            continue
        key = "sample_vs_randn" if entry["op"] == "sample" else entry["op"]
        for goal_key in ({key, "sample"} if entry["op"] == "sample" else {key}):
            if goal_key not in GOALS:
                continue
            metric, comparison, bound = GOALS[goal_key]
            value = entry.get(metric)
            met = None if value is None else (value >= bound if comparison == ">=" else value <= bound)
            checks.append(dict(goal=goal_key, dim=entry["dim"], metric=metric, value=value, bound=f"{comparison} {bound}",
                               met=met))
    return checks


def run_tests() -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-rs", str(ROOT / "tests" / "test_cuda.py")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    return dict(command=" ".join(command), returncode=result.returncode, summary=lines[-1] if lines else "",
                tail=lines[-40:])


def metadata() -> dict:
    def command_output(args):
        try:
            return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    props = torch.cuda.get_device_properties(0)
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(0),
        multiprocessors=props.multi_processor_count,
        memory_bytes=props.total_memory,
        compute_capability=f"{props.major}.{props.minor}",
        driver=command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        commit=command_output(["git", "rev-parse", "HEAD"]),
        dirty=bool(command_output(["git", "status", "--porcelain", "--untracked-files=no"])),
        python=sys.version.split()[0],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/cuda-<device>-<date>.json)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dims", default="64,512,2048")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-composite", action="store_true", help="skip the (slow, memory-hungry) composite sampler")
    parser.add_argument("--with-tests", action="store_true", help="also run pytest tests/test_cuda.py")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2

    meta = metadata()
    out = args.out
    if out is None:
        name = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
        out = ROOT / "benchmarks" / "results" / f"cuda-{name}-{meta['date'][:10]}.json"
    print(f"{meta['device']} (sm_{meta['compute_capability'].replace('.', '')}, {meta['multiprocessors']} SMs), "
          f"driver {meta['driver']}, torch {meta['torch']}, CUDA {meta['cuda']}, commit {meta['commit']}")
    bandwidth = measure_bandwidth(args.repeat)
    print(f"bandwidth: copy {bandwidth['copy_write_bytes_per_s'] / 1e9:.0f} GB/s written (and read), "
          f"zero_ {bandwidth['zero_write_bytes_per_s'] / 1e9:.0f} GB/s written, "
          f"sum {bandwidth['sum_read_bytes_per_s'] / 1e9:.0f} GB/s read")
    print_header()
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        rows += bench_dim(args.n, dim, args.classes, bandwidth, args.repeat, not args.no_composite)
    checks = goal_checks(rows)
    print("\ngoals (issue 3):")
    for check in checks:
        status = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        value = "-" if check["value"] is None else f"{check['value']:.3f}"
        print(f"  {check['goal']:<22} D={check['dim']:<6} {check['metric']:<20} {value:>9} {check['bound']:<8} {status}")
    result = dict(meta=meta, bandwidth=bandwidth, results=rows, goals=checks)
    if args.with_tests:
        result["tests"] = run_tests()
        print(f"\ntests/test_cuda.py: {result['tests']['summary']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
