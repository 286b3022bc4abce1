"""An exclusive lock on a directory, held for as long as one process works in it, that
names its holder and leaves no file behind.

The lock is a small JSON file (host, pid, process start time, boot id, a random token)
created with ``O_CREAT | O_EXCL``, which is atomic on local file systems and on the shared
ones clusters use (NFSv3+, Lustre, GPFS), so two processes on two nodes cannot both take
it. ``flock`` is not used: on Lustre mounted with ``localflock`` it silently excludes only
processes of the same node.

A lock file outlives a process killed with SIGKILL. A later process takes it over when the
holder is provably gone: on the *same host*, the host rebooted since (another boot id), no
process has that pid, or the pid now belongs to a process started at another time (pid
reuse); on any host, the holder was an earlier run of this same Slurm job (same
``SLURM_JOB_ID``, lower ``SLURM_RESTART_COUNT``: Slurm runs one instance of a job at a time,
and a requeued job may land on another node after its predecessor was killed). Otherwise
nothing can be proven about another host, so the error names the holder and the file to
delete once that process is known to be gone.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

from common.errors import UserError

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (epoch seconds), or None if no such process runs (a
    zombie, killed but not yet reaped by its parent, counts as gone)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        # Another user's live process: it exists; its start time cannot be compared.
        return float("nan")


def describe(holder: Optional[Dict[str, Any]]) -> str:
    """``host <name> pid <n> (since <UTC time>)`` of a lock's content, for messages."""
    if not holder:
        return "another process (its lock file is being written or is unreadable)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (since {since})"


def _slurm() -> Optional[Dict[str, Any]]:
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    return {"job": job, "restart": int(restart) if restart.isdigit() else 0}


def holder_is_gone(holder: Dict[str, Any]) -> bool:
    """True if ``holder`` (a lock's content) names a process known to be gone: an earlier
    run of this process's Slurm job, or a process of this host that no longer runs. False
    for a live process and for any other process of another host (unknowable)."""
    mine, theirs = _slurm(), holder.get("slurm")
    if mine and isinstance(theirs, dict) and theirs.get("job") == mine["job"]:
        if int(theirs.get("restart", 0)) < mine["restart"]:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot and holder.get("boot_id") and holder["boot_id"] != boot:
        return True  # the host rebooted since the lock was taken
    started = _start_time(int(holder.get("pid", -1)))
    if started is None:
        return True
    if started != started or holder.get("started") is None:  # NaN: not ours to inspect
        return False
    # The pid was reused by a process started at another time.
    return abs(started - float(holder["started"])) > 1.0


class DirLock:
    """Exclusive lock file ``path`` guarding a directory (``what`` names it in messages).

    Use as a context manager (``with DirLock(run / ".lock", f"run directory {run}"):``) or
    call ``acquire``/``release``. ``acquire`` raises UserError naming the holder's host and
    pid if another live process holds the lock, unless ``wait`` is set, in which case it
    says once whom it waits for and polls every ``poll_s`` seconds. A lock left by a dead
    process of this host is taken over, saying so on stderr. ``release`` deletes the file
    (only if it is still this process's) and the directories ``acquire`` created for it
    that are still empty.
    """

    def __init__(self, path: Path, what: str, wait: bool = False, poll_s: float = 1.0) -> None:
        self.path = Path(path)
        self.what = what
        self.wait = wait
        self.poll_s = poll_s
        self._token: Optional[str] = None
        self._made: List[Path] = []  # directories acquire() created, innermost first

    # -- content
    def _content(self) -> Dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "started": _start_time(pid), "boot_id": _boot_id(),
                "since": time.time(), "token": self._token, "slurm": _slurm()}

    def read(self) -> Optional[Dict[str, Any]]:
        """The lock file's content, or None if it does not exist or is not yet written."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- acquire / release
    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(self._content()).encode())
        finally:
            os.close(fd)
        return True

    def _take_over(self, stale: Dict[str, Any]) -> None:
        """Remove a stale lock file, unless another process replaced it meanwhile."""
        grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # someone else removed it first
        try:
            moved = json.loads(grave.read_text())
        except (OSError, ValueError):
            moved = None
        if moved is not None and moved.get("token") != stale.get("token"):
            # A live process took the lock between our read and the rename: give it back.
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        else:
            print(f"warning: taking over the lock on {self.what}: {describe(stale)} is no longer running",
                  file=sys.stderr)
        grave.unlink(missing_ok=True)

    def acquire(self) -> "DirLock":
        """Take the lock. Raises UserError (exit 2) naming the holder if it is taken."""
        missing = [d for d in [self.path.parent, *self.path.parent.parents] if not d.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing
        self._token = secrets.token_hex(16)
        announced = False
        while True:
            try:
                if self._try_create():
                    return self
            except OSError as e:
                self._token = None
                raise UserError(f"cannot create lock file {self.path}: {e.strerror or e}") from None
            holder = self.read()
            if holder is None:
                time.sleep(0.05)  # created but not yet written, or just removed: look again
                holder = self.read()
                if holder is None:
                    continue
            if holder_is_gone(holder):
                self._take_over(holder)
                continue
            if not self.wait:
                self._token = None
                self._remove_made_dir()
                raise UserError(
                    f"{self.what} is in use by {describe(holder)}; wait for it to finish, or, if that process is "
                    f"gone, delete {self.path}"
                )
            if not announced:
                print(f"waiting for {describe(holder)}, which holds {self.what} ({self.path})", file=sys.stderr)
                announced = True
            time.sleep(self.poll_s)

    def release(self) -> None:
        """Delete the lock file if this process still holds it; idempotent."""
        if self._token is None:
            return
        held = self.read()
        if held is not None and held.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None
        self._remove_made_dir()

    def _remove_made_dir(self) -> None:
        for d in self._made:
            try:
                d.rmdir()  # only if empty: the process wrote nothing else there
            except OSError:
                break
        self._made = []

    @property
    def held(self) -> bool:
        """True between a successful ``acquire`` and ``release``."""
        return self._token is not None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
