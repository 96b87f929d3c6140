"""The CUDA kernels against the hardware and against torch, on one GPU, in one run (issue 3's goals):

- ``sample``, N = 1e6, D in {64, 512, 2048}, C = 1000, float32 (and bfloat16) output: bytes
  written per second against the device's write bandwidth, time against ``torch.randn(N, D)``,
  and speed-up over the composite PyTorch sampler (``penact.reference``);
- ``log_prob`` (labelled) and its backward, same sizes: bytes read per second against the read
  bandwidth;
- ``log_prob_all``: time against ``torch.addmm`` of the same shapes.

The inputs, peers, limits, timing and bandwidths are ``penact bench``'s (``penact/bench/``): the
sphere family's problem at kappa ~ D (``Problem.of_regime(..., "~D", ...)``), its ``penact``,
``composite`` and ``limit`` peers, CUDA events around each call in interleaved rounds of
``--repeat`` calls after 3 warm-up calls (the composite sampler: a third as many), and the device's
bandwidth from a copy (its write rate, bytes copied / time, is the issue's reference; its read
rate is the same number), a ``zero_`` (pure writes) and a ``sum`` (pure reads) of 1 GiB. penact's
eager calls include the host synchronization of the label-range check; the ``graph`` column
replays the same call from a CUDA graph (where the kernels' own guard replaces that check), i.e.
the kernels alone.

    python benchmarks/bench_cuda.py [--out benchmarks/results/cuda-<device>-<date>.json]
                                    [--dims 64,512,2048] [--n 1000000] [--with-tests]

Writes the JSON (device, driver, torch, CUDA, commit, every measurement) and prints a table;
``--with-tests`` also runs ``pytest tests/test_cuda.py`` and stores its summary in the JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing

from penact import bench, ops  # noqa: E402
from penact.bench.families import bench_family  # noqa: E402
from penact.bench.harness import (Peer, Timing, clock_for, cuda_graph, environment, measure,  # noqa: E402
                                  measure_bandwidth, release_memory, timing_summary)
from penact.bench.peers import LIMIT, peers_for  # noqa: E402
from penact.bench.problems import Problem  # noqa: E402

DEVICE = torch.device("cuda")
# Issue 3's goals, as (metric, comparison, bound).
GOALS = {
    "sample": ("write_fraction_copy", ">=", 0.70),
    "sample_vs_randn": ("time_ratio", "<=", 1.3),
    "sample_vs_composite": ("speedup", ">=", 20.0),
    "log_prob": ("read_fraction", ">=", 0.80),
    "log_prob_all": ("time_ratio", "<=", 1.1),
}


def _graph(peer: Peer) -> Peer:
    """``peer``'s call replayed from a CUDA graph, or a skip saying why it cannot be captured."""
    try:
        return Peer("graph", cuda_graph(peer.fn), clock="cuda")
    except RuntimeError as error:
        return Peer("graph", skip=str(error).splitlines()[0])


def _fractions(timing: dict, moved: int, **rates: float) -> dict[str, float]:
    """``moved`` bytes per second of ``timing`` as a fraction of each named bandwidth (bytes per
    second), or nothing when the call was not measured."""
    if "median_s" not in timing:
        return {}
    return {name: moved / timing["median_s"] / rate for name, rate in rates.items()}


