"""``penact bench``: every operation of every family beside its peers and its limit, with accuracy next to speed.

One run answers, on the machine it runs on and for each registered family (``--family``, default
``penact.family_names()``): how fast is penact, compared with what, and how far from the limit.
The family is a dimension of the grid; what each brings (operations, parameter regimes, headline
targets, accuracy references) is in ``penact/bench/families.py``, looked up by registry name.

Operations. Both families: ``sample``, ``log_prob`` (labelled), ``log_prob_backward`` (its
backward to x and W), ``log_prob_all``, ``log_marginal``, ``rsample_backward`` (``rsample`` and its
backward to the parameters). The sphere family adds the special functions ``log_bessel_iv``,
``bessel_iv_ratio``, ``vmf_log_normalizer`` (elementwise over N arguments); the rectified family
adds ``log_partition`` (``log Z``, a function of the parameters: timed once per C, not per N).
``log_prob``, its backward and ``log_prob_all`` take the normalizers computed once per problem (as
issues 2, 3 and 5 state their targets); ``log_marginal`` and ``rsample`` are the public methods.

Peers, measured in the same run on the same inputs (``penact/bench/peers.py``):

- ``penact``: the family's public API and operators (``penact.get_family(name)``, ``penact.ops``);
- ``composite``: the family's pure-torch twins in ``penact.reference``;
- ``scipy``: ``scipy.stats.vonmises_fisher``, one frozen distribution per class and a loop over
  the classes present in a labelled batch (what a scipy user writes); float64 only, CPU only;
  no counterpart in the rectified family;
- ``tfp-jax``: TensorFlow Probability on JAX, jit-compiled with per-row parameters: the sphere's
  ``VonMisesFisher``, the rectified family's ``Independent(Inflated(TruncatedNormal))``; CPU runs
  only, skipped visibly when ``jax`` or ``tfp-nightly`` is not importable;
- ``power-spherical``: ``PowerSpherical(mu, kappa).rsample()`` (De Cao & Aziz 2020), what users
  pick when the vMF sampler is too slow: a sampling peer of the sphere family (``sample`` and
  ``rsample_backward``), another law; skipped visibly when ``power_spherical`` is not importable;
- ``limit``: the floor of each operation: ``torch.randn`` of the output's shape (sample; and
  ``g.clone()`` of the incoming gradient beside it for rsample_backward), one read pass
  ``x.norm(dim=1)`` (log_prob), ``x.clone()`` (one read and one write of ``x``, the least a
  backward that returns ``grad_x`` does), ``torch.addmm`` of the same shapes (log_prob_all,
  log_marginal). The measured copy bandwidth of the device turns the bytes an operation must move
  into a second floor (``bw bound / penact``).

Timing (``penact/bench/harness.py``): one warm-up call (it absorbs jit compilation), then
interleaved rounds (every peer once per round, in rotating order, so that a change of machine load
hits all peers alike) until each peer has ``clamp(target / t, min_repeats, max_repeats)`` samples;
medians are reported. CUDA peers are timed with CUDA events, CPU peers with
``time.perf_counter``. A peer whose time, extrapolated from the smaller sizes of the same case,
would exceed ``--max-call-s`` is skipped and says so; so is one whose warm-up call exceeded it
(penact and the limit, what the others are compared with, are measured however long they take).

Headline: each family's issue set (sphere: issue 2, N = 1e5, D = 512, C = 100, kappa in [50, 500],
targets sample <= 1.0x randn, log_prob <= 1.5x the read pass, log_prob_all <= 1.2x addmm, peak
memory of sample <= 1.1x its output; rectified: issue 5, the same sizes, sample <= 1.0x randn,
log_prob <= 1.5x the read pass). Peak memory: on the CPU the growth of the resident set
(``/proc/self/status``), on CUDA ``torch.cuda.max_memory_allocated``.

Accuracy (``penact/bench/accuracy.py``): the functions of the parameters against 50-digit mpmath
(``tests/mp_reference.py`` of the source tree), log-densities against the float64 twin with mpmath
normalizers, samples by the z-score of a statistic with a known mean, and their distance from the
support. Non-finite outputs are counted and shown.

Results (``penact/bench/report.py``): ``<out>/<device>-<date>[-families][-quick].json``, ``.md``
and ``.png``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import penact
from .accuracy import SECTIONS, load_mp_reference, run_section
from .families import OPS, bench_family
from .harness import Settings, Timing, environment, measure_bandwidth, uptime
from .peers import PEERS, unavailable, versions
from .report import write
from .runs import count_grid_cases, count_headline_steps, dtype_name, run_grid, run_headline

METHOD = __doc__.split("\n\n", 2)[-1].strip()


def _registered_regimes() -> tuple[str, ...]:
    names = []
    for family in penact.family_names():
        names += [regime for regime in bench_family(family).regimes if regime not in names]
    return tuple(names)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``penact bench``'s options to ``parser`` (a top-level parser or a subcommand's)."""
    regimes = _registered_regimes()
    parser.add_argument("--quick", action="store_true",
                        help="a subset that finishes in about a minute (D in {64, 512}, C = 10, N up to 1e4, each "
                             "family's default regime, 2 to 5 calls per peer, peers over 1 s per call skipped, "
                             "headline with penact and the limits, no tfp-jax)")
    parser.add_argument("--family", dest="families", type=_choice_list(penact.family_names()),
                        help=f"families among {', '.join(penact.family_names())} (default: all registered)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--D", dest="dims", type=_int_list, help="dimensions, e.g. 64,512,2048")
    parser.add_argument("--C", dest="classes", type=_int_list, help="numbers of classes, e.g. 10,1000")
    parser.add_argument("--N", dest="sizes", type=_int_list,
                        help="batch sizes, e.g. 1e3,1e4,1e5 (default: up to 1e5 on CPU, 1e6 on CUDA)")
    parser.add_argument("--regime", "--kappa", dest="regimes", type=_choice_list(regimes),
                        help=f"parameter regimes among {', '.join(regimes)} (comma-separated; each family runs "
                             "those of its own, or its default regime if none is named)")
    parser.add_argument("--ops", type=_choice_list(OPS), help=f"operations among {', '.join(OPS)}")
    parser.add_argument("--peers", type=_choice_list(PEERS),
                        help=f"peers among {', '.join(PEERS)} (the limits are always measured)")
    parser.add_argument("--min-repeats", type=int, help="timed calls per peer and case, at least (default 3, quick 2)")
    parser.add_argument("--max-repeats", type=int, help="timed calls per peer and case, at most (default 25, quick 5)")
    parser.add_argument("--max-call-s", type=float,
                        help="skip a peer (other than penact and the limit) whose call is predicted to take longer "
                             "(default 20 s, quick 1 s)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads before measuring")
    parser.add_argument("--no-headline", dest="headline", action="store_false", help="skip the headline sets")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip the accuracy section")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="write no PNG")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for <device>-<date>.json/.md/.png (default: benchmarks/results)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(float(item)) for item in text.split(",") if item)


