"""Every penact operator, as typed functions over ``torch.ops.penact.*``: the special functions,
the sphere family's (``vmf_*``) and the rectified family's (``rectified_*``).

Each is a PyTorch custom operator with a fake kernel (``torch.compile``) and a registered backward
where it is differentiable; the dispatcher picks the CPU or CUDA kernel from the tensors' device.
Bad arguments raise ``ValueError`` naming the argument and what was expected, on every device
(docs/operators.md has the conventions). Each module's ``__all__`` is exported here: an operator
added to a family's module needs no line in this file.
"""
from . import rectified, special, vmf
from ._library import skip_device_checks
from .rectified import *  # noqa: F401,F403
from .special import *  # noqa: F401,F403
from .vmf import *  # noqa: F401,F403

__all__ = ["skip_device_checks", *special.__all__, *vmf.__all__, *rectified.__all__]
