"""One prac-train run per output folder: `<output_dir>/.prac-train.lock`.

The lock is a file created with O_EXCL (atomic on local disks and on NFSv3+), holding the owner's
pid, host, start time and a random token. Rank 0 takes it; the other ranks never touch it (they
share rank 0's folder, and rank 0 exiting 2 makes the launcher stop them).

A lock is a dead run's, and is taken over, when
- its host is this host and its pid no longer runs (or runs a different process: the start time
  recorded from /proc differs, so a reused pid is not mistaken for the owner);
- its host is another one and its heartbeat is older than STALE_AFTER_S. The owner touches the
  file every HEARTBEAT_S; the age is measured against a file touched in the same folder just now,
  so both times come from the same file system clock (no cross-host clock skew on NFS).
Anything else is a live run: prac-train exits 2 naming it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from prac_dist.validate import ConfigError

__all__ = ["OutputLock", "LOCK_NAME", "HEARTBEAT_S", "STALE_AFTER_S"]

LOCK_NAME = ".prac-train.lock"
HEARTBEAT_S = 30.0
# 10 missed heartbeats: a paused or heavily loaded owner (a 2-core machine swapping) still beats in time.
STALE_AFTER_S = 300.0


class OutputLock:
    """`with OutputLock(folder): ...` holds the folder for this process (ConfigError when another run has it)."""

    def __init__(self, folder, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None
        self._created: list = []  # folders acquire() made: removed again on release when still empty

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        # A run rejected for bad input leaves nothing behind, not even an empty --output-dir.
        missing = self.folder
        while not missing.exists():
            self._created.append(missing)
            missing = missing.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "proc_start": _proc_start(os.getpid()), "token": self.token}
        for _ in range(10):  # each turn either creates the lock, fails on a live one, or removes a dead one
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_dead()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._beat = threading.Thread(target=self._heartbeat, name="prac-train-lock", daemon=True)
            self._beat.start()
            return
        raise ConfigError(f"--output-dir {self.folder}: could not take {self.path} (other runs keep replacing it)")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if (_read(self.path) or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        for folder in self._created:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote into it) or already gone
                break
        self._created = []

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def _take_over_if_dead(self) -> None:
        holder = _read(self.path)
        if holder is None:  # vanished, or its owner is between create and write: look again shortly
            time.sleep(0.05)
            holder = _read(self.path)
            if holder is None:
                if self.path.exists() and self._age() > self.stale_after_s:
                    holder = {"pid": "?", "host": "?", "token": None}  # an empty lock nobody wrote for 5 min
                else:
                    return
        why = self._dead_because(holder)
        if why is None:
            raise ConfigError(
                f"--output-dir {self.folder} is in use by another prac-train run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, started {holder.get('started', '?')}); wait for it to finish or choose "
                f"another --output-dir (lock: {self.path})")
        moved = self.path.with_name(f"{LOCK_NAME}.dead-{self.token}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # another starter removed it first
        if (_read(moved) or {}).get("token") != holder.get("token"):
            # Between our read and the rename another starter replaced the dead lock with its own live one.
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
            moved.unlink(missing_ok=True)
            return
        moved.unlink(missing_ok=True)
        print(f"prac-train: took over {self.path}: the run that held it (pid {holder.get('pid')} on "
              f"{holder.get('host')}) is gone ({why})", file=sys.stderr)

    def _dead_because(self, holder: dict) -> Optional[str]:
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")
            if not isinstance(pid, int):
                return "no pid recorded"
            if not _pid_runs(pid):
                return "no such process on this host"
            start = _proc_start(pid)
            if start is not None and holder.get("proc_start") not in (None, start):
                return f"pid {pid} is now another process"
            return None
        age = self._age()
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s > {self.stale_after_s:.0f} s"
        return None

    def _age(self) -> float:
        """Seconds since the lock was last touched, both times read from the folder's file system."""
        probe = self.folder / f"{LOCK_NAME}.probe-{self.token}"
        probe.touch()
        try:
            return probe.stat().st_mtime - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
        finally:
            probe.unlink(missing_ok=True)


def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _proc_start(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
