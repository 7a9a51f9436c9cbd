"""One run per output folder: a busy folder is exit 2 naming the holder; a dead run's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from prac_dist.train.cli import main
from prac_dist.train.config import ConfigError
from prac_dist.train.lock import LOCK_NAME, OutputLock


def _write_lock(folder, **holder):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"started": "earlier", "token": "old", **holder}))
    return path


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer exists (a zombie would still answer kill(pid, 0))
    return proc.pid


def test_second_holder_is_refused_naming_the_first(tmp_path):
    with OutputLock(tmp_path / "run") as first:
        held = json.loads(first.path.read_text())
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(ConfigError, match=rf"in use by another prac-train run \(pid {os.getpid()} on "
                                              rf"{socket.gethostname()}, started "):
            OutputLock(tmp_path / "run").acquire()
    assert not first.path.exists()  # released on exit
    OutputLock(tmp_path / "run").acquire()  # free again


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    pid = _dead_pid()
    path = _write_lock(tmp_path, pid=pid, host=socket.gethostname())
    with OutputLock(tmp_path) as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    assert f"(pid {pid} on {socket.gethostname()}) is gone (no such process on this host)" in capsys.readouterr().err


def test_a_reused_pid_is_not_the_owner(tmp_path, capsys):
    # Our own pid, but a different process start time: the owner died and the pid was handed out again.
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), proc_start=1)
    with OutputLock(tmp_path):
        pass
    assert f"pid {os.getpid()} is now another process" in capsys.readouterr().err


def test_other_host_goes_stale_by_heartbeat_age(tmp_path, capsys):
    path = _write_lock(tmp_path, pid=1, host="node-elsewhere")
    with pytest.raises(ConfigError, match=r"pid 1 on node-elsewhere"):
        OutputLock(tmp_path).acquire()  # just touched: a live run on another node
    old = time.time() - 400
    os.utime(path, (old, old))
    with OutputLock(tmp_path, stale_after_s=300):
        pass
    assert "is gone (no heartbeat for" in capsys.readouterr().err


def test_heartbeat_keeps_the_lock_fresh(tmp_path):
    with OutputLock(tmp_path, heartbeat_s=0.05) as lock:
        old = time.time() - 1000
        os.utime(lock.path, (old, old))
        deadline = time.time() + 10
        while lock.path.stat().st_mtime < time.time() - 100 and time.time() < deadline:
            time.sleep(0.05)
        assert lock.path.stat().st_mtime > time.time() - 100


def test_folders_made_for_the_lock_go_when_nothing_was_written(tmp_path):
    with OutputLock(tmp_path / "a" / "b"):
        pass
    assert not (tmp_path / "a").exists()  # an input error after the lock leaves no empty --output-dir
    with OutputLock(tmp_path / "a" / "b"):
        (tmp_path / "a" / "b" / "metrics.jsonl").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["metrics.jsonl"]


def test_release_leaves_someone_elses_lock(tmp_path):
    lock = OutputLock(tmp_path)
    lock.acquire()
    lock.path.write_text(json.dumps({"pid": 1, "host": "x", "token": "theirs"}))
    lock.release()
    assert lock.path.exists()


@pytest.mark.parametrize("extra", [[], ["--resume"], ["--compare"]])
def test_cli_into_a_busy_folder_exits_2_naming_the_holder(tmp_path, capsys, extra):
    out = tmp_path / "out"
    with OutputLock(out):
        code = main(["--output-dir", out, "--max-steps", "1"] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"prac-train: error: --output-dir {out} is in use by another prac-train run "
                              f"(pid {os.getpid()} on {socket.gethostname()}")
    assert not out.exists()  # the second run wrote nothing; the holder made the folder and removed it


@pytest.mark.slow
def test_two_real_runs_then_a_killed_one(tmp_path, corpus):
    """prac-train processes: the second into a busy folder exits 2; after a SIGKILL the next run takes over."""
    from _train_util import run_cli, tiny_config

    cfg = tiny_config(tmp_path, corpus, max_steps=100000, measure_memory=False)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "prac_dist.train", "--config", str(cfg), "--output-dir", str(out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / LOCK_NAME).exists() and time.time() < deadline:
            time.sleep(0.2)
        second = run_cli(["--config", cfg, "--output-dir", out, "--max-steps", "1"], timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"prac-train: error: --output-dir {out} is in use by another prac-train run (pid {first.pid} on ")
    finally:
        first.kill()
        first.wait()
    third = run_cli(["--config", cfg, "--output-dir", out, "--max-steps", "2"], timeout=300)
    assert third.returncode == 0, third.stderr
    assert f"(pid {first.pid} on {socket.gethostname()}) is gone (no such process on this host)" in third.stderr
    assert not (out / LOCK_NAME).exists()