def _choice_list(choices):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item for item in text.split(",") if item)
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose among {', '.join(choices)}")
        return items
    return parse


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("penact bench: --device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    families = args.families or penact.family_names()
    regimes = {}
    for name in families:
        family = bench_family(name)
        named = tuple(regime for regime in args.regimes or () if regime in family.regimes)
        regimes[name] = named or ((family.default_regime,) if quick or args.regimes else tuple(family.regimes))
    peers = args.peers or PEERS
    excluded = {}
    if quick and not args.peers:
        excluded["tfp-jax"] = ("left out of --quick: jax.jit compiles once per shape (1-2 s each); "
                               "name it in --peers or run without --quick")
    default_sizes = (1_000, 10_000) if quick else (
        (1_000, 10_000, 100_000, 1_000_000) if device.type == "cuda" else (1_000, 10_000, 100_000))
    timing = Timing(warmup=1, min_repeats=args.min_repeats or (2 if quick else 3),
                    max_repeats=args.max_repeats or (5 if quick else 25), target_s=0.05 if quick else 0.5,
                    max_call_s=args.max_call_s or (1.0 if quick else 20.0))
    return Settings(
        device=device,
        dtype=getattr(torch, args.dtype),
        families=tuple(families),
        dims=args.dims or ((64, 512) if quick else (64, 512, 2048)),
        classes=args.classes or ((10,) if quick else (10, 1000)),
        sizes=args.sizes or default_sizes,
        regimes=regimes,
        ops=args.ops or OPS,
        peers=peers,
        excluded=excluded,
        timing=timing,
        headline_timing=dataclasses.replace(timing, min_repeats=3 if quick else 7,
                                            max_repeats=max(timing.max_repeats, 7),
                                            max_call_s=max(timing.max_call_s, 30.0)),
        headline=args.headline,
        headline_peers=("penact",) if quick else peers,
        accuracy=args.accuracy,
        accuracy_sample_n=4_000 if quick else 10_000,
        plot=args.plot,
        progress=args.progress,
        out=args.out,
        seed=args.seed,
        quick=quick,
    )


def parse_settings(argv: list[str]) -> Settings:
    """The :class:`Settings` of ``penact bench <argv>`` (for the scripts in benchmarks/ and the tests)."""
    return settings_from_args(add_arguments(argparse.ArgumentParser(prog="penact bench")).parse_args(argv))


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_stem(settings: Settings, env: dict) -> str:
    families = "" if settings.families == penact.family_names() else "-" + "-".join(settings.families)
    return (f"{settings.device.type}-{_slug(env['device_name'])}-{env['date'][:10]}{families}"
            + ("-quick" if settings.quick else ""))


class NoProgress:
    """The progress bar's interface, showing nothing."""

    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark described by parsed ``args``; writes the results and prints the tables."""
    settings = settings_from_args(args)
    started = time.perf_counter()
    env = environment(settings.device, versions(settings))
    bandwidth = measure_bandwidth(settings.device)
    families = [bench_family(name) for name in settings.families]
    mp = load_mp_reference() if settings.accuracy else None
    total = sum(count_grid_cases(settings, family)
                + (count_headline_steps(settings, family) if settings.headline else 0)
                + (len(SECTIONS) if mp is not None else 0) for family in families)
    if settings.progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=total, desc="penact bench", unit="case", dynamic_ncols=True, file=sys.stderr)
    else:
        progress = NoProgress()
    report: dict[str, Any] = dict(
        environment=env, bandwidth=bandwidth,
        settings=dataclasses.asdict(settings) | dict(
            device=str(settings.device), dtype=dtype_name(settings.dtype), out=str(settings.out),
            regime_descriptions={family.name: {r: family.regimes[r] for r in settings.regimes[family.name]}
                                 for family in families}),
        unavailable_peers={name: unavailable(name, settings) for name in settings.peers if unavailable(name, settings)},
        headline={}, grid=[], accuracy=[])
    try:
        if settings.headline:
            for family in families:
                report["headline"][family.name] = run_headline(settings, family, progress)
        for family in families:
            report["grid"] += run_grid(settings, family, bandwidth, progress)
        if mp is not None:
            for family in families:
                for section in SECTIONS:
                    progress.set_postfix_str(f"accuracy: {family.name} {section}")
                    report["accuracy"] += run_section(section, settings, family, mp)
                    progress.update(1)
        elif settings.accuracy:
            report["accuracy_skipped"] = "needs mpmath and tests/mp_reference.py (run from a source checkout)"
    finally:
        progress.close()
    loads = [record["load_1min"] for record in report["grid"]]
    report["load_summary"] = (f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"
                              if loads else None)
    report["uptime_end"] = uptime()
    report["loadavg_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - started
    text, paths = write(report, settings.out / results_stem(settings, env), METHOD, settings.plot)
    print(text)
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m penact.bench``, ``benchmarks/run.py``); ``penact bench`` is the same."""
    parser = add_arguments(argparse.ArgumentParser(prog="penact bench", description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return main(parser.parse_args(argv))
