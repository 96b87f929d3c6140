"""CPU benchmark of the rectified family against the floors of issue 5:
``python benchmarks/bench_rectified.py [--n 100000] [--dim 512] [--classes 100] [--rounds 11] [--tail-heavy]``.

The rectified headline of ``penact bench`` (``penact/bench/runs.py``: ``run_headline``) at other
sizes, with ``--rounds`` interleaved rounds per peer:

- ``sample``: ``rectified_sample`` of ``[N, D]`` float32 for random labels, against
  ``torch.randn(N, D)`` (target: at most 1.0x);
- ``log_prob``: the labelled log-density ``rectified_log_prob`` of ``[N, D]`` float32 activations
  (log Z given), against one read pass ``x.norm(dim=1)`` (target: at most 1.5x). The cost of
  recomputing log Z (C x D normalizers), which ``RectifiedDistribution.log_prob`` adds, is the
  ``log_partition`` row of ``penact bench --family rectified``.

The pure-torch twin (``penact.reference``) is timed alongside as the composite baseline, and the
peak memory of ``sample`` is shown. Parameters: the regimes of ``penact/bench/families.py``:
``bulk`` (``W ~ N(0, 0.1^2)``, ``s`` in (0.5, 3), ``m`` in (0.5, 1.5): 30-50% exact zeros, ``s w``
mostly within +-1); ``--tail-heavy`` is the ``tail`` regime (``W ~ N(0, 1)``), which sends about an
eighth of the (class, coordinate) pairs past ``s w = -2`` to the exponential rejection sampler.

The 1-minute load average is printed before and after: on a shared machine, compare ratios
measured in the same run, not absolute times.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os

import torch

from penact import bench
from penact.bench.families import bench_family
from penact.bench.harness import Timing
from penact.bench.report import headline_table
from penact.bench.runs import run_headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--tail-heavy", action="store_true")
    args = parser.parse_args()

    family = bench_family("rectified")
    headline = dataclasses.replace(family.headline, size=args.n, dim=args.dim, classes=args.classes,
                                   regime="tail" if args.tail_heavy else "bulk")
    settings = bench.parse_settings(["--family", "rectified", "--peers", "penact,composite", "--no-progress"])
    settings = dataclasses.replace(settings, headline_peers=settings.peers, headline_timing=Timing(
        warmup=1, min_repeats=args.rounds, max_repeats=args.rounds, target_s=0.0, max_call_s=math.inf))
    weight, params = family.headline_parameters(headline, torch.Generator().manual_seed(settings.seed))
    far = float((-(params["scale"] * weight) > 2.0).double().mean())

    load_before = os.getloadavg()[0]
    result = run_headline(settings, family, bench.NoProgress(), headline)
    load_after = os.getloadavg()[0]
    print(f"rectified family, CPU, N = {args.n}, D = {args.dim}, C = {args.classes}, float32, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {family.headline_regime(headline)}; "
          f"{100 * far:.1f}% of (class, coordinate) pairs past s w = -2")
    print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after; "
          f"{args.rounds} interleaved rounds\n")
    print("\n".join(headline_table(result)))


if __name__ == "__main__":
    main()
