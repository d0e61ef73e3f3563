"""Shard files and manifests: deterministic tars written atomically, manifests rewritten atomically.

See docs/shards.md for the format. A tar is written to ``<name>.tmp-<pid>`` and renamed when
complete, so a reader (or a resumed job) never sees a half-written shard under its real name.
Tar members carry fixed metadata (mtime 0, fixed owner and mode) so the same samples always give
the same bytes.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import tarfile
from typing import Any, Iterable

FORMAT = "lossyvision-shards/1"
MANIFEST = "manifest.json"

__all__ = ["FORMAT", "MANIFEST", "shard_name", "write_tar_atomic", "sha256_file", "variant_dir", "load_manifest", "write_json_atomic", "clean_temp_files", "library_versions"]


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def variant_dir(root: str, dataset: str, split: str, variant: str) -> str:
    return os.path.join(root, dataset, split, variant)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def write_tar_atomic(path: str, samples: Iterable[dict[str, Any]]) -> tuple[str, int]:
    """Write WebDataset samples (``{"__key__": k, "png": bytes, ...}``) to ``path``; return (sha256, size).

    Member names are ``<key>.<ext>``; values must be bytes (or str, written as UTF-8).
    """
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    h = hashlib.sha256()

    class _Hashing(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            h.update(b)
            return self.f.write(b)

    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=_Hashing(raw), mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                for s in samples:
                    key = s["__key__"]
                    for ext in sorted(k for k in s if not k.startswith("__")):
                        v = s[ext]
                        data = v.encode("utf-8") if isinstance(v, str) else bytes(v)
                        ti = tarfile.TarInfo(f"{key}.{ext}")
                        ti.size, ti.mtime, ti.mode = len(data), 0, 0o444
                        ti.uname = ti.gname = "lossyvision"
                        ti.uid = ti.gid = 0
                        tar.addfile(ti, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
            size = raw.tell()
        os.replace(tmp, path)
        _fsync_dir(d)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return h.hexdigest(), size


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON to ``path`` via a temp file + rename (NaN/inf written as null)."""
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_finite(obj), f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _finite(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def sample_json(obj: dict) -> bytes:
    """Canonical per-sample JSON (sorted keys, no NaN): same stats, same bytes."""
    return json.dumps(_finite(obj), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of the libraries behind a variant, for its manifest (plus installed ``extra`` packages)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"lossyvision": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "pillow", "imagecodecs", "opencv-python-headless", *extra):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def load_manifest(vdir: str) -> dict | None:
    """The manifest of a variant folder, or None when there is none yet."""
    p = os.path.join(vdir, MANIFEST)
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        m = json.load(f)
    if m.get("format") != FORMAT:
        raise ValueError(f"{p}: unknown manifest format {m.get('format')!r}; expected {FORMAT}")
    return m


def clean_temp_files(vdir: str) -> int:
    """Remove temp files a killed job left behind; returns how many."""
    n = 0
    for p in glob.glob(os.path.join(vdir, "*.tmp-*")):
        try:
            os.unlink(p)
            n += 1
        except OSError:
            pass
    return n
