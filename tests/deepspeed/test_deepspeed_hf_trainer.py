"""HF Trainer with TrainingArguments(deepspeed=...) and a "prac" section, via PRACTrainerCallback.

One process (world size 1, ZeRO-2 on CPU): the Trainer path is the same code on every rank, and a
second DeepSpeed launch would add ~40 s for no new coverage (two-rank runs are in test_deepspeed_multirank).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import accelerate  # noqa: F401,E402
import deepspeed  # noqa: F401,E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_PORT=str(port))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(HERE / "hf_trainer_worker.py"), str(tmp / "out.json"),
                           str(tmp / "work")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.slow
def test_trainer_trains_with_prac_modules_in_place(trainer_run):
    run = trainer_run["straight"]
    assert run["engine_is_deepspeed"] == "DeepSpeedEngine"
    assert run["engine_q_proj"] == "PRACLinear"  # inside the engine Accelerate built
    assert [p["q_proj"] for p in run["probe"]] == ["PRACLinear"] * 4
    assert [p["prac_step"] for p in run["probe"]] == [1, 2, 3, 4]  # one schedule step per optimizer step
    losses = run["losses"]
    assert losses["4"] < losses["1"] - 0.2, losses
    assert "prac_rank00000.pt" in run["checkpoint2_files"]


@pytest.mark.slow
def test_trainer_resume_restores_prac_state(trainer_run):
    straight, resumed = trainer_run["straight"], trainer_run["resumed"]
    assert [p["prac_step"] for p in resumed["probe"]] == [3, 4]
    for step in ("3", "4"):
        assert resumed["losses"][step] == straight["losses"][step]
