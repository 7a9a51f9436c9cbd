"""Ahead-of-time compilation of every Triton kernel for sm_80/sm_90 (python -m tools.aot)."""

import os
import subprocess
import sys

import pytest
import torch

import triton.language as tl

from prac_dist.kernels import projection, rmsnorm, swiglu  # noqa: E402
from tools import aot  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.run([sys.executable, "-m", "tools.aot", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_layer_launches_reach_every_kernel_of_the_package():
    # Every *_kernel function in the kernel modules is launched by some launcher the tool runs:
    # a new kernel without a launch here would go uncompiled.
    defined = aot.triton_kernels()
    assert {projection._project_kernel, rmsnorm._rmsnorm_backward_kernel, swiglu._swiglu_project_kernel} <= defined
    launched = {launch.kernel for _, launch in aot._layer_launches(768, 2048, torch.bfloat16, 4096)}
    assert defined and launched == defined


def test_layer_shapes_are_the_planner_presets():
    from prac_dist.models.shapes import PRESETS

    for name, (hidden, ffn) in aot.LAYER_SHAPES.items():
        assert (PRESETS[name].hidden, PRESETS[name].ffn) == (hidden, ffn), name


def test_recorded_block_sizes_are_the_launchers_own():
    # The 64x64x32 tiles and the bf16 tensor-core branch come from the launcher, not from this tool.
    launches = [launch for label, launch in aot._layer_launches(768, 2048, torch.bfloat16, 4096)
                if launch.kernel is projection._project_kernel]
    kw = dict(launches[0].kwargs)
    assert (kw["BLOCK_M"], kw["BLOCK_R"], kw["BLOCK_K"], kw["DOT_IN_INPUT_DTYPE"]) == (64, 64, 32, True)
    # And the launchers are restored afterwards.
    assert not isinstance(projection.jitted(projection._project_kernel), aot._Recorder)


def _bad_dot_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))


def test_a_kernel_the_compiler_rejects_is_a_failed_row():
    # The interpreter runs a dot of 8 x 8 tiles; the GPU compiler needs every side >= 16.
    t = torch.empty((8, 8), dtype=torch.float16, device="meta")
    launch = aot.Launch(_bad_dot_kernel, (t, t, t), (("BLOCK", 8),))
    row = aot.judge(aot.Row("bad", 90, "x", "fp16", *aot.compile_launch(launch, 90)))
    assert not row.ok and row.status.startswith("error:")


def test_spills_and_shared_memory_over_the_limit_fail():
    assert aot.judge(aot.Row("k", 80, "s", "bf16", 64, 0, aot.MAX_SHARED_BYTES[80])).ok
    assert not aot.judge(aot.Row("k", 80, "s", "bf16", 255, 16, 1024)).ok
    over = aot.judge(aot.Row("k", 80, "s", "bf16", 64, 0, aot.MAX_SHARED_BYTES[80] + 1))
    assert over.status.startswith("shared") and not over.ok
    # 200 KiB fits an H100 block (227 KiB) but not an A100 one (163 KiB).
    assert aot.judge(aot.Row("k", 90, "s", "bf16", 64, 0, 200 * 1024)).ok
    assert not aot.judge(aot.Row("k", 80, "s", "bf16", 64, 0, 200 * 1024)).ok


@pytest.mark.slow
def test_cli_one_shape_compiles_for_sm90():
    # 12 compilations, ~20 s on a loaded 2-core machine; the full matrix below covers it in CI too.
    out = _cli("--arch", "90", "--shapes", "llama_130m", "--dtypes", "bf16")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if "| sm_90 |" in line]
    assert len(rows) == 12 and all(line.rstrip(" |").endswith("compiled") for line in rows)


@pytest.mark.parametrize("args,match", [
    (("--arch", "75"), "--arch '75'"),
    (("--dtypes", "fp8"), "--dtypes 'fp8'"),
    (("--shapes", "llama_3b"), "--shapes 'llama_3b'"),
])
def test_cli_bad_arguments_exit_2_naming_the_value(args, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        aot.main(list(args))
    assert exit_.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90_at_llama_shapes():
    # What CI checks: LLaMA-130M/1B/7B x fp32/bf16/fp16 x sm_80/sm_90, no error, spill or shared overflow.
    out = _cli()
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert out.stdout.count("| compiled |") == 2 * 3 * 3 * 12
