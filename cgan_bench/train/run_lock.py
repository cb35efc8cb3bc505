"""One job per run directory: an exclusive lock on `<run_dir>/.lock`, held for the life of the job.

Why: two processes on one run directory (a requeued Slurm job while the old one still runs, a reused
`hydra.run.dir`) would both exit 0 and leave interleaved metrics, two final lines and checkpoints of different
seeds. With the lock, the second process gets RunDirBusy (one line naming the holder: host, pid, start time;
the app prints it and exits 2) before it reads or writes anything of the run.

The lock is flock(2) on an open file: the kernel drops it when the holder's process ends in any way
(including SIGKILL), so there is never a stale lock to clean up; the file itself stays and only tells who
held it last. A dead node's locks on a network file system are released by the server (NFSv4 lease expiry).
Caveats:
* flock is advisory and some file systems don't support it across nodes (Lustre without `-o flock`,
  `localflock` mounts, some FUSE/SMB mounts). When flock fails with an error other than "held by another"
  (ENOLCK, ENOSYS, EOPNOTSUPP, ...) a warning is logged and the job runs WITHOUT a lock.
* Hydra writes `.hydra/` (config.yaml, hydra.yaml, overrides.yaml) and opens its log file in the run directory
  before our task function runs, so a refused process has already overwritten the holder's `.hydra/` files.
  The app (cgan_bench/app.py run_job) rewrites them from the holder's in-memory config before it releases
  the lock, so they are right once the holder ends; while both run, and if the holder is SIGKILLed, they may
  describe the refused job.
* A child forked (without exec) by the holder shares the lock until it exits as well.
"""
import errno
import json
import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (warned about below)
    fcntl = None

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class RunDirBusy(ValueError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """`with RunDirLock(run_dir):` holds the directory's exclusive lock, or raises RunDirBusy at once."""

    def __init__(self, path: Path | str):
        self.run_dir = Path(path)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.locked = False

    def __enter__(self) -> "RunDirLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "fcntl is not available on this platform")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.locked = True
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise RunDirBusy(f"{self.run_dir} is in use by another job ({self.holder()}); wait for it to "
                                 "finish, or use another hydra.run.dir / hydra.sweep.dir") from None
            log.warning("cannot lock %s (%s): running WITHOUT protection against a second job in this "
                        "run directory (the file system may not support flock)", self.path, err)
        self.fd = fd
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.now().astimezone().isoformat(timespec="seconds")}
        if self.locked:  # unlocked, the file may name a live holder: leave it alone
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            if self.locked:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd, self.locked = None, False

    def holder(self, wait_s: float = 1.0) -> str:
        """'host H, pid P, started T' from the lock file; the holder may be writing it, so retry briefly."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                info = json.loads(self.path.read_text())
                return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
            except (OSError, ValueError, KeyError, TypeError):
                if time.monotonic() >= deadline:
                    return "unknown holder"
                time.sleep(0.05)


def is_held(run_dir: Path | str) -> bool:
    """Whether a live process holds `run_dir`'s lock now (a probe: takes and drops it at once if free).
    False where there is no lock file or the file system cannot lock. "status.json says running but the lock
    is free" means the job died (cgan_bench/launch.py)."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError as err:
        return err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
