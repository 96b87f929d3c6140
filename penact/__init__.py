from . import _ops as ops
