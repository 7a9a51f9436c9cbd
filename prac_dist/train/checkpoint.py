"""Atomic checkpoints: written under a temporary name, renamed when complete.

A run killed at any instant leaves either the previous checkpoints or a
`.tmp-*` folder that `--resume` ignores (and the next run deletes), never a
half-written `step_*` folder. Every rank writes into the same folder (one node
or a shared filesystem); rank 0 renames it after a barrier.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from prac_dist.train.backends import TrainBackend

__all__ = ["latest_checkpoint", "list_checkpoints", "save_checkpoint", "load_checkpoint", "rng_state",
           "set_rng_state", "remove_stale_tmp"]

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"


def list_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoints (folders step_N holding meta.json), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def remove_stale_tmp(root: Path) -> None:
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, backend: TrainBackend, extra: Dict[str, Any],
                    loop_state: Dict[str, Any], keep: int) -> Path:
    """All ranks call this. loop_state is per rank (data position, RNG); extra is shared."""
    final = root / f"step_{step:07d}"
    tmp = root / f"{_TMP_PREFIX}step_{step:07d}"
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
        if final.exists():  # a re-run of the same step (resume of a finished run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    backend.barrier()
    return final


def load_checkpoint(path: Path, backend: TrainBackend) -> (Dict[str, Any], Dict[str, Any]):
    """(extra, this rank's loop state)."""
    meta = json.loads((path / "meta.json").read_text())
    if meta["world_size"] != backend.world_size:
        from prac_dist.train.config import ConfigError

        raise ConfigError(f"--resume: {path} was written by {meta['world_size']} ranks, this run has "
                          f"{backend.world_size}; resume with the same world size")
    extra = backend.load(path)
    loop_state = torch.load(path / f"loop_rank{backend.rank:05d}.pt", weights_only=False)
    return extra, loop_state


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
