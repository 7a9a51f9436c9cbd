"""Shared helpers of the launch-script tests: run a script of launch/ in a controlled environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
FAKEBIN = Path(__file__).resolve().parent / "fakebin"
SCRIPTS = ["deepspeed.sh", "mpirun.sh", "slurm.sbatch", "torchrun.sh"]


def base_env(fakebin: bool = False, **settings: str) -> Dict[str, str]:
    """A minimal environment: PATH, HOME, no launcher or SLURM variables from the caller's shell.

    fakebin=True puts tests/launch/fakebin (nvidia-smi with 2 GPUs, srun, scontrol) first on PATH.
    """
    path = os.environ["PATH"]
    if fakebin:
        path = f"{FAKEBIN}{os.pathsep}{path}"
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    env.update(settings)
    return env


def run_script(name: str, args: List[str], env: Dict[str, str], timeout: float = 60,
               cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / name), *args], env=env, cwd=cwd or REPO, text=True,
                          capture_output=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_summary(out_dir: Path) -> dict:
    path = out_dir / "summary.json"
    assert path.is_file(), f"no {path}: the run did not finish"
    return json.loads(path.read_text())


@pytest.fixture
def python_exe() -> str:
    return sys.executable
