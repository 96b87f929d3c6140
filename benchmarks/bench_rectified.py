"""CPU benchmark of the rectified family against the floors of issue 5:
``python benchmarks/bench_rectified.py [--n 100000] [--dim 512] [--classes 100] [--rounds 11]``.

- ``sample``: ``rectified_sample`` of ``[N, D]`` float32 for random labels, against
  ``torch.randn(N, D)`` (target: at most 1.0x);
- ``log_prob``: the labelled log-density ``rectified_log_prob`` of ``[N, D]`` float32 activations
  (log Z given), against one read pass ``x.norm(dim=1)`` (target: at most 1.5x). The public
  ``RectifiedDistribution.log_prob``, which also recomputes log Z (C x D normalizers), is shown too.

The pure-torch twin (``penact.reference``) is timed alongside as the composite baseline.
Parameters: ``W ~ N(0, 0.1^2)`` (a trained layer's scale), ``s`` in (0.5, 3), ``m`` in (0.5, 1.5)
(30-50% exact zeros), so ``s w`` lies mostly within +-1; ``--tail-heavy`` uses ``W ~ N(0, 1)``,
which sends about an eighth of the (class, coordinate) pairs past ``s w = -2`` to the scalar
rejection sampler.

Timing: one warm-up call each, then interleaved rounds (every peer once per round, in rotating
order, so that a change of machine load hits all alike); medians (and minimums) of the rounds.
The 1-minute load average is printed before and after: on a shared machine, compare ratios
measured in the same run, not absolute times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from penact import RectifiedDistribution
from penact import ops
from penact import reference


def interleaved_medians(peers: dict, rounds: int) -> dict:
    """{name: (median_s, min_s)} over `rounds` rounds, each peer once per round in rotating order."""
    names = list(peers)
    for fn in peers.values():
        fn()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            begin = time.perf_counter()
            peers[name]()
            times[name].append(time.perf_counter() - begin)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--tail-heavy", action="store_true")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(args.classes, args.dim, generator=g) * (1.0 if args.tail_heavy else 0.1)
    scale = 0.5 + 2.5 * torch.rand(args.dim, generator=g)
    zero_mass = 0.5 + torch.rand(args.dim, generator=g)
    labels = torch.randint(0, args.classes, (args.n,), generator=g)
    dist = RectifiedDistribution(weight, None, scale, zero_mass)
    log_partition = dist.log_partition
    x = dist.sample(labels, seed=1)
    far = float(((-(scale * weight)) > 2.0).double().mean())

    load_before = os.getloadavg()[0]
    sample = interleaved_medians({
        "rectified_sample": lambda: ops.rectified_sample(weight, scale, zero_mass, labels, 1, 0),
        "torch.randn (floor)": lambda: torch.randn(args.n, args.dim),
        "torch twin": lambda: reference.rectified_sample(weight, scale, zero_mass, labels),
    }, args.rounds)
    log_prob = interleaved_medians({
        "rectified_log_prob": lambda: ops.rectified_log_prob(x, weight, scale, zero_mass, log_partition, labels),
        "RectifiedDistribution.log_prob": lambda: dist.log_prob(x, labels),
        "x.norm(dim=1) (floor)": lambda: x.norm(dim=1),
        "torch twin": lambda: reference.rectified_log_prob(x, weight, scale, zero_mass, log_partition, labels),
    }, args.rounds)
    load_after = os.getloadavg()[0]

    print(f"rectified family, CPU, N = {args.n}, D = {args.dim}, C = {args.classes}, float32, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {100 * far:.1f}% of (class, coordinate) "
          f"pairs past s w = -2; exact zeros in x: {100 * float((x == 0).double().mean()):.1f}%")
    print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after; {args.rounds} interleaved rounds")
    for title, results, floor, target in (("sample", sample, "torch.randn (floor)", 1.0),
                                          ("log_prob", log_prob, "x.norm(dim=1) (floor)", 1.5)):
        floor_median, floor_min = results[floor]
        print(f"\n{title:10s} {'median ms':>10s} {'min ms':>9s} {'x floor (medians)':>18s} {'x floor (mins)':>15s}")
        for name, (median, minimum) in results.items():
            print(f"  {name:32s} {1e3 * median:9.2f} {1e3 * minimum:9.2f} {median / floor_median:12.2f}x"
                  f" {minimum / floor_min:14.2f}x")
        first = next(iter(results))
        ratio = results[first][0] / floor_median
        print(f"  target: {first} <= {target}x {floor}: {ratio:.2f}x, {'met' if ratio <= target else 'NOT met'}")


if __name__ == "__main__":
    main()
