"""Meta-device build and per-shard initialisation (prac_dist/train/meta_init.py).

The claim: a rank that initialises only its rows of a parameter writes exactly the values the
single-process build has there, so the FSDP path (shard on meta, then materialise) starts from the
same weights as the CPU path, bit for bit, and a rank's host memory grows by about its shard only.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prac_dist.train import meta_init
from prac_dist.train.config import ModelConfig
from prac_dist.train.models import build_model

ROOT = Path(__file__).resolve().parents[2]


def _tiny(**overrides):
    return ModelConfig(preset="llama_tiny", overrides={"num_hidden_layers": 2, **overrides})


def test_same_seed_same_weights_and_other_seed_differs():
    a, b, c = (build_model(_tiny(), 64, seed) for seed in (0, 0, 1))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.dim() == 2:
            assert not torch.equal(pa, pc), name
    assert a.lm_head.weight is a.model.embed_tokens.weight  # llama_tiny's tied embedding survives to_empty


def test_distributions_are_hf_llama_init():
    model = build_model(ModelConfig(preset="llama_tiny"), 64, 0)
    std = model.config.initializer_range
    q = model.model.layers[0].self_attn.q_proj.weight
    # 16,384 draws of N(0, 0.02): the sample std is within 3% of 0.02 with probability > 1 - 1e-9.
    assert abs(q.std().item() - std) < 0.03 * std
    assert abs(q.mean().item()) < 6 * std / q.numel() ** 0.5
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    # RoPE's buffer kept the value its constructor computed (buffers are never on meta).
    rotary = model.model.rotary_emb
    expected = 1.0 / rotary.config.rope_parameters["rope_theta"] ** (
        torch.arange(0, rotary.inv_freq.numel() * 2, 2, dtype=torch.int64).float() / (2 * rotary.inv_freq.numel()))
    assert torch.allclose(rotary.inv_freq, expected)


def test_materialize_false_leaves_parameters_on_meta():
    model = build_model(_tiny(), 64, 0, materialize=False)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    meta_init.materialize(model, torch.device("cpu"))
    reference = build_model(_tiny(), 64, 0)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, r), name


@pytest.mark.parametrize("rows,split", [(50257, 25129), (341, 171), (5, 1)])
def test_any_row_split_draws_the_full_tensors_rows(rows, split):
    """A shard starting at any row (also mid-block) equals the same rows of the whole tensor."""
    rule = meta_init._Rule("normal", std=0.02, padding_idx=3)
    shape = (rows, 7)
    full = torch.empty(shape)
    meta_init._fill(full, rule, 5, "w", 0, shape)
    top, bottom = torch.empty(split, 7), torch.empty(rows - split, 7)
    meta_init._fill(top, rule, 5, "w", 0, shape)
    meta_init._fill(bottom, rule, 5, "w", split, shape)
    assert torch.equal(torch.cat([top, bottom]), full)
    assert torch.equal(full[3], torch.zeros(7))


@pytest.mark.parametrize("shape,parts", [((50257, 7), 2), ((341, 300), 3), ((5, 1), 4), ((4097,), 2), ((70000,), 3)])
@pytest.mark.parametrize("kind", ["normal", "ones", "zeros"])
def test_flat_partitions_equal_the_flattened_tensor(shape, parts, kind):
    """ZeRO-3's split (equal flat partitions, cut mid-row and mid-block, the last one padded with zeros)
    gives the whole tensor's values: what the single-process build draws, bit for bit."""
    rule = meta_init._Rule(kind, std=0.02, padding_idx=3 if kind == "normal" else -1)
    full = torch.empty(shape)
    meta_init._fill(full, rule, 5, "w", 0, shape)
    numel = full.numel()
    size = -(-numel // parts)
    flats = [torch.full((size,), float("nan")) for _ in range(parts)]
    for k, flat in enumerate(flats):
        meta_init._fill_flat(flat, rule, 5, "w", k * size, shape)
    joined = torch.cat(flats)
    assert torch.equal(joined[:numel], full.view(-1))
    assert torch.equal(joined[numel:], torch.zeros(parts * size - numel))


def test_unknown_parameter_is_an_error_naming_it():
    model = build_model(_tiny(), 64, 0, materialize=False)
    model.model.extra = torch.nn.Parameter(torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match=r"model\.extra"):
        meta_init.materialize(model, torch.device("cpu"))


def _launch(cmd, env, tmp_path, out):
    """Run a 2-rank launcher job (killed as a group after 600 s); the results row it wrote."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-5000:]
    return json.loads(out.read_text())["rows"][0]


@pytest.mark.slow
def test_two_ranks_shard_on_meta_match_cpu_build_and_hold_half(tmp_path):
    """torchrun 2 ranks, llama_60m with PRACConfig(): gathered weights == CPU build; growth <= 0.6x fp32 model."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "init_memory.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "benchmarks.memory.init_memory", "--preset", "llama_60m", "--compare", "--out", str(out)]
    row = _launch(cmd, env, tmp_path, out)
    assert row["compare"]["identical"], row["compare"]
    # Each rank holds half the weights (0.5) plus one 64K-element block of draws and module objects.
    assert row["ratio"] <= 0.6, row


@pytest.mark.slow
def test_two_ranks_zero3_partition_on_build_match_cpu_build(tmp_path):
    """deepspeed launcher, 2 CPU ranks, ZeRO-3 (configs/ds/zero3.json), llama_60m, building and partitioning
    (DeepSpeedBackend.partition, meta_init.materialize_each): the parameters, gathered, equal the
    single-process CPU build bit for bit, and no rank holds more than its partitions plus the one whole
    parameter zero.Init broadcasts (the 65 MB embedding; rank 0 only reads it)."""
    import shutil

    launcher = shutil.which("deepspeed") or pytest.skip("no deepspeed launcher")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "init_memory.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    # --module: the script runs as `python -m`, so benchmarks/ is imported as a package, never put on sys.path.
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(port), "--module", "benchmarks.memory.init_memory",
           "--preset", "llama_60m", "--deepspeed", str(ROOT / "configs" / "ds" / "zero3.json"), "--shard-only",
           "--compare", "--out", str(out)]
    row = _launch(cmd, env, tmp_path, out)
    assert row["backend"] == "deepspeed:zero3.json" and row["phase"] == "build+shard"
    assert row["compare"]["identical"], row["compare"]
    # Each rank holds half of every parameter (ZeRO-3 pads to a multiple of the world size).
    full = row["full_fp32_bytes"]
    assert all(0.5 * full <= r["local_param_bytes"] <= 0.5 * full + 4096 for r in row["ranks"]), row["ranks"]
    # Beyond both, the worst rank added 29 MB at llama_60m and at llama_1b alike (DeepSpeed's buffers, module
    # objects: not model-sized), so 48 MB of slack. Filling whole tensors and keeping the allocator's
    # leftovers measured 0.69 x the model at llama_1b, 0.14 x over this bound.
    for r in row["ranks"]:
        assert r["peak_above_start_bytes"] <= r["local_param_bytes"] + r["largest_param_bytes"] + (48 << 20), r


def test_materialize_each_equals_materialize_and_keeps_ties():
    """One parameter at a time (the ZeRO-3 path) gives materialize's values; tied slots share one Parameter."""
    seen = []

    def whole(param, fill):
        seen.append(param)
        fill(param.data.view(-1), 0)

    model = build_model(_tiny(), 64, 0, materialize=False)
    meta_init.materialize_each(model, torch.device("cpu"), whole)
    reference = build_model(_tiny(), 64, 0)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, r), name
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(seen) == len(list(model.parameters()))  # each unique parameter converted once
