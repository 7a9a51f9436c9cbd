"""Accelerate + PRAC through prepare_accelerate: schedule per optimizer step, save_state/load_state per rank.

Each run trains 4 optimizer steps of 2 micro-batches, saves at step 2, then load_state(step 2)
and replays steps 3-4: the replayed losses must equal the first ones bit for bit (CPU).
Accelerate enables FSDP only on accelerators, so its FSDP2 plugin is not run here (README).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import accelerate  # noqa: F401,E402

from prac_dist import PRACConfig  # noqa: E402
from prac_dist.integrations import deepspeed_section, prepare_accelerate  # noqa: E402

HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, mode: str, processes: int) -> list:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PRAC_WORKDIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = str(tmp_path / "out")
    worker = str(HERE / "accelerate_worker.py")
    if mode == "plain":
        command = [sys.executable, worker, out, mode]
    else:
        sys.path.insert(0, str(HERE))
        import accelerate_worker

        accelerate_worker.ds_json(str(tmp_path / "ds.json"))
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_port()), "--use_deepspeed",
                   "--deepspeed_config_file", str(tmp_path / "ds.json"), worker, out, mode]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(processes)]


def check(results, engine):
    for r in results:
        assert r["engine"] == engine
        assert r["steps"] == [1, 2, 3, 4]  # once per optimizer step, not per micro-batch
        assert r["replay_steps"] == [3, 4]
        assert f"prac_rank{r['rank']:05d}.pt" in r["files"]
        assert r["replay"] == r["later"]


@pytest.mark.slow
def test_plain_one_process(tmp_path):
    check(launch(tmp_path, "plain", 1), "LlamaForCausalLM")


@pytest.mark.slow
def test_deepspeed_plugin_one_process(tmp_path):
    check(launch(tmp_path, "deepspeed", 1), "DeepSpeedEngine")


@pytest.mark.slow
def test_deepspeed_plugin_two_processes(tmp_path):
    results = launch(tmp_path, "deepspeed", 2)
    check(results, "DeepSpeedEngine")
    assert [r["world"] for r in results] == [2, 2]
    assert results[0]["first"] != results[1]["first"]  # each rank its own data, its own PRAC state


def _accelerator(ds_config):
    plugin = None if ds_config is None else SimpleNamespace(deepspeed_config=ds_config)
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))


def test_section_comes_from_the_deepspeed_plugin():
    assert deepspeed_section(_accelerator(None)) is None
    assert deepspeed_section(_accelerator({"train_batch_size": 2})) is None
    section = deepspeed_section(_accelerator({"prac": {"principal_ratio": 0.25}}))
    assert section.enabled and section.config.principal_ratio == 0.25
    with pytest.raises(ValueError, match="prac.principal_ratoi"):
        deepspeed_section(_accelerator({"prac": {"principal_ratoi": 0.25}}))


def test_one_source_of_settings(make_llama):
    accelerator = _accelerator({"prac": {}})
    with pytest.raises(ValueError, match="both a PRACConfig and an enabled DeepSpeed 'prac' section"):
        prepare_accelerate(accelerator, make_llama(), config=PRACConfig())
    with pytest.raises(ValueError, match="nothing to apply"):
        prepare_accelerate(_accelerator(None), make_llama())
