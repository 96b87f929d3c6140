"""Every penact operator, as typed functions over ``torch.ops.penact.*``: the special functions,
the sphere family's (``vmf_*``) and the rectified family's (``rectified_*``).

Each is a PyTorch custom operator with a fake kernel (``torch.compile``) and a registered backward
where it is differentiable; the dispatcher picks the CPU or CUDA kernel from the tensors' device.
Bad arguments raise ``ValueError`` naming the argument and what was expected, on every device
(docs/operators.md has the conventions).
"""
from ._library import skip_device_checks
from .rectified import (rectified_coordinate_stats, rectified_log_partition, rectified_log_prob,
                        rectified_log_prob_all, rectified_mean, rectified_rsample, rectified_sample)
from .special import bessel_iv_ratio, log_bessel_iv, vmf_log_normalizer, vmf_mean_resultant
from .vmf import vmf_cosine_kappa_grad, vmf_log_prob, vmf_log_prob_all, vmf_rsample, vmf_rsample_backward, vmf_sample

__all__ = [
    "skip_device_checks",
    "log_bessel_iv", "bessel_iv_ratio",
    "vmf_log_normalizer", "vmf_mean_resultant", "vmf_sample", "vmf_log_prob", "vmf_log_prob_all",
    "vmf_cosine_kappa_grad", "vmf_rsample", "vmf_rsample_backward",
    "rectified_log_partition", "rectified_coordinate_stats", "rectified_sample", "rectified_log_prob",
    "rectified_log_prob_all", "rectified_rsample", "rectified_mean",
]
