"""Choosing between the Triton kernels and their PyTorch references.

Triton decides at *decoration* time whether a kernel runs compiled (GPU) or in
its CPU interpreter: `triton.jit` reads `TRITON_INTERPRET` when it wraps the
function. A module-level `@triton.jit` would therefore freeze that choice at
import, and whichever test imported `prac_dist` first would decide it for
everyone. Our kernels are plain functions, wrapped here on first launch and
cached per mode, so `TRITON_INTERPRET=1` takes effect whenever it is set.
"""

from __future__ import annotations

import functools
import os
import types
from typing import Callable, Dict, Tuple

import torch

__all__ = ["triton_available", "resolve_kernel", "device_function", "jitted", "with_device_functions"]

_KERNELS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when `import triton` succeeds (it is an optional dependency)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import
        return False
    return True


def interpreting() -> bool:
    """True when Triton's CPU interpreter is switched on (read now, not at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def resolve_kernel(kernel: str, device) -> str:
    """'triton' or 'torch' for `kernel` ('auto' | 'triton' | 'torch') on `device`.

    'auto' picks Triton on CUDA when it imports and PyTorch elsewhere (the CPU
    interpreter is for tests: it runs the same kernel ~1000x slower).
    'triton' on a device Triton cannot compile for is an error unless
    TRITON_INTERPRET=1 is set, in which case the interpreter runs it.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kernel={kernel!r}: accepted is one of {list(_KERNELS)}")
    device = torch.device(device)
    if kernel == "torch":
        return "torch"
    if kernel == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise ValueError(f"kernel='triton' on device {device}: triton is not installed (pip install triton)")
    if device.type == "cuda" or interpreting():
        return "triton"
    raise ValueError(
        f"kernel='triton' on device {device}: Triton compiles for CUDA devices only; "
        f"use kernel='auto' or 'torch' here, or set TRITON_INTERPRET=1 (tests) to run its CPU interpreter"
    )


_JITTED: Dict[Tuple[Callable, bool], Callable] = {}


def jitted(fn: Callable) -> Callable:
    """`triton.jit(fn)`, wrapped for the current mode (compiled or interpreted) and cached."""
    key = (fn, interpreting())
    if key not in _JITTED:
        import triton

        if key[1]:
            _check_interpreter()
        _JITTED[key] = triton.jit(with_device_functions(fn))
    return _JITTED[key]


def device_function(fn: Callable) -> Callable:
    """Mark `fn` as a Triton helper that kernels call. It stays a plain function, like the kernels: each
    kernel gets it jitted in the kernel's own mode (compiled or interpreted) when the kernel is jitted."""
    fn.__prac_device_function__ = True
    return fn


def with_device_functions(fn: Callable) -> Callable:
    """`fn` with every device function it names replaced by that function jitted in the current mode."""
    helpers = {name: jitted(obj) for name, obj in fn.__globals__.items()
               if name in fn.__code__.co_names and getattr(obj, "__prac_device_function__", False)}
    if not helpers:
        return fn
    # Same code object, so Triton still reads the source from the kernel's file; only the globals differ.
    clone = types.FunctionType(fn.__code__, {**fn.__globals__, **helpers}, fn.__name__, fn.__defaults__,
                               fn.__closure__)
    return functools.update_wrapper(clone, fn)


def _loop_to(x_ptr, n):
    for i in range(0, n, 1):  # a loop bound that arrives as a runtime scalar, as in every kernel here
        pass


@functools.lru_cache(maxsize=1)
def _check_interpreter() -> None:
    """Fail in one line where Triton's interpreter cannot run our kernels. Triton 3.6's interpreter turns
    a scalar argument into a Python int with int() of a 1-element array, which numpy 2.4 made an error."""
    import numpy
    import triton

    try:
        triton.jit(_loop_to)[(1,)](torch.zeros(1), 2)
    except Exception as exc:  # InterpreterError wraps the TypeError
        raise RuntimeError(
            f"Triton {triton.__version__}'s CPU interpreter cannot run a loop over a scalar argument with numpy "
            f"{numpy.__version__} ({exc}): install numpy<2.4, or a triton whose interpreter supports it (3.9 does)"
        ) from exc
