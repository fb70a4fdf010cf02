"""One writer per run directory: the process that trains, resumes or analyses into a run holds
`<run dir>/.lock`; a second writer is refused at once, told who holds it and what to do.

The primitive is `fcntl.flock` on the lock file, exclusive and non-blocking. The kernel releases it
when the holder's process ends, however it ends (a kill, an out-of-memory kill, a crashed node's
local process), so a lock is never left held by a dead process; the file also records the holder
(process id, host, start time, what it does), which is what a refused writer is shown. A holder
that ended without releasing (a kill) leaves its record behind; the next writer takes the lock
over and logs whose it was.

Where it holds: local file systems exactly. NFS: Linux emulates `flock` with NFS byte-range locks
(since kernel 2.6.12), which lock across clients on NFSv4 and on NFSv3 with the lock manager
running. Lustre and GPFS lock across nodes only when mounted with their `flock` option; a file
system that refuses `flock` (ENOLCK, ENOSYS, EOPNOTSUPP) gets a warning and the run goes on
unlocked rather than not at all.

Only global rank zero takes the lock (with `ddp` the other ranks re-run the entry point; with
`ddp_spawn` the workers are children of the process that holds it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from mre.errors import UserError

log = logging.getLogger(__name__)

LOCK = Path(".lock")
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run directory's lock."""

    pid: int
    host: str
    started: str
    purpose: str

    def describe(self) -> str:
        return f"{self.purpose} (process {self.pid} on {self.host}, started {self.started})"


class RunLockedError(UserError):
    """Another process is writing this run directory."""

    def __init__(self, run_dir: Path, holder: Holder | None) -> None:
        who = holder.describe() if holder else "another process (its record is unreadable)"
        super().__init__(
            f"{run_dir} is in use by {who}",
            hint="wait for it to end, or stop it (kill <pid>) and run this again; "
            "two writers of one run directory would interleave its files",
        )
        self.holder = holder


def _me(purpose: str) -> Holder:
    return Holder(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %Z"), purpose)


def _read_holder(fd: int) -> Holder | None:
    """The record in an open lock file (None when empty: released, or never held)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        return Holder(**json.loads(raw))
    except (ValueError, TypeError):
        return None


def _write_holder(fd: int, holder: Holder | None) -> None:
    os.ftruncate(fd, 0)
    if holder is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(asdict(holder)).encode())
    os.fsync(fd)


def current_holder(run_dir: str | Path) -> Holder | None:
    """The live holder of a run directory's lock, or None when no process holds it. Reading only:
    it takes the lock for an instant and leaves the file as it was."""
    path = Path(run_dir) / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or Holder(0, "?", "?", "another process")
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return None
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@contextmanager
def run_dir_lock(run_dir: str | Path, purpose: str | None = None) -> Iterator[Holder | None]:
    """Hold `run_dir`'s lock for the block (created with the folder if needed); refuse with
    `RunLockedError` when another process holds it. Yields this process's record (None on other
    ranks, or where the file system cannot lock)."""
    if not _is_rank_zero():
        yield None
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(run_dir, _read_holder(fd)) from None
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            log.warning("%s: the file system cannot lock (%s); going on without a lock", run_dir, e.strerror)
            yield None
            return
        previous = _read_holder(fd)
        if previous is not None:
            log.warning(
                "%s: taking over the lock of %s, which ended without releasing it",
                run_dir,
                previous.describe(),
            )
        me = _me(purpose or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
        _write_holder(fd, me)
        try:
            yield me
        finally:
            _write_holder(fd, None)  # released: the next holder has nothing to take over
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
