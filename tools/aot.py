"""Compile every Triton kernel of the package ahead of time, for real GPUs, on a machine without one.

    python -m tools.aot [--arch 80,90] [--shapes llama_130m,llama_1b,llama_7b]
                                    [--dtypes fp32,bf16,fp16] [--tokens 4096]

Triton's CPU interpreter accepts programs the GPU compiler rejects (tile shapes, dtypes, shared
memory, register pressure), so the interpreter tests alone do not prove a kernel builds. This runs
the package's own host launchers on meta tensors of a LLaMA layer's shapes with `jitted` swapped for
a recorder: every launch they would make is captured with its real arguments and constexpr block
sizes (no second copy of those constants here), then built down to cubin with `triton.compile` for
each architecture (ptxas ships in the triton wheel). One row per kernel x arch x shape x dtype:
registers, stack/local bytes (spills), shared memory, and "compiled" or the error. The exit status is
1 when a kernel fails to compile, spills, or asks for more shared memory than the architecture gives
one block; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from prac_dist.kernels.dispatch import interpreting

__all__ = ["MAX_SHARED_BYTES", "LAYER_SHAPES", "Launch", "Row", "kernel_modules", "triton_kernels", "record_launches", "compile_launch", "run", "main"]

# Largest shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin), bytes:
# A100 (sm_80) 163 KiB of its 164 KiB per SM; RTX 30xx/40xx (sm_86/89) 99 KiB; H100/H200 (sm_90) 227 KiB.
MAX_SHARED_BYTES: Dict[int, int] = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int8: "*i8",
        torch.int32: "*i32", torch.int64: "*i64"}
_OPTIONS = ("num_warps", "num_stages", "num_ctas")  # launch keywords that are compile options, not arguments
# (hidden, ffn) of the LLaMA shapes in prac_dist/models/shapes.py (tests/kernels/test_aot.py checks
# these agree with it).
LAYER_SHAPES: Dict[str, Tuple[int, int]] = {"llama_130m": (768, 2048), "llama_1b": (2048, 5461),
                                             "llama_7b": (4096, 11008)}
_EPS = 1e-6


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a host launcher makes it: the raw kernel function, its arguments and options."""

    kernel: Callable
    args: Tuple
    kwargs: Tuple[Tuple[str, object], ...]


@dataclass
class Row:
    kernel: str
    arch: int
    shape: str
    dtype: str
    registers: Optional[int] = None
    spill_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    status: str = "compiled"

    @property
    def ok(self) -> bool:
        return self.status == "compiled"


class _Recorder:
    """Stands in for `jitted(fn)`: `[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self, fn: Callable, sink: List[Launch]):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.fn, args, tuple(sorted(kwargs.items()))))

        return launch


def kernel_modules() -> list:
    """Every module of prac_dist.kernels (the launchers import `jitted` by name, so each is patched)."""
    import importlib
    import pkgutil

    from prac_dist.kernels import __path__ as path

    names = sorted(m.name for m in pkgutil.iter_modules(path) if m.name != "__main__")
    return [importlib.import_module(f"prac_dist.kernels.{name}") for name in names]


def triton_kernels() -> set:
    """The package's Triton kernel functions: plain functions with a `tl.constexpr` parameter."""
    import triton.language as tl

    def is_constexpr(annotation) -> bool:  # a string under `from __future__ import annotations`
        return annotation is tl.constexpr or (isinstance(annotation, str) and annotation.endswith("constexpr"))

    found = set()
    for module in kernel_modules():
        for fn in vars(module).values():
            if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not hasattr(
                    fn, "__prac_device_function__") and any(
                    is_constexpr(p.annotation) for p in inspect.signature(fn).parameters.values()):
                found.add(fn)
    return found


@contextlib.contextmanager
def record_launches() -> Iterator[List[Launch]]:
    """While active, the package's Triton launchers record their launches into the yielded list."""
    modules = [m for m in kernel_modules() if hasattr(m, "jitted")]
    sink: List[Launch] = []
    saved = [m.jitted for m in modules]
    try:
        for m in modules:
            m.jitted = lambda fn: _Recorder(fn, sink)
        yield sink
    finally:
        for m, jit in zip(modules, saved):
            m.jitted = jit


def _layer_launches(hidden: int, ffn: int, dtype: torch.dtype, tokens: int) -> List[Tuple[str, Launch]]:
    """Every launch one LLaMA layer's PRAC ops make (forward and backward, 16- and 8-bit storage)."""
    from prac_dist.config import PRACConfig

    from prac_dist.kernels import projection as P
    from prac_dist.kernels import rmsnorm as R
    from prac_dist.kernels import swiglu as S

    cfg = PRACConfig()  # the default ratios give the Z widths r = r1 + r2 the launches see

    def t(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt, device="meta")

    def rank(n, nonlinear=False):
        return sum(cfg.ranks(n, nonlinear=nonlinear))

    calls = []
    for n in (hidden, ffn):  # q/k/v/o and gate/up read width `hidden`, down_proj reads `ffn`
        r = rank(n)
        calls += [
            (f"project n={n}", lambda n=n, r=r: P._triton_project(t(tokens, n), t(n, r))),
            (f"quantize r={r}", lambda r=r: P._triton_quantize(t(tokens, r), 0)),
            (f"dequantize r={r}", lambda r=r: P._triton_dequantize(t(tokens, r, dt=torch.int8),
                                                                    t(tokens, dt=torch.float32), dtype)),
        ]
    x, w, rstd = t(tokens, hidden), t(hidden), t(tokens, dt=torch.float32)
    g = t(tokens, ffn)
    calls += [
        ("rmsnorm_forward", lambda: R._triton_rmsnorm_forward(x, w, _EPS)),
        ("rmsnorm_backward", lambda: R._triton_rmsnorm_backward(x, x, w, rstd)),
        ("rmsnorm_project", lambda: R._triton_rmsnorm_project(x, w, _EPS, t(hidden, rank(hidden, True)))),
        ("swiglu_forward", lambda: S._triton_swiglu_forward(g, g)),
        ("swiglu_backward", lambda: S._triton_swiglu_backward(g, g, g)),
        ("swiglu_project", lambda: S._triton_swiglu_project(g, g, t(ffn, rank(ffn, True)), t(ffn, rank(ffn, True)))),
    ]
    out = []
    for label, call in calls:
        with record_launches() as sink:
            call()
        out += [(label, launch) for launch in sink]
    return out


