"""Shard files and manifests: deterministic tars written atomically, manifests rewritten atomically.

See docs/shards.md for the format. Paths may be local or fsspec URLs (lossyvision.storage). A tar
is written to ``<name>.tmp-<host>-<pid>-<random>`` and renamed when complete (on object stores the
single upload is the commit), so a reader (or a resumed job) never sees a half-written shard under its real name.
Tar members carry fixed metadata (mtime 0, fixed owner and mode) so the same samples always give
the same bytes.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
import tarfile
from typing import Any, Callable, Iterable

from .. import storage

FORMAT = "lossyvision-shards/1"
# The leading underscore keeps it out of folder listings that take every other file for data: Ray Data's
# read_webdataset(folder) (and pyarrow datasets) skip names starting with "_" or ".", and would otherwise
# open the manifest as a tar and fail.
MANIFEST = "_manifest.json"
# Its earlier name: still read where no _manifest.json exists; a prepare-shards rerun renames it.
LEGACY_MANIFEST = "manifest.json"

__all__ = ["FORMAT", "MANIFEST", "LEGACY_MANIFEST", "shard_name", "TarShardWriter", "write_tar_atomic", "sha256_file", "variant_dir",
           "manifest_path", "has_manifest", "load_manifest", "write_json_atomic", "clean_temp_files", "library_versions"]


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def variant_dir(root: str, dataset: str, split: str, variant: str) -> str:
    return storage.join(root, dataset, split, variant)


def sha256_file(path: str) -> str:
    return storage.sha256(path)


class TarShardWriter:
    """A WebDataset shard written sample by sample and committed atomically, so a task holds one
    sample at a time rather than a whole shard (its memory does not grow with --shard-size).

    ``with TarShardWriter(path) as w: w.write(sample) ...; sha, size = w.commit()``; an exception
    inside ``with`` (or no commit) leaves nothing under ``path``. Member names are ``<key>.<ext>``
    in sorted extension order; values are bytes (or str, written as UTF-8); metadata is fixed
    (mtime 0, fixed owner and mode) so the same samples always give the same bytes."""

    def __init__(self, path: str):
        self.path = path
        self._file = storage.AtomicWriter(path)
        self._tee = storage.HashingWriter(self._file.f)
        self._tar = tarfile.open(fileobj=self._tee, mode="w|", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self.first_key: str | None = None
        self.last_key: str | None = None

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        try:
            for ext in sorted(k for k in sample if not k.startswith("__")):
                v = sample[ext]
                data = v.encode("utf-8") if isinstance(v, str) else bytes(v)
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o444
                ti.uname = ti.gname = "lossyvision"
                ti.uid = ti.gid = 0
                self._tar.addfile(ti, io.BytesIO(data))
        except OSError as e:
            self.abort()
            if isinstance(e, storage.StorageError):
                raise
            raise storage.as_storage_error(e, self.path) from e
        self.count += 1
        self.first_key = self.first_key or key
        self.last_key = key

    def commit(self) -> tuple[str, int]:
        """Close the tar, publish it under ``path``; returns (sha256, size)."""
        try:
            self._tar.close()
        except OSError as e:
            self.abort()
            if isinstance(e, storage.StorageError):
                raise
            raise storage.as_storage_error(e, self.path) from e
        self._file.commit()
        return self._tee.h.hexdigest(), self._tee.n

    def abort(self) -> None:
        # Mark the tar stream closed first: otherwise its finaliser flushes into the closed file.
        self._tar.closed = True
        self._tar.fileobj.closed = True
        self._file.abort()

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_tar_atomic(path: str, samples: Iterable[dict[str, Any]]) -> tuple[str, int]:
    """Write WebDataset samples (``{"__key__": k, "png": bytes, ...}``) to ``path`` (a local path
    or an fsspec URL) atomically; return (sha256, size). Raises storage.StorageError naming the
    path when the disk is full or the store refuses the write; no partial shard is left behind."""
    with TarShardWriter(path) as w:
        for s in samples:
            w.write(s)
        return w.commit()


def write_json_atomic(path: str, obj: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write JSON to ``path`` via a temp file + rename, or one PUT on a store (NaN/inf written as null;
    ``default`` as in json.dumps, for values JSON has no type for)."""
    data = (json.dumps(_finite(obj), indent=1, sort_keys=False, allow_nan=False, default=default) + "\n").encode()
    storage.write_bytes_atomic(path, data)


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


def manifest_path(vdir: str) -> str:
    """Where a variant folder's manifest is: ``_manifest.json``, or a legacy ``manifest.json`` when only that exists."""
    p = storage.join(vdir, MANIFEST)
    if storage.isfile(p):
        return p
    legacy = storage.join(vdir, LEGACY_MANIFEST)
    return legacy if storage.isfile(legacy) else p


def has_manifest(vdir: str) -> bool:
    """True when ``vdir`` holds a manifest (either name): it is a variant folder."""
    return storage.isfile(manifest_path(vdir))


class ManifestError(ValueError):
    """A manifest that is not valid JSON, not an object, or of another format."""


def load_manifest(vdir: str) -> dict | None:
    """The manifest of a variant folder (local or URL), or None when there is none yet."""
    p = manifest_path(vdir)
    if not storage.isfile(p):
        return None
    try:
        m = json.loads(storage.read_text(p))
    except (UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{p} is not valid JSON ({e}); delete the folder to rebuild it, or write to a new --out") from None
    if not isinstance(m, dict):
        raise ManifestError(f"{p} is not a lossyvision manifest (a JSON {type(m).__name__}, not an object); delete the folder "
                            "to rebuild it, or write to a new --out")
    if m.get("format") != FORMAT:
        raise ManifestError(f"{p}: unknown manifest format {m.get('format')!r}; expected {FORMAT}: delete the folder to rebuild "
                            "it, or write to a new --out")
    return m


# What AtomicWriter leaves when killed: <shard or manifest>.tmp-<host>-<pid>-<8 hex> (storage.temp_suffix).
# Nothing else is ever deleted, whatever the folder holds.
_TEMP_NAME = re.compile(r"(shard-\d{6,}\.tar|_?manifest\.json)\.tmp-.+-\d+-[0-9a-f]{8}")


def clean_temp_files(vdir: str) -> int:
    """Remove temp files a killed job left behind in a local folder; returns how many.
    (Object stores have none: an unfinished upload never becomes an object.)"""
    if storage.is_remote(vdir):
        return 0
    n = 0
    for p in glob.glob(os.path.join(storage.local_path(vdir), "*.tmp-*")):
        if not _TEMP_NAME.fullmatch(os.path.basename(p)) or not os.path.isfile(p) or os.path.islink(p):
            continue
        try:
            os.unlink(p)
            n += 1
        except OSError:
            pass
    return n
