"""Local paths and fsspec URLs behind one small API, for sources, shards and manifests.

A local path (or ``file://`` URL) goes straight through ``os`` (the fast path: no fsspec overhead
per ImageNet file); anything else (``s3://``, ``gs://``, ``memory://``, ...) goes through the
fsspec filesystem its protocol names. Credentials and endpoints come from the usual places:
the backend's own environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``) or fsspec's
``FSSPEC_<PROTOCOL>_<OPTION>`` variables (``FSSPEC_S3_ENDPOINT_URL=http://...``), which
:func:`set_options` also sets so Ray workers inherit them.

Atomic writes: locally a temp file in the target folder is fsynced and renamed over the target;
on object stores a single PUT (or a multipart upload, which becomes visible only when it is
completed) is the commit, so a reader never sees half an object under its real name.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import socket
import stat as _stat
import tempfile
import uuid
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator

__all__ = [
    "is_remote", "local_path", "join", "exists", "isfile", "isdir", "listdir", "walk_files", "read_bytes",
    "read_text", "open_read", "write_atomic", "write_bytes_atomic", "remove", "stat", "makedirs", "sha256", "set_options",
    "StorageError", "FileStat", "temp_suffix", "HashingWriter", "AtomicWriter", "as_storage_error",
]


class StorageError(OSError):
    """An output could not be written (disk full, permission, unreachable store); names the path."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@dataclass(frozen=True)
class FileStat:
    size: int
    stamp: str  # changes when the content may have changed: mtime_ns locally, ETag/mtime on stores


def is_remote(path: str) -> bool:
    p = str(path)
    return "://" in p and not p.startswith(("file://", "local://"))


def local_path(path: str) -> str:
    p = str(path)
    for pre in ("file://", "local://"):
        if p.startswith(pre):
            return p[len(pre):]
    return p


#: The extra that installs the fsspec backend of a protocol.
BACKEND_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def _fs(url: str):
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:  # fsspec's own text ("Install s3fs to access S3") names no extra
        from .extras import MissingExtra, install_hint

        proto = url.split("://", 1)[0]
        hint = install_hint(BACKEND_EXTRAS[proto]) if proto in BACKEND_EXTRAS else "install the fsspec backend for it"
        raise MissingExtra(f"{url}: no filesystem for '{proto}://' ({e}); {hint}", name=e.name) from e
    return fs, path


def set_options(protocol: str, **options: Any) -> None:
    """Options for one fsspec protocol (``set_options("s3", endpoint_url=...)``), for this process
    and, through ``FSSPEC_<PROTOCOL>_<OPTION>`` variables, for Ray workers started after it."""
    import fsspec.config

    fsspec.config.conf.setdefault(protocol, {}).update(options)
    for k, v in options.items():
        os.environ[f"FSSPEC_{protocol.upper()}_{k.upper()}"] = str(v)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return os.path.join(local_path(base), *parts)


def exists(path: str) -> bool:
    if is_remote(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return os.path.exists(local_path(path))


def isfile(path: str) -> bool:
    if is_remote(path):
        fs, p = _fs(path)
        return fs.isfile(p)
    return os.path.isfile(local_path(path))


def isdir(path: str) -> bool:
    if is_remote(path):
        fs, p = _fs(path)
        return fs.isdir(p)
    return os.path.isdir(local_path(path))


def listdir(path: str, dirs_only: bool = False) -> list[str]:
    """Names (not paths) in a folder, sorted; [] when it does not exist."""
    if is_remote(path):
        fs, p = _fs(path)
        try:
            entries = fs.ls(p, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if not dirs_only or e["type"] == "directory")
    p = local_path(path)
    try:
        names = os.listdir(p)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if not dirs_only or os.path.isdir(os.path.join(p, n)))


