"""One per-rank PRAC state file for every engine (prac_dist.checkpoint.prac_state): the FSDP2 checkpoint reads what
the DeepSpeed route wrote and the DeepSpeed route reads what an FSDP2 checkpoint wrote; state saved by
another world size is refused naming both sizes; an unreadable file is named in one line."""

import pytest
import torch

import prac_dist.checkpoint.prac_state as state_file
from prac_dist import PRACConfig, apply_prac, prac_state_dict, step
from prac_dist.checkpoint import CheckpointError, load_prac_state, save_prac_state
from prac_dist.fsdp import load_checkpoint, save_checkpoint

# Refreshes every 1-2 steps and 16-bit projected storage, so the saved state holds Q1, Q2 and counters.
_CFG = PRACConfig(seed=1, principal_update_interval=2, random_update_interval=1, linear_storage="project")


def _trained(make_llama, steps):
    """A PRAC model after `steps` optimizer steps: bases refreshed, draw counters advanced."""
    model = apply_prac(make_llama(), _CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 128, (2, 16), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        step(model)
    return model, opt


def _same(a, b):
    sa, sb = prac_state_dict(a), prac_state_dict(b)
    assert sa["step"] == sb["step"] and sa["compressors"].keys() == sb["compressors"].keys()
    for name, ca in sa["compressors"].items():
        for key, value in ca.items():
            other = sb["compressors"][name][key]
            assert (torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other), (name, key)


def test_fsdp_checkpoint_is_read_by_the_deepspeed_route(tmp_path, make_llama):
    model, opt = _trained(make_llama, 3)
    save_checkpoint(tmp_path / "ckpt", model, opt)
    assert (tmp_path / "ckpt" / "prac_rank00000.pt").is_file()
    fresh = apply_prac(make_llama(), _CFG)
    assert load_prac_state(fresh, tmp_path / "ckpt")  # what DeepSpeed's load_checkpoint wrapper calls
    _same(model, fresh)


def test_deepspeed_route_state_is_read_by_the_fsdp_checkpoint(tmp_path, make_llama):
    model, opt = _trained(make_llama, 2)
    save_checkpoint(tmp_path / "ckpt", model, opt)
    # Overwrite the PRAC file with one the DeepSpeed route writes (save_checkpoint wrapper) two steps later.
    later, _ = _trained(make_llama, 4)
    save_prac_state(later, tmp_path / "ckpt")
    fresh = apply_prac(make_llama(), _CFG)
    load_checkpoint(tmp_path / "ckpt", fresh, torch.optim.AdamW(fresh.parameters(), lr=1e-3))
    _same(later, fresh)


def _as_rank(monkeypatch, rank, world):
    monkeypatch.setattr(state_file, "rank_world", lambda: (rank, world))


def test_another_world_size_is_refused_naming_both_sizes(tmp_path, monkeypatch, make_llama):
    model, _ = _trained(make_llama, 1)
    for rank in (0, 1):  # the two files a 2-rank job writes
        _as_rank(monkeypatch, rank, 2)
        save_prac_state(model, tmp_path / "two")
    _as_rank(monkeypatch, 0, 1)
    with pytest.raises(CheckpointError, match=r"saved by 2 ranks but this job has world size 1"):
        load_prac_state(model, tmp_path / "two")
    save_prac_state(model, tmp_path / "one")
    _as_rank(monkeypatch, 1, 2)  # rank 1 of a 2-rank job finds no file of its own
    with pytest.raises(CheckpointError, match=r"saved by 1 ranks but this job has world size 2"):
        load_prac_state(model, tmp_path / "one")


def test_fsdp_checkpoint_refuses_another_world_size(tmp_path, monkeypatch, make_llama):
    import prac_dist.checkpoint.sharded as fsdp_ckpt

    model, opt = _trained(make_llama, 1)
    save_checkpoint(tmp_path / "ckpt", model, opt)
    monkeypatch.setattr(fsdp_ckpt, "rank_world", lambda: (0, 2))
    with pytest.raises(CheckpointError, match=r"saved by 1 ranks but this job has world size 2"):
        load_checkpoint(tmp_path / "ckpt", model, opt)


def test_truncated_state_file_is_one_error_naming_it(tmp_path, make_llama):
    model, _ = _trained(make_llama, 1)
    path = save_prac_state(model, tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"prac_rank00000\.pt: unreadable") as info:
        load_prac_state(model, tmp_path)
    assert "\n" not in str(info.value)


def test_missing_state_without_prac_files_says_so(tmp_path, make_llama):
    model, _ = _trained(make_llama, 1)
    with pytest.raises(CheckpointError, match="no PRAC state"):
        load_prac_state(model, tmp_path)
    assert load_prac_state(model, tmp_path, strict=False) is False


def _two_rank_worker(rank, port, workdir, result_dir):
    """One of 2 gloo ranks: train on this rank's own data, write through one route, read through the other."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      OMP_NUM_THREADS="1")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        def build():
            torch.manual_seed(0)
            return apply_prac(LlamaForCausalLM(LlamaConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=64)), _CFG)

        model = build()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank's own batches: its own Q1
        for _ in range(2):
            ids = torch.randint(0, 64, (2, 8), generator=gen)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            step(model)
        save_checkpoint(os.path.join(workdir, "fsdp"), model, opt)  # FSDP2's route writes ...
        fresh = build()
        load_prac_state(fresh, os.path.join(workdir, "fsdp"))  # ... DeepSpeed's route reads
        save_prac_state(model, os.path.join(workdir, "ds"))  # DeepSpeed's route writes ...
        other = build()
        import shutil

        if rank == 0:  # FSDP2's folder with the PRAC files DeepSpeed's route wrote
            shutil.copytree(os.path.join(workdir, "fsdp"), os.path.join(workdir, "mixed"))
            for r in range(2):
                shutil.copy(os.path.join(workdir, "ds", f"prac_rank{r:05d}.pt"), os.path.join(workdir, "mixed"))
        torch.distributed.barrier()
        load_checkpoint(os.path.join(workdir, "mixed"), other, torch.optim.AdamW(other.parameters(), lr=1e-3))
        torch.save({"saved": prac_state_dict(model), "ds_read": prac_state_dict(fresh),
                    "fsdp_read": prac_state_dict(other)}, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_read_their_own_state_through_either_engines_route(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_two_rank_worker, args=(port, str(tmp_path / "ckpt"), str(tmp_path)), nprocs=2)
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    def q1s(sd):
        return [c["q1"] for c in sd["compressors"].values() if c["q1"] is not None]

    for run in runs:
        for read in ("ds_read", "fsdp_read"):
            assert all(torch.equal(a, b) for a, b in zip(q1s(run["saved"]), q1s(run[read]), strict=True)), read
    # Each rank's bases came from its own data: rank 1 must not have been handed rank 0's state.
    assert not all(torch.equal(a, b) for a, b in zip(q1s(runs[0]["saved"]), q1s(runs[1]["saved"])))


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): the stand-in for any code a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("victim", ["prac_rank00000.pt", "trainer.pt", "rng_rank00000.pt"])
def test_a_pickle_that_runs_code_is_refused_by_the_library(tmp_path, make_llama, victim):
    from prac_dist.checkpoint import UnsafeCheckpoint

    model, opt = _trained(make_llama, 1)
    save_checkpoint(tmp_path / "ckpt", model, opt)
    torch.save({"state": _RunsCode(tmp_path / "ran")}, tmp_path / "ckpt" / victim)
    with pytest.raises(UnsafeCheckpoint, match=rf"{victim}: refused: its pickle names code \(posix\.mkdir\)") as info:
        load_checkpoint(tmp_path / "ckpt", model, opt)
    assert "\n" not in str(info.value) and not (tmp_path / "ran").exists()


def test_checkpoint_files_of_the_previous_format_still_load(tmp_path, make_llama):
    """FSDP2 RNG files holding torch's state alone, and prac-train loop state with NumPy's get_state() tuple,
    contain no code: they load with weights_only=True and restore the same draws."""
    import random

    import numpy as np

    from prac_dist.checkpoint.files import read_file
    from prac_dist.checkpoint.rng import set_rng_state

    model, opt = _trained(make_llama, 1)
    save_checkpoint(tmp_path / "ckpt", model, opt)
    torch.save({"format": 1, "rng": torch.get_rng_state(), "cuda_rng": None}, tmp_path / "ckpt" / "rng_rank00000.pt")
    want = torch.rand(3)
    load_checkpoint(tmp_path / "ckpt", model, opt)
    assert torch.equal(torch.rand(3), want)
    legacy = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    torch.save({"data": {"position": 3}, "rng": legacy}, tmp_path / "loop.pt")
    draws = (torch.rand(2), random.random(), np.random.rand(2))
    set_rng_state(read_file(tmp_path / "loop.pt")["rng"])
    again = (torch.rand(2), random.random(), np.random.rand(2))
    assert torch.equal(draws[0], again[0]) and draws[1] == again[1] and np.array_equal(draws[2], again[2])


def test_rng_snapshot_is_plain_data_and_restores_every_generator(tmp_path):
    import random

    import numpy as np

    from prac_dist.checkpoint.files import read_file, write_file
    from prac_dist.checkpoint.rng import rng_state, set_rng_state

    np.random.randn()  # leaves a cached Gaussian: has_gauss=1 must come back too
    write_file(rng_state(), tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "rng.pt")) == []
    draws = (torch.rand(2), random.gauss(0, 1), np.random.randn(3))
    set_rng_state(read_file(tmp_path / "rng.pt"))
    again = (torch.rand(2), random.gauss(0, 1), np.random.randn(3))
    assert torch.equal(draws[0], again[0]) and draws[1] == again[1] and np.array_equal(draws[2], again[2])
