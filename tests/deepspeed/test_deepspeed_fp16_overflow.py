"""DeepSpeed fp16 overflow-skipped steps: the PRAC schedule counts them (it follows engine.global_steps);
DeepSpeed's LR scheduler does not; the weights do not move. docs/deepspeed.md, "fp16 overflow"."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import deepspeed  # noqa: F401,E402

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a DeepSpeed engine process, 9 steps
@pytest.mark.parametrize("stage", [2])
def test_overflow_skipped_steps_advance_the_prac_schedule(stage):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_PORT=str(_free_port()),
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fp16_overflow_worker.py")), str(stage), "9"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 9
    # Loss scale 2^24 overflows the first steps (measured: 6, halving 2^24 -> 2^18), then steps apply.
    kinds, prev = set(), 0
    for i, r in enumerate(rows, start=1):
        skipped, prev = r["skipped_steps"] > prev, r["skipped_steps"]
        kinds.add(skipped)
        assert r["global_steps"] == i and r["prac_step"] == i  # one schedule step per optimizer step, skipped or not
        assert r["scheduler_steps"] == i - r["skipped_steps"]  # DeepSpeed steps the LR schedule only when applied
        assert r["weights_moved"] is not skipped
    assert kinds == {True, False}, rows  # both kinds of step happened