def walk_files(top: str, suffixes: tuple[str, ...], rel_to: str | None = None,
               errors: list[tuple[str, str]] | None = None) -> list[tuple[str, FileStat]]:
    """Every regular file under ``top`` whose lower-cased name ends with one of ``suffixes``, as
    sorted ``(path relative to rel_to (default top), FileStat)`` pairs; one listing call per folder.

    What cannot be listed is skipped; with ``errors`` given, each skipped entry is appended to it as
    ``(relative path, reason)``: an unreadable folder, a folder reached twice through symlinks (a
    loop), a dangling symlink or a special file (FIFO, device, socket) with a matching name."""
    rel_to = top if rel_to is None else rel_to
    out: list[tuple[str, FileStat]] = []
    if is_remote(top):
        fs, p = _fs(top)
        _, base = _fs(rel_to)
        try:
            found = fs.find(p, detail=True)
        except FileNotFoundError:
            return []
        for name, info in found.items():
            if info.get("type") == "file" and name.lower().endswith(suffixes):
                out.append((posixpath.relpath(name, base), _remote_stat(info)))
        return sorted(out)
    top, rel_to = local_path(top), local_path(rel_to)
    seen: set[tuple[int, int]] = set()

    def skip(path: str, reason: str) -> None:
        if errors is not None:
            errors.append((os.path.relpath(path, rel_to), reason))

    def scan(d: str) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            if d != top:
                skip(d, f"unreadable folder: {e.strerror or e}")
            return
        for e in entries:
            try:
                if e.is_dir():  # follows symlinks
                    st = e.stat()
                    if (st.st_dev, st.st_ino) in seen:
                        skip(e.path, "folder reached twice through a symlink (a loop or a second link); skipped")
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    scan(e.path)
                    continue
            except OSError as err:
                if e.name.lower().endswith(suffixes):
                    skip(e.path, f"cannot list: {err.strerror or err}")
                continue
            if not e.name.lower().endswith(suffixes):
                continue
            try:
                st = e.stat()
            except OSError as err:
                skip(e.path, "dangling symlink" if e.is_symlink() and err.errno == errno.ENOENT else f"cannot stat: {err.strerror or err}")
                continue
            if not _stat.S_ISREG(st.st_mode):
                skip(e.path, f"{special_kind(st.st_mode)}, not a regular file (skipped unread)")
                continue
            out.append((os.path.relpath(e.path, rel_to), FileStat(st.st_size, str(st.st_mtime_ns))))

    try:
        st = os.stat(top)
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        return []
    scan(top)
    return out


