"""Run the distillation benchmark (method x transfer set x seed) on digits and write its report.

Writes <out>/<name>.md, .json and .png (student test accuracy, mean +- std over seeds, the teacher's
beside it, the targets and where the time goes on the device). Runs unchanged under
`torchrun --nproc_per_node=K -m penact.cli distill ...`: every run of the grid is then data-parallel
over K ranks (gloo with --device cpu; NCCL with --device cuda, each rank on cuda:LOCAL_RANK).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as torch_dist

from ..experiments import add_device_argument, device_name
from ..families import family_names
from .trainer import DistillConfig, parse_method
from .transfer import DEFAULT_SEVERITY, TRANSFER_SETS

DEFAULT_METHODS = ("kd", "weighted", "synth", "synth+weighted")


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DistillConfig()
    parser.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                        help="comma-separated; parts kd, synth, weighted joined by '+' (default: %(default)s)")
    parser.add_argument("--transfers", type=_transfers, default=list(TRANSFER_SETS),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default: %(default)s)")
    parser.add_argument("--family", default="sphere", choices=family_names(), help="distribution family (default: %(default)s)")
    parser.add_argument("--severity", type=float, default=DEFAULT_SEVERITY, help="corruption severity (default: %(default)s)")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch per step")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size)
    parser.add_argument("--refresh-every", type=int, default=defaults.refresh_every)
    parser.add_argument("--refresh-size", type=int, default=defaults.refresh_size)
    parser.add_argument("--synth-steps", type=int, default=defaults.synth_steps)
    parser.add_argument("--match", default=defaults.match, help="auto, cosine, mse or log_prob")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="save teachers, finished and running cells here; a rerun resumes")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (with --checkpoint-dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None, help="file stem (default: distill-<date>)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (per rank)")
    add_device_argument(parser)
    parser.add_argument("--log-every", type=int, default=50,
                        help="steps between readings of the loss (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")


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
        config = DistillConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
                               pool_size=args.pool_size, refresh_every=args.refresh_every,
                               refresh_size=args.refresh_size, synth_steps=args.synth_steps, match=args.match,
                               checkpoint_every=args.checkpoint_every if args.checkpoint_dir else 0)
        seeds = list(range(args.seeds))
        results = run_grid(args.methods, args.transfers, seeds, config, teacher_epochs=args.teacher_epochs,
                           severity=args.severity, family=args.family, checkpoint_dir=args.checkpoint_dir,
                           progress=not args.no_progress, device=device, log_every=args.log_every)
        if not torch_dist.is_initialized() or torch_dist.get_rank() == 0:
            summary = summarize(results, args.methods, args.transfers)
            launcher = f"torchrun --nproc_per_node={torch_dist.get_world_size()} -m penact.cli" if launched else "penact"
            command = launcher + " " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            settings = {"family": args.family, "severity": args.severity, "teacher_epochs": args.teacher_epochs,
                        "world_size": torch_dist.get_world_size() if launched else 1,
                        "device": device_name(device) + (" per rank" if launched else ""),
                        **{k: v for k, v in asdict(config).items() if k not in ("method", "seed", "checkpoint_every")}}
            name = args.name or f"distill-{datetime.date.today().isoformat()}"
            for path in write_report(summary, args.methods, args.transfers, args.out, name, command, settings):
                print(f"wrote {path}")
            for verdict in summary["targets"]:
                print(f"{'met ' if verdict['met'] else 'MISS'}  {verdict['target']}: {verdict['measured']}")
    finally:
        if launched:
            torch_dist.destroy_process_group()
    return 0
