"""prac_dist.kernels.dispatch checks once that Triton's CPU interpreter can run our kernels' loops and, where
it cannot (triton 3.6 with numpy >= 2.4), says what to install instead of failing deep inside a kernel."""

import pytest
import torch
import triton

from prac_dist.kernels import dispatch


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch._check_interpreter.cache_clear()
    yield
    dispatch._check_interpreter.cache_clear()


def test_this_stack_runs_a_scalar_loop_bound(interpret):
    dispatch._check_interpreter()  # raises where the interpreter cannot
    z = torch.zeros(1)
    triton.jit(dispatch._loop_to)[(1,)](z, 3)


def test_a_broken_interpreter_is_one_clear_error(interpret, monkeypatch):
    class Broken:
        def __getitem__(self, grid):
            def launch(*args):
                raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
            return launch

    monkeypatch.setattr(triton, "jit", lambda fn: Broken())
    with pytest.raises(RuntimeError, match=r"install numpy<2\.4"):
        dispatch._check_interpreter()