def special_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO", "a character device", ...)."""
    for test, name in ((_stat.S_ISDIR, "a folder"), (_stat.S_ISFIFO, "a FIFO"), (_stat.S_ISCHR, "a character device"), (_stat.S_ISBLK, "a block device"),
                       (_stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _remote_stat(info: dict) -> FileStat:
    stamp = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified") or info.get("mtime") or info.get("updated") or ""
    return FileStat(int(info.get("size") or 0), str(stamp).strip('"'))


def stat(path: str) -> FileStat | None:
    """Size and change stamp of a file, or None when it does not exist."""
    if is_remote(path):
        fs, p = _fs(path)
        try:
            fs.invalidate_cache(p)
            return _remote_stat(fs.info(p))
        except FileNotFoundError:
            return None
    try:
        st = os.stat(local_path(path))
    except OSError:
        return None
    return FileStat(st.st_size, str(st.st_mtime_ns))


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """The file's bytes, or only its first ``limit`` bytes (one ranged GET on an object store)."""
    if is_remote(path):
        fs, p = _fs(path)
        return fs.cat_file(p) if limit is None else fs.cat_file(p, start=0, end=limit)
    with open(local_path(path), "rb") as f:
        return f.read() if limit is None else f.read(limit)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def open_read(path: str) -> IO[bytes]:
    """A binary file object for streaming reads (a tar shard); close it (or use ``with``)."""
    if is_remote(path):
        fs, p = _fs(path)
        return fs.open(p, "rb", block_size=8 << 20)
    return open(local_path(path), "rb")


def makedirs(path: str) -> None:
    if is_remote(path):
        fs, p = _fs(path)
        split = getattr(fs, "split_path", None)  # object stores (s3fs, gcsfs): folders are key prefixes
        if split is None:
            fs.makedirs(p, exist_ok=True)
            return
        bucket = split(p)[0]
        # fs.makedirs would create a missing bucket: a typo in --out must not create one
        if not fs.exists(bucket):
            raise StorageError(errno.ENOENT, f"cannot write {path}: the bucket '{bucket}' does not exist; create it first "
                               "(lossyvision never creates buckets) or fix the URL")
        return
    try:
        os.makedirs(local_path(path), exist_ok=True)
    except FileExistsError:
        raise StorageError(errno.EEXIST, f"cannot write {path}: a file is in the way of this folder; choose another --out") from None
    except OSError as e:
        raise _storage_error(e, path) from None


def temp_suffix() -> str:
    """``.tmp-<host>-<pid>-<random>``: unique across the nodes of a cluster sharing one folder."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def as_storage_error(e: OSError, path: str) -> StorageError:
    """``e`` as a :class:`StorageError` naming ``path`` with a hint (unchanged if it already is one)."""
    return e if isinstance(e, StorageError) else _storage_error(e, path)


def _storage_error(e: OSError, path: str) -> StorageError:
    if e.errno == errno.ENOSPC:
        why = "no space left on the device (no free bytes or no free inodes)"
        hint = "free space there or choose another --out, then rerun the same command to resume"
    elif e.errno == errno.EDQUOT:
        why = "disk quota exceeded"
        hint = "free space or raise the quota, then rerun the same command to resume"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "not allowed to write there"
        hint = "choose a writable --out"
    else:
        why = e.strerror or str(e)
        hint = "rerun the same command to resume once the storage is reachable"
    err = StorageError(e.errno or errno.EIO, f"cannot write {path}: {why}; {hint}")
    err.filename = path
    return err


class AtomicWriter:
    """A file that appears under ``path`` only when :meth:`commit` is called; :meth:`abort` (or an
    exception inside ``with``) leaves no temporary file behind and the previous ``path`` untouched.

    Local: written to ``path + temp_suffix()`` and renamed (fsync of the file and the folder).
    Object stores: spooled to a local temp file and uploaded in one call on commit (put_file aborts a
    failed multipart upload, whereas closing a half-written fs.open() handle would commit what was sent).
    OSErrors surface as :class:`StorageError` naming ``path``."""

    def __init__(self, path: str):
        self.path = path
        self._remote = is_remote(path)
        try:
            if self._remote:
                self._tmp = tempfile.NamedTemporaryFile(prefix="lossyvision-", suffix=".part")
                self.f: IO[bytes] = self._tmp
            else:
                p = local_path(path)
                self._dir = os.path.dirname(p) or "."
                os.makedirs(self._dir, exist_ok=True)
                self._final, self._tmp_path = p, p + temp_suffix()
                self.f = open(self._tmp_path, "wb")
        except OSError as e:
            raise _storage_error(e, path) from e
        self._open = True

    def commit(self) -> None:
        try:
            self.f.flush()
            if self._remote:
                fs, p = _fs(self.path)
                fs.put_file(self._tmp.name, p)
                self._tmp.close()
            else:
                os.fsync(self.f.fileno())
                self.f.close()
                os.replace(self._tmp_path, self._final)
                _fsync_dir(self._dir)
            self._open = False
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError) and not isinstance(e, StorageError):
                raise _storage_error(e, self.path) from e
            raise

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self.f.close()
        except OSError:
            pass
        if not self._remote:
            try:
                os.unlink(self._tmp_path)
            except OSError:
                pass

    def __enter__(self) -> "AtomicWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_atomic(path: str, write: Callable[[IO[bytes]], Any]) -> Any:
    """Call ``write(f)`` on a temporary file and commit it to ``path`` only when it returns;
    returns what ``write`` returned. Raises :class:`StorageError` (with the path) on failure,
    leaving no temporary file behind and the previous ``path`` (if any) untouched."""
    with AtomicWriter(path) as w:
        try:
            res = write(w.f)
        except OSError as e:
            if isinstance(e, StorageError):
                raise
            raise _storage_error(e, path) from e
        w.commit()
    return res


def write_bytes_atomic(path: str, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def remove(path: str) -> None:
    """Delete one file (local or URL); a file that is already gone is not an error."""
    try:
        if is_remote(path):
            fs, p = _fs(path)
            fs.rm_file(p)
        else:
            os.unlink(local_path(path))
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _storage_error(e, path) from e


def _blocks(f: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    return iter(lambda: f.read(size), b"")


def sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open_read(path) as f:
        for block in _blocks(f):
            h.update(block)
    return h.hexdigest()


class HashingWriter(io.RawIOBase):
    """Write-through wrapper that hashes and counts what passes (sha256 without a second read)."""

    def __init__(self, f: IO[bytes]):
        import hashlib

        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b) or len(b)
