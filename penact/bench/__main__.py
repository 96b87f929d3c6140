"""``python -m penact.bench``: the same as ``penact bench``."""
import sys

from . import cli

sys.exit(cli())
