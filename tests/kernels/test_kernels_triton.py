"""Every Triton kernel equals its PyTorch reference: run in a fresh interpreter process.

Why a subprocess: Triton decides interpreted-vs-compiled when `triton.jit` wraps a
function, and that includes its own library functions (tl.sum, tl.rand, ...), which
are wrapped when `import triton` runs. TRITON_INTERPRET=1 therefore has to be set
before the *first* `import triton` in the process, and by the time pytest reaches this
folder other tests have imported transformers, which imports triton. A conftest that
sets the variable would work only when this folder runs first; a child process with
the variable set works in any order and leaves the parent's environment alone.

On a machine with a GPU the child runs the compiled kernels on CUDA instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
import triton  # noqa: E402,F401 - the test extra installs it; a missing triton fails, never skips


@pytest.mark.slow  # Triton interpreter in a subprocess: 40-75 s each
@pytest.mark.parametrize("module", ["interp_projection.py", "interp_norm_act.py"])
def test_triton_kernels_match_references(module):
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", str(HERE / module)]
    proc = subprocess.run(cmd, cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-6000:]}"
    # A child that skipped everything (e.g. the variable did not reach it) must not pass.
    assert " passed" in summary and "skipped" not in summary, summary
