"""The ``penact`` command: ``penact <subcommand> ...``.

A subcommand is a module with a docstring (its first paragraph is the help text), an
``add_arguments(parser)`` and a ``main(args) -> int``. Adding one is a line in ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": "penact.demo",
    "bench": "penact.bench",
    "distill": "penact.distill.cli",
    "generate": "penact.generate.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="penact", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        summary = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        subparser = subparsers.add_parser(name, help=summary, description=module.__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(subparser)
        subparser.set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
