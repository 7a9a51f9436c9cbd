"""Checkpoints that real runs damage: a corrupt or partial newest checkpoint is named in one line and
--resume falls back to the newest intact one (or exits 2); a full disk says so and leaves no `.tmp-*`;
re-saving a step never deletes step_N before the new one is in place; another engine's checkpoint is
refused naming both engines; a file whose pickle would run code is refused in one line (exit 2) and
the code never runs."""

import errno
import json
import os
import shutil

import pytest
import torch

from prac_dist import PRACConfig
from prac_dist.checkpoint import UnsafeCheckpoint
from prac_dist.checkpoint import steps as ckpt
from prac_dist.train.backends.local import LocalBackend
from prac_dist.train.optim import OptimizerSpec

from _train_util import run_cli, tiny_config


def _backend(make_llama, prac=True):
    backend = LocalBackend(device="cpu")
    backend.setup(make_llama(hidden=32, ffn=64, vocab=64), PRACConfig() if prac else None,
                  OptimizerSpec(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, grad_clip=1.0,
                                warmup_steps=1, max_steps=10, min_lr_ratio=0.1, grad_accum=1))
    return backend


def _save(root, step, backend, keep=5):
    extra = {"step": step}
    return ckpt.save_checkpoint(root, step, backend, extra, {"at": step}, keep)


def _resume(root, backend):
    warnings = []
    found = ckpt.resume_checkpoint(root, backend, warnings.append)
    return found, warnings


@pytest.mark.parametrize("damage", ["truncate local.pt", "delete local.pt", "garble meta.json",
                                    "delete meta.json", "truncate loop state"])
def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, make_llama, damage):
    backend = _backend(make_llama)
    for step in (2, 4):
        _save(tmp_path, step, backend)
    newest = tmp_path / "step_0000004"
    target = {"truncate local.pt": newest / "local.pt", "delete local.pt": newest / "local.pt",
              "garble meta.json": newest / "meta.json", "delete meta.json": newest / "meta.json",
              "truncate loop state": newest / "loop_rank00000.pt"}[damage]
    if damage.startswith("delete"):
        target.unlink()
    elif damage.startswith("garble"):
        target.write_text("{not json")
    else:
        target.write_bytes(target.read_bytes()[:100])
    (path, extra, loop_state), warnings = _resume(tmp_path, backend)
    assert path == tmp_path / "step_0000002" and extra == {"step": 2} and loop_state == {"at": 2}
    assert len(warnings) == 1 and str(newest) in warnings[0] and "falling back to" in warnings[0]
    assert "\n" not in warnings[0]


def test_no_intact_checkpoint_is_one_error_naming_the_newest(tmp_path, make_llama):
    backend = _backend(make_llama)
    _save(tmp_path, 2, backend)
    (tmp_path / "step_0000002" / "local.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint .*step_0000002.*local\.pt|"
                                                   r"no intact checkpoint .*step_0000002: unreadable"):
        _resume(tmp_path, backend)


def test_disk_full_names_the_folder_and_removes_the_partial_tmp(tmp_path, make_llama, monkeypatch):
    backend = _backend(make_llama)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the file is (partly) there, as after a short write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError, match=rf"^no space left on {tmp_path} while writing the step-3 "):
        _save(tmp_path, 3, backend)
    assert list(tmp_path.iterdir()) == []  # no .tmp-step_0000003 left to keep the disk full


def test_resaving_a_step_never_removes_the_complete_one_first(tmp_path, make_llama, monkeypatch):
    backend = _backend(make_llama)
    final = _save(tmp_path, 3, backend)
    first = (final / "local.pt").read_bytes()
    real_rmtree, real_replace = shutil.rmtree, ckpt.os.replace
    seen = []

    def watched(fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen.append((final / "meta.json").is_file() and (final / "local.pt").is_file())
            return out
        return call

    monkeypatch.setattr(ckpt.shutil, "rmtree", watched(real_rmtree))
    monkeypatch.setattr(ckpt.os, "replace", watched(real_replace))
    with torch.no_grad():
        next(backend.model.parameters()).add_(1.0)  # a different state under the same step
    _save(tmp_path, 3, backend)
    assert seen and all(seen)  # after every delete or rename, a complete step_0000003 was in place
    assert (final / "local.pt").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000003"]


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): the stand-in for any code a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("victim", ["local.pt", "loop_rank00000.pt"])
def test_a_pickle_that_runs_code_is_refused_without_fallback(tmp_path, make_llama, victim):
    backend = _backend(make_llama)
    root, marker = tmp_path / "ckpt", tmp_path / "ran"
    for step in (2, 4):
        _save(root, step, backend)
    torch.save({"extra": _RunsCode(marker)}, root / "step_0000004" / victim)
    with pytest.raises(UnsafeCheckpoint, match=rf"step_0000004/{victim}: refused: its pickle names code "
                                                    r"\(posix\.mkdir\)") as info:
        _resume(root, backend)  # no fallback to step_0000002: a tampered checkpoint is not a damaged one
    assert "\n" not in str(info.value) and not marker.exists()


def test_another_engines_checkpoint_is_refused_naming_both(tmp_path, make_llama):
    backend = _backend(make_llama)
    final = _save(tmp_path, 2, backend)
    meta = json.loads((final / "meta.json").read_text())
    (final / "meta.json").write_text(json.dumps({**meta, "backend": "fsdp"}))
    with pytest.raises(ckpt.CheckpointError, match="written by the fsdp engine but this run uses the local "
                                                   "engine; resume with --fsdp"):
        _resume(tmp_path, backend)


@pytest.mark.slow
def test_cli_resume_falls_back_then_exits_2_when_nothing_is_intact(tmp_path, corpus):
    out = tmp_path / "run"
    config = tiny_config(tmp_path, corpus, save_every=2, keep_checkpoints=2)
    assert run_cli(["--config", config, "--output-dir", out]).returncode == 0
    newest = out / "checkpoints" / "step_0000004"
    (newest / "local.pt").write_bytes((newest / "local.pt").read_bytes()[:1000])
    res = run_cli(["--config", config, "--output-dir", out, "--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"checkpoint {newest}: unreadable" in res.stderr and "falling back to" in res.stderr
    assert "step_0000002 (step 2)" in res.stderr
    for folder in (out / "checkpoints").iterdir():
        (folder / "local.pt").write_bytes(b"garbage")
    res = run_cli(["--config", config, "--output-dir", out, "--resume"])
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("prac-train: error: --resume: no intact checkpoint")


@pytest.mark.slow
def test_cli_resume_refuses_a_pickle_that_runs_code_with_exit_2(tmp_path, corpus):
    out, marker = tmp_path / "run", tmp_path / "ran"
    config = tiny_config(tmp_path, corpus, save_every=2, keep_checkpoints=2)
    assert run_cli(["--config", config, "--output-dir", out]).returncode == 0
    torch.save({"data": _RunsCode(marker)}, out / "checkpoints" / "step_0000004" / "loop_rank00000.pt")
    res = run_cli(["--config", config, "--output-dir", out, "--resume"])
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("prac-train: error: ") and "loop_rank00000.pt: refused: its pickle names code" in last
    assert not marker.exists()
