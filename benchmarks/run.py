"""Runs penact's benchmark suite: ``python benchmarks/run.py [--quick] [options]``.

The same as ``penact bench``; see ``penact/bench/`` (or ``--help``) for what is measured and how.
Results go to ``benchmarks/results/<device>-<date>.json/.md/.png``.
"""
import sys
from pathlib import Path

from penact import bench

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in arguments):
        arguments += ["--out", str(Path(__file__).resolve().parent / "results")]
    sys.exit(bench.cli(arguments))
