"""prac-train's checkpoints: step_N folders, written under a temporary name and renamed when complete.

A run killed at any instant leaves either the previous checkpoints or a
`.tmp-*` folder that `--resume` ignores (and the next run deletes), never a
half-written `step_*` folder. Every rank writes into the same folder (one node
or a shared filesystem); rank 0 renames it after a barrier. Re-saving an existing
step swaps the two folders in one rename (Linux renameat2 RENAME_EXCHANGE), so
`step_N` is complete at every instant.

What can go wrong is one line naming the path (CheckpointError, a ConfigError: prac-train exits 2):
a full disk ("no space left on <dir>", the partial `.tmp-*` removed), a corrupt or partial
checkpoint (`--resume` says so and falls back to the newest intact one), a checkpoint of another
world size or engine (meta.json records both; refused naming both), a file whose pickle names code
(UnsafeCheckpoint, files.py: refused, with no fallback).

`backend` is the trainer's engine (prac_dist.train.backends.TrainBackend): this module calls its
is_main, rank, world_size, name, barrier, save, load and all_reduce_mean, and imports nothing from
prac_dist.train.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from prac_dist.checkpoint.files import CheckpointError, CorruptCheckpoint, read_file
from prac_dist.validate import ConfigError

__all__ = ["latest_checkpoint", "list_checkpoints", "save_checkpoint", "load_checkpoint", "resume_checkpoint",
           "remove_stale_tmp"]

# How each engine is selected on the command line, for the message refusing another engine's checkpoint.
_ENGINE_FLAG = {"local": "no engine flag", "deepspeed": "--deepspeed CONFIG", "fsdp": "--fsdp"}

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"


def list_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoints (folders step_N holding meta.json), oldest first."""
    return [p for p in _step_dirs(root) if (p / "meta.json").is_file()]


def _step_dirs(root: Path) -> List[Path]:
    """Every step_N folder, oldest first (a damaged one too: --resume reports it instead of skipping it)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def remove_stale_tmp(root: Path) -> None:
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(root: Path, step: int, backend: Any, extra: Dict[str, Any],
                    loop_state: Dict[str, Any], keep: int) -> Path:
    """All ranks call this. loop_state is per rank (data position, RNG); extra is shared."""
    final = root / f"step_{step:07d}"
    tmp = root / f"{_TMP_PREFIX}step_{step:07d}"
    try:
        if backend.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        backend.barrier()
        backend.save(tmp, extra)
        torch.save(loop_state, tmp / f"loop_rank{backend.rank:05d}.pt")
        backend.barrier()
        if backend.is_main:
            meta = {"step": step, "world_size": backend.world_size, "backend": backend.name}
            _write_synced(tmp / "meta.json", json.dumps(meta))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint must not keep the disk full
        if _disk_full(exc):
            raise CheckpointError(f"no space left on {root} while writing the step-{step} checkpoint "
                                  f"(removed the partial {tmp.name}); free space, then --resume") from None
        raise
    if backend.is_main:
        _install(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    backend.barrier()
    return final


def _disk_full(exc: BaseException) -> bool:
    # torch.save reports a short write as RuntimeError "[enforce fail at inline_container.cc] unexpected pos".
    return ((isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in str(exc)
            or (isinstance(exc, RuntimeError) and "unexpected pos" in str(exc)))


def _install(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`; an existing `final` (a re-saved step) is swapped out atomically."""
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # now the replaced checkpoint
        return
    # No renameat2 (not Linux, or an old kernel/filesystem): two renames; a crash between them leaves the
    # new checkpoint complete under tmp and the older steps intact. Still never a delete before the rename.
    aside = final.with_name(f"{_TMP_PREFIX}old-{final.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def load_checkpoint(path: Path, backend: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(extra, this rank's loop state). CorruptCheckpoint when a file cannot be read; CheckpointError when
    the checkpoint does not fit this run (world size, engine)."""
    meta = _read_meta(path)
    if meta.get("backend", backend.name) != backend.name:
        saved = meta["backend"]
        raise CheckpointError(f"--resume: {path} was written by the {saved} engine but this run uses the "
                              f"{backend.name} engine; resume with {_ENGINE_FLAG.get(saved, saved)}")
    if meta["world_size"] != backend.world_size:
        raise CheckpointError(f"--resume: {path} was written by {meta['world_size']} ranks, this run has "
                              f"{backend.world_size}; resume with the same world size")
    loop_file = path / f"loop_rank{backend.rank:05d}.pt"
    if not loop_file.is_file():
        raise CorruptCheckpoint(f"{loop_file}: missing (the checkpoint is incomplete)")
    try:
        extra = backend.load(path)
        loop_state = read_file(loop_file)
    except ConfigError:
        raise  # Corrupt/UnsafeCheckpoint from below, or an intact checkpoint that does not fit this run (PRAC on/off)
    except Exception as exc:  # torch's PytorchStreamReader, EOFError, a garbled pickle, a DeepSpeed read error
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CorruptCheckpoint(f"{path}: unreadable ({type(exc).__name__}: {first})") from None
    return extra, loop_state


def _read_meta(path: Path) -> Dict[str, Any]:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path / 'meta.json'}: missing (the checkpoint is incomplete)") from None
    except (ValueError, OSError) as exc:
        raise CorruptCheckpoint(f"{path / 'meta.json'}: unreadable ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("world_size"), int) or "step" not in meta:
        raise CorruptCheckpoint(f"{path / 'meta.json'}: not a prac-train checkpoint record")
    return meta


def resume_checkpoint(root: Path, backend: Any, warn) -> Optional[tuple]:
    """Load the newest intact checkpoint under `root`: (path, extra, loop state), or None when there is none.

    A corrupt or partial newest checkpoint is reported through `warn` (one line with its path) and the
    next older one is tried; with none intact, CheckpointError. All ranks agree on each verdict (a
    rank whose files are damaged makes every rank fall back). A checkpoint that does not fit this
    run (engine, world size) is refused at once.
    """
    candidates = _step_dirs(root)[::-1]
    errors = []
    for i, path in enumerate(candidates):
        try:
            extra, loop_state = load_checkpoint(path, backend)
            failed = 0.0
        except CorruptCheckpoint as exc:
            errors.append(str(exc))
            failed = 1.0
        if backend.all_reduce_mean(failed) == 0.0:
            return path, extra, loop_state
        if failed == 0.0:
            errors.append(f"{path}: another rank could not read it")
        older = candidates[i + 1] if i + 1 < len(candidates) else None
        warn(f"checkpoint {errors[-1]}; " + (f"falling back to {older}" if older else "no older checkpoint"))
    if candidates:
        raise CheckpointError(f"--resume: no intact checkpoint in {root} ({len(candidates)} tried, newest: "
                              f"{errors[0]})")
    return None


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