def bench_dim(n: int, dim: int, num_classes: int, bandwidth: dict, settings, composite: bool) -> list[dict]:
    rows = []
    family = bench_family("sphere")
    problem = Problem.of_regime(family, dim, num_classes, "~D", n, DEVICE, torch.float32, seed=0)

    def row(op, dtype, timing, bytes_moved=None, baseline=None, baseline_timing=None, graph=None, **extra):
        entry = dict(op=op, n=n, dim=dim, num_classes=num_classes, dtype=str(dtype).replace("torch.", ""),
                     time=timing, graph=graph, bytes=bytes_moved, baseline=baseline, baseline_time=baseline_timing)
        if "median_s" not in timing:
            rows.append(dict(entry, error=timing["error"]))
            return
        t = timing["median_s"]
        if bytes_moved is not None:
            entry["bytes_per_s"] = bytes_moved / t
        if baseline_timing is not None and "median_s" in baseline_timing:
            entry["time_ratio"] = t / baseline_timing["median_s"]
            entry["speedup"] = baseline_timing["median_s"] / t
        entry.update(extra)
        rows.append(entry)
        print_row(entry)

    def measured(op: str, graph: bool) -> tuple[dict[str, Peer], dict[str, dict]]:
        """The sphere family's penact and limit peers of ``op`` (and penact's graph replay), timed together."""
        peers = {peer.name: peer for peer in peers_for(family, op, problem, settings)}
        chosen = [peers["penact"], peers[LIMIT]] + ([_graph(peers["penact"])] if graph else [])
        timed = {name: timing_summary(result) for name, result in measure(chosen, settings.timing).items()}
        return peers, timed | {"graph": timed.get("graph")}

    # sample: float32 through the family, bfloat16 through the operator (rounded once on output)
    mu, kappa, labels, radius = problem.dist.mean_direction, problem.dist.kappa, problem.labels, problem.dist.radius
    sample_peers, times = measured("sample", graph=True)
    clock = clock_for(DEVICE)
    bfloat16 = [Peer("penact", lambda: ops.vmf_sample(mu, kappa, labels, radius, 7, 0, dtype=torch.bfloat16),
                     clock=clock),
                Peer(LIMIT, lambda: torch.randn(n, dim, device=DEVICE, dtype=torch.bfloat16), clock=clock)]
    bfloat16.append(_graph(bfloat16[0]))
    bfloat16_times = {name: timing_summary(result) for name, result in measure(bfloat16, settings.timing).items()}
    for dtype, timed in ((torch.float32, times), (torch.bfloat16, bfloat16_times)):
        written = n * dim * dtype.itemsize
        row("sample", dtype, timed["penact"], written, "torch.randn(N, D)", timed[LIMIT], timed["graph"],
            **_fractions(timed["penact"], written, write_fraction_copy=bandwidth["copy_write_bytes_per_s"],
                         write_fraction_zero=bandwidth["zero_write_bytes_per_s"]))
    release_memory(DEVICE)

    if composite:
        repeats = max(3, settings.timing.max_repeats // 3)
        slow = dataclasses.replace(settings.timing, warmup=1, min_repeats=repeats, max_repeats=repeats)
        result = measure([sample_peers["composite"]], slow)["composite"]
        row("sample_vs_composite", torch.float32, times["penact"], None, "penact.reference.vmf_sample",
            timing_summary(result))
        release_memory(DEVICE)

    x = problem.x
    peers, timed = measured("log_prob", graph=True)
    read = n * dim * x.element_size() + n * (labels.element_size() + 4)
    row("log_prob", torch.float32, timed["penact"], read, "x.norm(dim=1)", timed[LIMIT], timed["graph"],
        **_fractions(timed["penact"], read, read_fraction=bandwidth["sum_read_bytes_per_s"],
                     read_fraction_copy=bandwidth["copy_write_bytes_per_s"]))
    row("log_prob_vs_composite", torch.float32, timed["penact"], None, "penact.reference.vmf_log_prob",
        timing_summary(measure([peers["composite"]], settings.timing)["composite"]))

    _, timed = measured("log_prob_backward", graph=False)
    moved = 2 * n * dim * x.element_size()  # read x, write grad_x (weight rows stay in L2)
    row("log_prob_backward", torch.float32, timed["penact"], moved, "x.clone()", timed[LIMIT],
        **_fractions(timed["penact"], moved, moved_fraction_copy=2 * bandwidth["copy_write_bytes_per_s"]))
    release_memory(DEVICE)

    _, timed = measured("log_prob_all", graph=False)
    row("log_prob_all", torch.float32, timed["penact"], None, "torch.addmm(lognorm, x, W^T)", timed[LIMIT])
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
    """The device and source this run measured (``penact bench``'s environment, in this script's keys)."""
    env = environment(DEVICE, {})
    return dict(date=env["date"], device=env["device_name"], multiprocessors=env["multiprocessors"],
                memory_bytes=env["memory_bytes"], compute_capability=env["compute_capability"], driver=env["driver"],
                torch=env["versions"]["torch"], cuda=env["cuda"],
                float32_matmul_precision=env["float32_matmul_precision"], commit=env["git_commit"],
                dirty=env["git_dirty"], python=env["versions"]["python"])


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

    settings = bench.parse_settings(["--device", "cuda", "--family", "sphere", "--peers", "penact,composite"])
    settings = dataclasses.replace(settings, timing=Timing(warmup=3, min_repeats=args.repeat, max_repeats=args.repeat,
                                                           target_s=0.0, max_call_s=math.inf))
    meta = metadata()
    out = args.out
    if out is None:
        name = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
        out = ROOT / "benchmarks" / "results" / f"cuda-{name}-{meta['date'][:10]}.json"
    print(f"{meta['device']} (sm_{meta['compute_capability'].replace('.', '')}, {meta['multiprocessors']} SMs), "
          f"driver {meta['driver']}, torch {meta['torch']}, CUDA {meta['cuda']}, commit {meta['commit']}")
    bandwidth = measure_bandwidth(DEVICE, repeats=args.repeat)
    print(f"bandwidth: copy {bandwidth['copy_write_bytes_per_s'] / 1e9:.0f} GB/s written (and read), "
          f"zero_ {bandwidth['zero_write_bytes_per_s'] / 1e9:.0f} GB/s written, "
          f"sum {bandwidth['sum_read_bytes_per_s'] / 1e9:.0f} GB/s read")
    print_header()
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        rows += bench_dim(args.n, dim, args.classes, bandwidth, settings, not args.no_composite)
        release_memory(DEVICE)  # the dimension's inputs
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
