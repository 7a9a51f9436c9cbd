"""torchtitan with PRAC switched on from its own config (PRACConverter in the registry's converters).

Fast: the converter applies PRAC as the model config is built (the probe follows torchtitan's
forward(tokens, ...)), the PRAC settings travel in the converter's config, a meta-device build is refused
in one line, and attach_prac advances the schedule once per step of torchtitan's OptimizersContainer.
Slow: a 2-rank CPU (gloo) run of the Llama3 debug model (2 blocks) through torchtitan's parallelize
function (full activation checkpointing, per-block torch.compile with aot_eager, FSDP2 over both ranks), OptimizersContainer, LR schedulers and DCP
CheckpointManager (tests/integrations/torchtitan_worker.py): the loss after 30 steps is within 3% of the
same run without PRAC, and a run resumed from the step-15 checkpoint repeats the uninterrupted run's
losses bit for bit.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks._tiny_models import torchtitan_spec
from prac_dist import PRACConfig
from prac_dist.integrations.torchtitan import PRACConverter, attach_prac
from prac_dist.patching import get_prac_state
from prac_dist.validate import ConfigError

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).resolve().parent / "torchtitan_worker.py")


def _converted(prac=PRACConfig()):
    return torchtitan_spec("llama3", converters=[PRACConverter.Config(prac=prac)])


def test_converter_applies_prac_at_build():
    spec = _converted(PRACConfig(principal_ratio=0.25, random_ratio=0.25))
    assert spec.model.prac.principal_ratio == 0.25 and spec.model.to_dict()["prac"]["principal_ratio"] == 0.25
    model = spec.model.build()
    state = get_prac_state(model)
    assert state is not None and state.config.principal_ratio == 0.25
    assert "layers.0.attention.qkv_linear.wqkv" in state.compressors
    assert {s.kind for s in state.discovery.sites} == {"rms", "swiglu"}
    logits = model(torch.randint(0, 2048, (2, 16)))
    assert logits.shape == (2, 16, 2048) and torch.isfinite(logits).all()


def test_meta_build_is_one_line():
    spec = _converted()
    with torch.device("meta"), pytest.raises(ConfigError, match=r"^PRACConverter: the model was built on the "
                                                                r"meta device[^\n]*$"):
        spec.model.build()


def test_schedule_advances_once_per_optimizer_step():
    from torchtitan.components.optimizer import default_adamw

    model = _converted().model.build()
    optimizers = default_adamw(lr=1e-3).build(model_parts=[model])
    attach_prac(model, optimizers)
    for _ in range(3):
        model(torch.randint(0, 2048, (2, 16))).float().mean().backward()
        optimizers.step()
        optimizers.zero_grad()
    assert get_prac_state(model).step == 3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_rank_training_and_bit_exact_resume(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = tmp_path / "losses.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           WORKER, "--steps", "30", "--save-at", "15", "--compile", "--folder", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    losses = json.loads(out.read_text())
    base, prac, resumed = losses["baseline"], losses["prac"], losses["resumed"]
    assert len(base) == len(prac) == 30 and len(resumed) == 15
    assert base[-1] < 0.8 * base[0], f"the baseline did not learn: {base[0]:.3f} -> {base[-1]:.3f}"
    # Last 5 steps averaged: one step's loss moves with its batch; PRAC's loss lies within 3% of the baseline's.
    tail_base, tail_prac = sum(base[-5:]) / 5, sum(prac[-5:]) / 5
    assert abs(tail_prac - tail_base) <= 0.03 * tail_base, (tail_base, tail_prac)
    assert resumed == prac[15:], "the resumed run does not repeat the uninterrupted one bit for bit"