def _signature(jit_fn, launch: Launch):
    """Triton signature, constexprs and attrs of a launch, specialised as the JIT specialises at run time."""
    kwargs = dict(launch.kwargs)
    values = dict(zip(jit_fn.arg_names, launch.args))
    values.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
    signature, constexprs, attrs = {}, {}, {}
    for i, (param, name) in enumerate(zip(jit_fn.params, jit_fn.arg_names)):
        value = values[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif torch.is_tensor(value):
            signature[name] = _PTR[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch's allocations are 256-byte aligned
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:  # the JIT turns an integer argument equal to 1 into a constant
                signature[name], constexprs[name] = "constexpr", 1
                continue
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{jit_fn.__name__}: argument {name}={value!r} has no Triton type here")
    options = {k: v for k, v in kwargs.items() if k in _OPTIONS}
    return signature, constexprs, attrs, options


def _resources(cubin: bytes) -> Tuple[int, int, int]:
    """(registers, stack + local bytes, static shared bytes) of a cubin, from the wheel's cuobjdump."""
    from triton.backends.nvidia import compiler as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], check=True, capture_output=True,
                              text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return int(fields["REG"]), int(fields["STACK"]) + int(fields["LOCAL"]), int(fields["SHARED"])


_CACHE: Dict[tuple, Tuple[Optional[int], Optional[int], Optional[int], str]] = {}


def compile_launch(launch: Launch, arch: int) -> Tuple[Optional[int], Optional[int], Optional[int], str]:
    """(registers, spill bytes, shared bytes, "compiled" or the error) of one launch built for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from prac_dist.kernels.dispatch import with_device_functions

    jit_fn = triton.jit(with_device_functions(launch.kernel))
    signature, constexprs, attrs, options = _signature(jit_fn, launch)
    key = (launch.kernel, tuple(signature.items()), tuple(sorted(constexprs.items())), tuple(sorted(attrs)),
           tuple(sorted(options.items())), arch)
    if key not in _CACHE:
        try:
            compiled = triton.compile(ASTSource(jit_fn, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", arch, 32), options=options)
            regs, spills, static = _resources(compiled.asm["cubin"])
            _CACHE[key] = (regs, spills, static + compiled.metadata.shared, "compiled")
        except Exception as exc:  # noqa: BLE001 -- every compiler failure is a row, not a crash
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _CACHE[key] = (None, None, None, f"error: {type(exc).__name__}: {first[:160]}")
    return _CACHE[key]


def judge(row: Row) -> Row:
    """Turn a compiled row into a failure when it spills or exceeds the architecture's shared memory."""
    if row.ok and row.spill_bytes:
        row.status = f"spills {row.spill_bytes} B"
    elif row.ok and row.shared_bytes > MAX_SHARED_BYTES[row.arch]:
        row.status = f"shared {row.shared_bytes} B > {MAX_SHARED_BYTES[row.arch]} B"
    return row


def run(archs: Sequence[int], shapes: Sequence[str], dtypes: Sequence[str], tokens: int) -> List[Row]:
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for label, launch in _layer_launches(*LAYER_SHAPES[shape], _DTYPES[dtype], tokens):
                name = f"{launch.kernel.__name__.strip('_')} ({label})"
                for arch in archs:
                    rows.append(judge(Row(name, arch, shape, dtype, *compile_launch(launch, arch))))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    head = ("kernel", "arch", "shape", "dtype", "regs", "spill B", "shared B", "status")
    body = [(r.kernel, f"sm_{r.arch}", r.shape, r.dtype, *("-" if v is None else str(v) for v in
             (r.registers, r.spill_bytes, r.shared_bytes)), r.status) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |" for line in (head, *body)]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _csv(text: str, accepted: Sequence[str], flag: str) -> List[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in accepted]
    if bad or not items:
        raise SystemExit(_usage_error(f"{flag} {text!r}: accepted is a comma-separated list of {list(accepted)}"))
    return items


def _usage_error(message: str) -> int:
    print(f"tools.aot: error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.aot", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,90 (accepted: "
                        f"{','.join(map(str, MAX_SHARED_BYTES))})")
    parser.add_argument("--shapes", default=",".join(LAYER_SHAPES), help="LLaMA layer shapes (model registry shapes)")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--tokens", type=int, default=4096,
                        help="rows per launch (block sizes stop depending on it from 4096 up)")
    args = parser.parse_args(argv)
    archs = [int(a) for a in _csv(args.arch, [str(a) for a in MAX_SHARED_BYTES], "--arch")]
    shapes = _csv(args.shapes, list(LAYER_SHAPES), "--shapes")
    dtypes = _csv(args.dtypes, list(_DTYPES), "--dtypes")
    if args.tokens < 1:
        return _usage_error(f"--tokens {args.tokens}: accepted is an integer >= 1")
    if interpreting():
        return _usage_error("TRITON_INTERPRET is set: this compiles for GPUs; run it without the interpreter")
    rows = run(archs, shapes, dtypes, args.tokens)
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows)} rows, {len(failed)} failed ({len(_CACHE)} distinct compilations)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
