"""Run a distillation benchmark (method x transfer set x seed) and write its report: --dataset
digits (scikit-learn's 8x8 digits, the default) or mnist (DAFL's protocol: LeNet-5 teacher,
LeNet-5-half student, transfer sets in-domain, partial, corrupted, shifted, noise, none).

Writes <out>/<name>.md, .json and .png (student test accuracy, mean +- std over seeds, the teacher's
and the published numbers beside it, the targets and where the time goes on the device). --split
validation evaluates on a part of the training split held out from everything instead (where
settings are chosen); --quick runs a small, labelled subset in a few minutes. Options left out take
the benchmark's defaults. Runs unchanged under `torchrun --nproc_per_node=K -m penact.cli distill
...`: every run of the grid is then data-parallel over K ranks (gloo with --device cpu; NCCL with
--device cuda, each rank on cuda:LOCAL_RANK).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as torch_dist

from ..experiments import add_device_argument, device_name, get_dataset
from ..families import family_names
from .grid import BENCHMARKS, SPLITS, get_benchmark
from .synthesis import MATCH_LOSSES
from .trainer import DistillConfig, parse_method
from .transfer import DEFAULT_SEVERITY, TRANSFER_SETS

DEFAULT_METHODS = ("kd", "weighted", "synth", "synth+weighted")
SEEDS = 5
# The DistillConfig fields set from the command line (the rest keep the benchmark's values).
CONFIG_OPTIONS = ("steps", "data_free_steps", "batch_size", "synth_ratio", "lr", "temperature", "pool_size", "refresh_every",
                  "refresh_size", "synth_steps", "synth_lr", "match", "tv_weight", "l2_weight", "synth_jitter",
                  "augment_shift", "balance_rounds")


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for method in methods:
        try:
            parse_method(method)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return methods


def _transfers(text: str) -> list[str]:
    transfers = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in transfers if t not in TRANSFER_SETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown transfer sets {unknown}; choose from {TRANSFER_SETS}")
    return transfers


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a comma-separated list of distinct seeds >= 0, got {text!r}")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", choices=tuple(BENCHMARKS), help="(default: %(default)s)")
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="evaluate on the test split, or on a validation part held out of the training split")
    parser.add_argument("--quick", action="store_true",
                        help="one seed, a few cells, short runs: a labelled check in minutes, not the benchmark")
    parser.add_argument("--methods", type=_methods, default=None,
                        help=f"comma-separated; parts kd, synth, weighted joined by '+' (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--transfers", type=_transfers, default=None,
                        help=f"comma-separated subset of {','.join(TRANSFER_SETS)} (default: the benchmark's)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, help=f"seeds 0 .. N-1 (default: {SEEDS})")
    seeds.add_argument("--seed-list", type=_seed_list, default=None,
                        help="run only these seeds, e.g. 3,4 (instead of --seeds): processes or machines that share "
                             "a --checkpoint-dir can split a grid by seeds, and a last run with --seeds N reports "
                             "all of it from the saved cells")
    parser.add_argument("--family", default=None, choices=family_names(), help="distribution family")
    parser.add_argument("--severity", type=float, default=DEFAULT_SEVERITY, help="corruption severity (default: %(default)s)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="(default: the data set's recipe)")
    for name in CONFIG_OPTIONS:
        kind = {"match": str, "data_free_steps": int}.get(name) or type(getattr(DistillConfig(), name))
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=("one of " + ", ".join(MATCH_LOSSES) + "; " if name == "match" else "")
                            + "default: the benchmark's (DistillConfig)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="save teachers, pools, finished and running cells here; a rerun resumes")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (with --checkpoint-dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None, help="file stem (default: distill[-<dataset>]-<date>[-validation][-quick])")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (per rank)")
    add_device_argument(parser)
    parser.add_argument("--log-every", type=int, default=50,
                        help="steps between readings of the loss (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")


def resolve(args: argparse.Namespace) -> tuple[DistillConfig, dict]:
    """The run's config and grid options: what the command line gives, else ``--quick``'s value
    (with ``--quick``), else the benchmark's."""
    benchmark = get_benchmark(args.dataset)
    quick = benchmark.quick if args.quick else {}

    def chosen(name: str, default):
        given = getattr(args, name)
        return given if given is not None else quick.get(name, default)

    config = replace(benchmark.config, **{name: chosen(name, getattr(benchmark.config, name)) for name in CONFIG_OPTIONS},
                     checkpoint_every=args.checkpoint_every if args.checkpoint_dir else 0)
    grid = {"methods": list(chosen("methods", DEFAULT_METHODS)), "transfers": list(chosen("transfers", benchmark.transfers)),
            "seeds": args.seed_list or list(range(chosen("seeds", SEEDS))), "family": chosen("family", benchmark.family),
            "teacher_epochs": chosen("teacher_epochs", get_dataset(args.dataset).teacher_epochs)}
    return config, grid


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """This rank's device under ``torchrun``: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank).

    Raises:
        SystemExit: ``cuda:i`` (one index for every rank).
    """
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise SystemExit(f"penact distill: under torchrun pass --device cuda (each rank takes cuda:LOCAL_RANK), "
                         f"not {device}")
    return torch.device("cuda", local_rank)


def report_name(dataset: str, split: str, quick: bool) -> str:
    """``distill[-<dataset>]-<date>[-validation][-quick]`` (digits keeps its original stem)."""
    parts = ["distill"] + ([dataset] if dataset != "digits" else []) + [datetime.date.today().isoformat()]
    return "-".join(parts + (["validation"] if split == "validation" else []) + (["quick"] if quick else []))


def main(args: argparse.Namespace) -> int:
    from .grid import run_grid, summarize, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = args.device
    if launched:
        device = rank_device(device, int(os.environ["LOCAL_RANK"]))
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's communicator and every collective use the current device
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        config, grid = resolve(args)
        benchmark = get_benchmark(args.dataset)
        results, pools = run_grid(grid["methods"], grid["transfers"], grid["seeds"], config,
                                  teacher_epochs=grid["teacher_epochs"], severity=args.severity, family=grid["family"],
                                  checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress, device=device,
                                  log_every=args.log_every, dataset=args.dataset, split=args.split)
        if not torch_dist.is_initialized() or torch_dist.get_rank() == 0:
            summary = summarize(results, grid["methods"], grid["transfers"], benchmark, pools)
            launcher = f"torchrun --nproc_per_node={torch_dist.get_world_size()} -m penact.cli" if launched else "penact"
            command = launcher + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            settings = {"dataset": args.dataset, "split": args.split, "family": grid["family"],
                        "severity": args.severity, "teacher_epochs": grid["teacher_epochs"],
                        "world_size": torch_dist.get_world_size() if launched else 1,
                        "device": device_name(device) + (" per rank" if launched else ""),
                        **{k: v for k, v in asdict(config).items() if k not in ("method", "seed", "checkpoint_every")}}
            name = args.name or report_name(args.dataset, args.split, args.quick)
            for path in write_report(summary, grid["methods"], grid["transfers"], args.out, name, command, settings,
                                     benchmark, quick=args.quick):
                print(f"wrote {path}")
            for verdict in summary["targets"]:
                print(f"{'met ' if verdict['met'] else 'MISS'}  {verdict['target']}: {verdict['measured']}")
    finally:
        if launched:
            torch_dist.destroy_process_group()
    return 0
