"""Bad input never crashes, on any device: property-based fuzzing (hypothesis) of every operator
over shapes (empty, one row, odd sizes, large D), dtypes, memory layouts, devices and bad values.

Each example starts from valid arguments and applies at most one mistake drawn from the operator's
list; the call must then raise ValueError naming the argument the mistake was made in, or, for the
documented non-errors (an invalid concentration gives NaN rows), return; valid arguments must
return a result of the documented shape and dtype. Nothing may crash or hang.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from conftest import CUDA_AVAILABLE, DEVICES, SEED
from penact import ops

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)
DIMS = st.sampled_from([1, 2, 3, 5, 17, 64, 1025])
ROWS = st.sampled_from([0, 1, 2, 7, 33])
CLASSES = st.sampled_from([1, 2, 5])
DEVICE = st.sampled_from(DEVICES)
LAYOUT = st.sampled_from(["contiguous", "transposed", "sliced"])


def laid_out(t, layout):
    """t with the same values in another memory layout (non-contiguous for 2-D tensors)."""
    if t.dim() != 2 or layout == "contiguous":
        return t
    if layout == "transposed":
        return t.t().contiguous().t()
    padded = torch.zeros(t.shape[0], t.shape[1] + 3, dtype=t.dtype, device=t.device)
    padded[:, 1:t.shape[1] + 1] = t
    return padded[:, 1:t.shape[1] + 1]


def other_device(device):
    return "cpu" if device != "cpu" else ("cuda" if CUDA_AVAILABLE else None)


def expect(call, mistake, named):
    """Runs call(); a mistake (named: the argument it was made in) must raise ValueError naming it,
    no mistake must return. Returns the result (None when it raised)."""
    if mistake is None:
        return call()
    with pytest.raises(ValueError, match=rf"penact: .*\b{named}\b"):
        call()
    return None


def unit_rows(generator, rows, dim, dtype, device):
    mu = torch.nn.functional.normalize(torch.randn(rows, max(dim, 1), generator=generator, dtype=torch.float64), dim=1)
    return mu.to(dtype).to(device)


@seed(SEED)
@FUZZ
@given(data=st.data(), rows=ROWS, classes=CLASSES, dim=DIMS, device=DEVICE, layout=LAYOUT,
       dtype=st.sampled_from([torch.float32, torch.float64]),
       mistake=st.sampled_from([None, "label_range", "label_dtype", "label_shape", "mean_norm", "mean_dtype",
                                "kappa_shape", "kappa_value", "radius", "offset", "dim", "device", "out_dtype"]))
def test_vmf_sample(data, rows, classes, dim, device, layout, dtype, mistake):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    dim = max(dim, 2)
    mu = unit_rows(g, classes, dim, dtype, device)
    kappa = (torch.rand(classes, generator=g, dtype=torch.float64) * 100).to(dtype).to(device)
    labels = torch.randint(0, classes, (rows,), generator=g).to(device)
    radius, offset, out_dtype, named = 1.5, 3, None, None
    if mistake == "label_range" and rows > 0:
        labels[data.draw(st.integers(0, rows - 1))] = data.draw(st.sampled_from([classes, -1, 2**40]))
        named = "labels"
    elif mistake == "label_dtype":
        labels, named = labels.to(data.draw(st.sampled_from([torch.float32, torch.uint8, torch.bool]))), "labels"
    elif mistake == "label_shape":
        labels, named = labels[:, None], "labels"
    elif mistake == "mean_norm" and rows > 0:
        mu[labels[0]] *= data.draw(st.sampled_from([1.05, 1.89, 0.5, 0.0, math.nan]))
        named = "mean_direction"
    elif mistake == "mean_dtype":
        mu, named = mu.to(data.draw(st.sampled_from([torch.float16, torch.bfloat16, torch.int64]))), "mean_direction"
    elif mistake == "kappa_shape":
        kappa, named = torch.cat([kappa, kappa[:1]]), "kappa"
    elif mistake == "kappa_value":
        kappa[0] = data.draw(st.sampled_from([math.nan, math.inf, -1.0]))  # documented: NaN rows, no error
    elif mistake == "radius":
        radius, named = data.draw(st.sampled_from([0.0, -1.0, math.nan, math.inf])), "radius"
    elif mistake == "offset":
        offset, named = -1, "offset"
    elif mistake == "dim":
        mu, named = mu[:, :1].contiguous(), "dimension D"
    elif mistake == "device" and other_device(device) is not None:
        labels, named = labels.to(other_device(device)), "labels"
    elif mistake == "out_dtype":
        out_dtype, named = data.draw(st.sampled_from([torch.float16, torch.float64, torch.int32])), "dtype"
        if out_dtype == dtype or (dtype == torch.float32 and out_dtype == torch.float16):
            named = None  # the computation's dtype, or float32 stored as float16: allowed
    mistake = mistake if named is not None else None
    out = expect(lambda: ops.vmf_sample(laid_out(mu, layout), kappa, labels, radius, 5, offset, dtype=out_dtype),
                 mistake, named)
    if out is not None:
        assert out.shape == (rows, mu.shape[1]) and out.device.type == device
        assert out.dtype == (out_dtype or dtype)
        bad_rows = ~torch.isfinite(kappa[labels]) | (kappa[labels] < 0)
        assert torch.isfinite(out[~bad_rows]).all() and out[bad_rows].isnan().all()


@seed(SEED)
@FUZZ
@given(data=st.data(), rows=ROWS, classes=CLASSES, dim=DIMS, device=DEVICE, layout=LAYOUT,
       dtypes=st.sampled_from([(torch.float64, torch.float64), (torch.float32, torch.float32),
                               (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]),
       op=st.sampled_from(["log_prob", "log_prob_all", "backward"]),
       mistake=st.sampled_from([None, "label_range", "label_shape", "x_shape", "x_dtype", "weight_dtype",
                                "normalizer_shape", "radius", "device", "grad_shape"]))
def test_vmf_densities(data, rows, classes, dim, device, layout, dtypes, op, mistake):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    x_dtype, w_dtype = dtypes
    x = torch.randn(rows, dim, generator=g, dtype=torch.float64).to(x_dtype).to(device)
    weight = torch.randn(classes, dim, generator=g, dtype=torch.float64).to(w_dtype).to(device)
    lognorm = torch.randn(classes, generator=g, dtype=torch.float64).to(w_dtype).to(device)
    labels = torch.randint(0, classes, (rows,), generator=g).to(device)
    grad = torch.randn(rows, generator=g, dtype=torch.float64).to(w_dtype).to(device)
    radius, named = 2.0, None
    if mistake == "label_range" and rows > 0 and op != "log_prob_all":
        labels[-1], named = data.draw(st.sampled_from([classes, -3])), "labels"
    elif mistake == "label_shape" and op != "log_prob_all":
        labels, named = labels[:max(rows - 1, 0)] if rows else labels[None], "labels"
    elif mistake == "x_shape":
        x, named = torch.randn(rows, dim + 1, generator=g).to(x_dtype).to(device), "x"
    elif mistake == "x_dtype":
        x = x.to(data.draw(st.sampled_from([torch.int64, torch.float64 if w_dtype == torch.float32 else torch.float32])))
        named = "x"
    elif mistake == "weight_dtype":
        weight, lognorm, named = weight.half(), lognorm.half(), "weight"
    elif mistake == "normalizer_shape" and op != "backward":
        lognorm, named = lognorm[:0], "log_normalizer"
    elif mistake == "radius":
        radius, named = data.draw(st.sampled_from([0.0, -2.0, math.nan])), "radius"
    elif mistake == "device" and other_device(device) is not None:
        weight, named = weight.to(other_device(device)), "weight"
    elif mistake == "grad_shape" and op == "backward":
        grad, named = grad[None], "grad"
    mistake = mistake if named is not None else None
    x = laid_out(x, layout)
    if op == "log_prob":
        out = expect(lambda: ops.vmf_log_prob(x, weight, lognorm, labels, radius), mistake, named)
        expected_shape = (rows,)
    elif op == "log_prob_all":
        out = expect(lambda: ops.vmf_log_prob_all(x, weight, lognorm, radius), mistake, named)
        expected_shape = (rows, classes)
    else:
        backward = torch.ops.penact.vmf_log_prob_backward.default
        result = expect(lambda: backward(grad, x, weight, labels, radius, True, True), mistake, named)
        out = None if result is None else result[0]
        expected_shape = (rows, dim)
    if out is not None:
        assert out.shape == expected_shape and out.device.type == device


@seed(SEED)
@FUZZ
@given(data=st.data(), rows=ROWS, classes=CLASSES, dim=DIMS, device=DEVICE, layout=LAYOUT,
       dtypes=st.sampled_from([(torch.float64, torch.float64), (torch.float32, torch.float32),
                               (torch.bfloat16, torch.float32)]),
       op=st.sampled_from(["sample", "log_prob", "log_prob_all", "log_partition", "backward"]),
       mistake=st.sampled_from([None, "label_range", "negative_a", "nan_a", "scale_value", "zero_mass_value",
                                "scale_shape", "weight_value", "offset", "device"]))
def test_rectified_operators(data, rows, classes, dim, device, layout, dtypes, op, mistake):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    a_dtype, w_dtype = dtypes
    weight = torch.randn(classes, dim, generator=g, dtype=torch.float64).to(w_dtype).to(device)
    scale = (torch.rand(dim, generator=g, dtype=torch.float64) + 0.2).to(w_dtype).to(device)
    zero_mass = torch.rand(dim, generator=g, dtype=torch.float64).to(w_dtype).to(device)
    a = torch.relu(torch.randn(rows, dim, generator=g, dtype=torch.float64)).to(a_dtype).to(device)
    labels = torch.randint(0, classes, (rows,), generator=g).to(device)
    offset, named = 0, None
    uses_labels, uses_a = op in ("sample", "log_prob", "backward"), op in ("log_prob", "log_prob_all")
    if mistake == "label_range" and rows > 0 and uses_labels:
        labels[0], named = classes + 2, "labels"
    elif mistake in ("negative_a", "nan_a") and rows > 0 and uses_a:
        a[rows // 2, dim // 2] = -1.0 if mistake == "negative_a" else math.nan
        named = "a"
    elif mistake == "scale_value":
        scale[dim - 1], named = data.draw(st.sampled_from([0.0, -1.0, math.inf, math.nan])), "scale"
    elif mistake == "zero_mass_value":
        zero_mass[0], named = data.draw(st.sampled_from([-0.5, math.inf, math.nan])), "zero_mass"
    elif mistake == "scale_shape":
        scale, named = scale[None], "scale"
    elif mistake == "weight_value" and op == "sample":
        weight[classes - 1, 0], named = math.inf, "weight"
    elif mistake == "offset" and op == "sample":
        offset, named = -5, "offset"
    elif mistake == "device" and other_device(device) is not None:
        zero_mass, named = zero_mass.to(other_device(device)), "zero_mass"
    values_read = rows > 0 or op == "log_partition"  # an empty batch reads no values to check
    if mistake in ("label_range", "negative_a", "nan_a", "scale_value", "zero_mass_value", "weight_value") \
            and not values_read:
        named = None
    mistake = mistake if named is not None else None
    a = laid_out(a, layout)
    if op == "sample":
        out = expect(lambda: ops.rectified_sample(weight, scale, zero_mass, labels, 2**63 + 1, offset), mistake, named)
        shape = (rows, dim)
    elif op == "log_prob":
        out = expect(lambda: ops.rectified_log_prob(a, weight, scale, zero_mass, torch.zeros_like(weight[:, 0]), labels),
                     mistake, named)
        shape = (rows,)
    elif op == "log_prob_all":
        out = expect(lambda: ops.rectified_log_prob_all(a, weight, scale, zero_mass, torch.zeros_like(weight[:, 0])),
                     mistake, named)
        shape = (rows, classes)
    elif op == "log_partition":
        out = expect(lambda: ops.rectified_log_partition(weight, scale, zero_mass), mistake, named)
        shape = (classes,)
    else:
        backward = torch.ops.penact.rectified_log_prob_backward.default
        grad = torch.ones(rows, dtype=w_dtype, device=device)
        result = expect(lambda: backward(grad, a, weight, scale, zero_mass, labels, True, True, True, True),
                        mistake, named)
        out, shape = (None if result is None else result[0]), (rows, dim)
    if out is not None:
        assert out.shape == shape and out.device.type == device


@seed(SEED)
@FUZZ
@given(data=st.data(), size=ROWS, device=DEVICE,
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       op=st.sampled_from(["log_bessel_iv", "bessel_iv_ratio", "vmf_log_normalizer", "cosine_kappa_grad"]),
       mistake=st.sampled_from([None, "shape", "int_dtype", "dim", "device", "bad_values"]))
def test_elementwise_operators(data, size, device, dtype, op, mistake):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    values = (torch.rand(3, size, generator=g, dtype=torch.float64) * 20).to(dtype).to(device)
    order, x, third = values
    dim, named = 7, None
    if mistake == "shape":
        x, named = x[None, :].expand(2, size), ("order" if op in ("log_bessel_iv", "bessel_iv_ratio") else
                                                "t, sine and kappa" if op == "cosine_kappa_grad" else None)
    elif mistake == "int_dtype":
        x, named = x.to(torch.int64), ("kappa" if op == "vmf_log_normalizer" else "sine" if op == "cosine_kappa_grad"
                                       else "x")
    elif mistake == "dim" and op in ("vmf_log_normalizer", "cosine_kappa_grad"):
        dim, named = 1, "dim"
    elif mistake == "device" and other_device(device) is not None and op != "vmf_log_normalizer":
        x, named = x.to(other_device(device)), ("x" if op in ("log_bessel_iv", "bessel_iv_ratio") else "sine")
    elif mistake == "bad_values" and size > 0:
        x[0] = data.draw(st.sampled_from([math.nan, math.inf, -1.0]))  # documented: NaN or inf, no error
    mistake = mistake if named is not None else None
    calls = {"log_bessel_iv": lambda: torch.ops.penact.log_bessel_iv(order, x),
             "bessel_iv_ratio": lambda: torch.ops.penact.bessel_iv_ratio(order, x),
             "vmf_log_normalizer": lambda: ops.vmf_log_normalizer(dim, x),
             "cosine_kappa_grad": lambda: torch.ops.penact.vmf_cosine_kappa_grad(third.clamp(-1, 1), x, order, dim)}
    out = expect(calls[op], mistake, named)
    if out is not None:
        assert out.shape == x.shape and out.device.type == device
