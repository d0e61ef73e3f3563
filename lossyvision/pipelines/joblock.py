"""One writer per output: a lock file ``.lock`` in ``<out>/<dataset>/<split>/``.

Two jobs writing the same shards would each see the other's half-finished work as missing and
rewrite it, and their manifests would overwrite each other. So the driver takes the lock before
it writes anything, and a second job refuses with a message naming the holder.

- On a local or shared filesystem the lock is ``flock`` on the file (NFS maps it to a POSIX lock):
  the kernel drops it when the holder dies, even by SIGKILL, so a rerun never waits for a stale lock.
- On object stores (no locking primitive) and filesystems without ``flock`` it is a lease: the file
  names its holder and a heartbeat the holder refreshes every ``stale_s / 4`` seconds. A lease whose
  heartbeat is older than ``stale_s``, or whose holder was on this host and is gone, is taken over;
  ``break_lock=True`` takes over a live-looking lease (for a job known to be dead elsewhere).

The file stays after the job (removing it would race with a job that opened it just before);
its content says which job last held it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid

from .. import storage

log = logging.getLogger(__name__)

LOCK = ".lock"


class JobLockError(RuntimeError):
    """Another live job holds the lock; the message names it and says what to do."""


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "started": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict | None) -> str:
    if not info:
        return "another job"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"the job with pid {info.get('pid')} on host {info.get('host')} (started {started})"


class JobLock:
    """``with JobLock(folder):`` guards one output folder for the duration of a job."""

    def __init__(self, folder: str, break_lock: bool = False, stale_s: float = 120.0):
        self.folder = folder
        self.path = storage.join(folder, LOCK)
        self.break_lock = break_lock
        self.stale_s = stale_s
        self.info = _holder()
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "JobLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        storage.makedirs(self.folder)
        if not storage.is_remote(self.path) and self._try_flock():
            return
        self._lease()

    # -- flock --------------------------------------------------------------------------

    def _try_flock(self) -> bool:
        """Take the kernel lock; False when this filesystem has no flock (then a lease is used)."""
        import fcntl

        path = storage.local_path(self.path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = _read_json(os.read(fd, 1 << 16))
            os.close(fd)
            raise JobLockError(
                f"{_describe(held)} is writing to {self.folder} (it holds {path}); wait for it to finish or stop it, "
                "then rerun. Two jobs on one output would overwrite each other's shards and manifests"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.info("%s: no flock on this filesystem (%s); using a lease lock", path, e.strerror)
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**self.info, "kind": "flock"}).encode(), 0)
        self._fd = fd
        return True

    # -- lease --------------------------------------------------------------------------

    def _read_lease(self) -> dict | None:
        try:
            return _read_json(storage.read_bytes(self.path))
        except FileNotFoundError:
            return None

    def _write_lease(self) -> None:
        storage.write_bytes_atomic(self.path, json.dumps({**self.info, "kind": "lease", "heartbeat": time.time()}).encode())

    def _lease(self) -> None:
        held = self._read_lease()
        if held and held.get("kind") == "lease" and not self.break_lock:
            age = time.time() - float(held.get("heartbeat", 0))
            dead_here = held.get("host") == self.info["host"] and not _pid_alive(int(held.get("pid", -1)))
            if age < self.stale_s and not dead_here:
                raise JobLockError(
                    f"{_describe(held)} is writing to {self.folder} (lease {self.path}, heartbeat {age:.0f} s ago); "
                    f"wait for it to finish or stop it. If that job is dead, rerun after {self.stale_s - age:.0f} s "
                    "(its lease then expires) or now with --break-lock"
                )
            log.warning("taking over the lease of %s (%s)", _describe(held), "its process is gone" if dead_here else f"heartbeat {age:.0f} s old")
        self._write_lease()
        time.sleep(0.2)  # a job that wrote its lease at the same moment: the last write wins, the other backs off
        now = self._read_lease()
        if not now or now.get("token") != self.info["token"]:
            raise JobLockError(f"{_describe(now)} took the lease {self.path} at the same moment; only one job may write {self.folder}")
        self._thread = threading.Thread(target=self._heartbeat, name="lossyvision-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_s / 4):
            try:
                now = self._read_lease()
                if now and now.get("token") != self.info["token"]:
                    log.error("the lease %s was taken over by %s (--break-lock?); this job's output may be overwritten", self.path, _describe(now))
                    return
                self._write_lease()
            except Exception as e:  # a transient store error must not kill the job; the next beat retries
                log.warning("lease heartbeat on %s failed: %s", self.path, e)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, json.dumps({**self.info, "kind": "released", "released": time.time()}).encode(), 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            try:
                now = self._read_lease()
                if now and now.get("token") == self.info["token"]:
                    storage.write_bytes_atomic(self.path, json.dumps({**self.info, "kind": "released", "released": time.time()}).encode())
            except Exception as e:
                log.warning("could not release the lease %s: %s", self.path, e)


def _read_json(data: bytes) -> dict | None:
    try:
        return json.loads(data.decode() or "null")
    except (ValueError, UnicodeDecodeError):
        return None
