"""``python benchmarks/bench_distributions.py``: penact.distributions' ``VonMisesFisher`` beside the
kernels it runs on and beside what a user would otherwise write.

For ``loc: [N, D]``, ``concentration: [N]`` (one distribution per row, kappa log-uniform in
``--kappa``), on the CPU:

- ``VonMisesFisher.rsample()``: the drop-in, parameters requiring grad (the op saves for backward);
- ``VonMisesFisher.sample()``: the same draw without autograd;
- ``labelled kernel``: ``PenultimateDistribution(weight [C, D]).sample(labels [N])``, the same N and D
  (issue 8's reference point: rsample within 10% of it);
- ``row kernel``: ``penact.ops.vmf_sample(loc, kappa, arange(N), ...)``, the kernel rsample calls;
- ``composite``: ``penact.reference.vmf_sample``, the pure-torch Wood sampler (not differentiable
  in kappa);
- ``rsample + backward``: forward and backward of ``(x @ b).sum()`` through ``rsample``;
- ``randn``: ``torch.randn(N, D)``, the floor of any sampler.

TensorFlow Probability's ``VonMisesFisher`` (on JAX, ``penact bench``'s jit-compiled sampler with
one row per class) is timed when ``jax`` and ``tensorflow_probability`` import, and reported as
skipped otherwise.

Timing: ``penact bench``'s (``penact.bench.harness.measure``): one warm-up call each, then
``--rounds`` interleaved rounds (every peer once per round, in rotating order, so that load changes
hit all peers alike); medians and the ratios of medians are printed, with the load average before
and after (the machine may be shared). ``--threads 1 --clock cpu`` times the calling thread's CPU
time instead of wall time, which other jobs on a shared machine disturb less (they still compete
for memory bandwidth).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform

import torch

from penact import PenultimateDistribution, VonMisesFisher, ops
from penact import reference
from penact.bench.harness import Peer, Timing, measure
from penact.bench.peers import tfp_modules, tfp_sphere_functions


def _tfp_peer(loc: torch.Tensor, kappa: torch.Tensor):
    """TFP's per-row VonMisesFisher sampler of ``penact bench`` (rows as their own classes), or why not."""
    modules, why = tfp_modules()
    if modules is None:
        return None, f"skipped: {why}"
    jax, jnp = modules[0], modules[1]
    draw = tfp_sphere_functions()["sample"]
    loc_jax, kappa_jax, rows = jnp.asarray(loc.numpy()), jnp.asarray(kappa.numpy()), jnp.arange(loc.shape[0])
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 10**6))
    return (lambda: draw(loc_jax, kappa_jax, rows, next(keys)).block_until_ready()), None


def peers(n: int, dim: int, classes: int, kappa_range: tuple[float, float], dtype: torch.dtype, generator):
    low, high = (math.log(k) for k in kappa_range)
    kappa = torch.exp(low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).to(dtype)
    loc = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator, dtype=dtype), dim=1)
    loc_grad, kappa_grad = loc.clone().requires_grad_(), kappa.clone().requires_grad_()
    drop_in = VonMisesFisher(loc_grad, kappa_grad, validate_args=False)
    plain = VonMisesFisher(loc, kappa, validate_args=False)
    class_kappa = torch.exp(low + (high - low) * torch.rand(classes, generator=generator, dtype=torch.float64)).to(dtype)
    weight = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator, dtype=dtype), dim=1)
    family = PenultimateDistribution(weight * class_kappa[:, None], radius=1.0)
    labels = torch.randint(0, classes, (n,), generator=generator)
    rows = torch.arange(n)
    b = torch.randn(dim, generator=generator, dtype=dtype)

    def rsample_backward():
        (drop_in.rsample() @ b).sum().backward()

    table = {
        "VonMisesFisher.rsample": lambda: drop_in.rsample(),
        "VonMisesFisher.sample": lambda: plain.sample(),
        "labelled kernel": lambda: family.sample(labels),
        "row kernel": lambda: ops.vmf_sample(loc, kappa, rows, 1.0, 7, 0),
        "composite": lambda: reference.vmf_sample(loc, kappa, rows, 1.0, generator=generator),
        "rsample + backward": rsample_backward,
        "randn": lambda: torch.randn(n, dim, dtype=dtype, generator=generator),
    }
    tfp_call, why = _tfp_peer(loc, kappa)
    if tfp_call is not None:
        table["tfp-jax VonMisesFisher"] = tfp_call
    return table, why


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--N", type=float, nargs="+", default=[1e4, 1e5])
    parser.add_argument("--D", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--C", type=int, default=100, help="classes of the labelled kernel")
    parser.add_argument("--kappa", type=float, nargs=2, default=[50.0, 500.0], help="log-uniform range")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the calling thread's CPU time (with --threads 1: the kernels' own time, "
                             "less sensitive to other jobs on a shared machine than wall time)")
    parser.add_argument("--skip", nargs="*", default=[], help="peers to leave out (e.g. composite tfp-jax)")
    parser.add_argument("--json", help="also write the timings here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    results = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "clock": args.clock,
               "dtype": args.dtype, "kappa": args.kappa, "load_before": os.getloadavg(), "cases": []}
    if args.clock == "cpu" and (torch.get_num_threads() != 1 or not any("tfp".startswith(s) for s in args.skip)):
        parser.error("--clock cpu measures the calling thread only: use it with --threads 1 and --skip tfp "
                     "(JAX computes on threads of its own)")
    print(f"threads {torch.get_num_threads()}, {args.clock} clock, dtype {args.dtype}, kappa log-uniform in {args.kappa}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    for dim in args.D:
        for n in (int(v) for v in args.N):
            table, tfp_note = peers(n, dim, args.C, tuple(args.kappa), dtype, generator)
            table = {name: call for name, call in table.items() if not any(name.startswith(s) for s in args.skip)}
            if any("tfp".startswith(s) or s.startswith("tfp") for s in args.skip):
                tfp_note = None
            measured = measure([Peer(name, call, clock="wall" if args.clock == "wall" else "thread")
                                for name, call in table.items()],
                               Timing(warmup=1, min_repeats=args.rounds, max_repeats=args.rounds, target_s=0.0,
                                      max_call_s=math.inf))
            times = {name: result["times_s"] for name, result in measured.items()}
            medians = {name: result["time_s"] for name, result in measured.items()}
            base = medians["labelled kernel"]
            print(f"\nN = {n}, D = {dim}  (median of {args.rounds} interleaved rounds; ratio to the labelled kernel)")
            for name, value in medians.items():
                print(f"  {name:26s} {value * 1e3:9.2f} ms   x{value / base:5.2f}   (min {min(times[name]) * 1e3:8.2f} ms)")
            if tfp_note:
                print(f"  {'tfp-jax VonMisesFisher':26s} {tfp_note}")
            results["cases"].append({"N": n, "D": dim, "median_s": medians,
                                     "min_s": {k: min(v) for k, v in times.items()}, "tfp": tfp_note})
    results["load_after"] = os.getloadavg()
    print(f"\nload average after {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min) "
          f"on {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
