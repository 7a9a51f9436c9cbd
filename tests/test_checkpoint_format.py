"""One per-rank PRAC state file for every engine (prac_dist.checkpoint): the FSDP2 checkpoint reads what
the DeepSpeed route wrote and the DeepSpeed route reads what an FSDP2 checkpoint wrote; state saved by
another world size is refused naming both sizes; an unreadable file is named in one line."""

import pytest
import torch

import prac_dist.checkpoint as state_file
from prac_dist import PRACConfig, apply_prac, prac_state_dict, step
from prac_dist.checkpoint import CheckpointError, load_prac_state, save_prac_state
from prac_dist.fsdp.checkpoint import load_checkpoint, save_checkpoint

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
    import prac_dist.fsdp.checkpoint as fsdp_ckpt

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
