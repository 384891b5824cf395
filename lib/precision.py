"""Mixed precision: which one a run uses, its autocast region, and the work kept out of it.

Every script that runs a network takes --precision {auto,bf16,fp16,fp32}. auto is bf16 autocast on a
CUDA GPU that has bf16 (Ampere and later), fp16 autocast with the gradient scaler on one that has not
(the V100 the authors trained on), fp32 on the CPU, where the authors' results were made. bf16 and fp16
run on the CPU too (this is how the test suite exercises the GPU's default); bf16 asked of a GPU
without it is refused in one line.

Autocast runs matrix products and convolutions in half precision wherever it is on, also inside
code that only groups, ranks or scores (a k-means assignment, a kNN top-k, a cluster-quality score):
bf16 keeps 8 significant bits, so nearby similarities tie and assignments flip. Such functions are
wrapped in @float32: autocast off, half-precision tensor arguments promoted to float32.
"""
import contextlib
import functools

import torch

CHOICES = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(Exception):
    """A precision the device cannot run."""


def bf16_supported(device):
    """Whether the device computes in bf16: every CPU torch runs on (emulated where there is no AMX or
    AVX512-BF16, slowly), a CUDA GPU of compute capability 8.0 or more."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def resolve(requested, device, bf16_ok=None):
    """(precision, why) for --precision `requested` on `device`: precision is bf16, fp16 or fp32; why
    says how auto chose, or is "flag". bf16_ok overrides bf16_supported(device) (tests stand in a V100)."""
    bf16_ok = bf16_supported(device) if bf16_ok is None else bf16_ok
    if requested not in CHOICES:
        raise PrecisionError(f"unknown precision {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested == "auto":
        if device.type != "cuda":
            return "fp32", "auto: fp32 on the CPU"
        if bf16_ok:
            return "bf16", "auto: bf16 autocast on this GPU"
        return "fp16", "auto: this GPU has no bf16 (before Ampere, e.g. a V100): fp16 autocast with the gradient scaler"
    if requested == "bf16" and not bf16_ok:
        raise PrecisionError("--precision bf16: this GPU has no bf16 (compute capability below 8.0, e.g. a V100); "
                             "use --precision fp16 (with the gradient scaler) or auto, which picks it")
    return requested, "flag"


def autocast(device, precision):
    """The autocast region of `precision` on `device` (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def add_flag(parser):
    """--precision, the same words on every script."""
    parser.add_argument("--precision", default="auto", choices=CHOICES,
                        help="auto: bf16 autocast on a GPU with bf16, fp16 with the gradient scaler on one without "
                             "(V100), fp32 on the CPU. Grouping, kNN, clustering scores and the linear probe's "
                             "loss compute in float32 whatever this says")


def _promoted(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.element_size() < 4:
        return value.float()
    return value


def float32(fn):
    """fn with autocast off on the devices of its tensor arguments, and their bf16 / fp16 values promoted
    to float32 (float32 and float64 stay as they are; autograd flows through the promotion)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [_promoted(a) for a in args]
        kwargs = {k: _promoted(v) for k, v in kwargs.items()}
        devices = {v.device.type for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)}
        with contextlib.ExitStack() as stack:
            for device_type in sorted(devices):
                stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(*args, **kwargs)
    return wrapper
