"""Training-time streaming of lossyvision shards (see docs/shards.md).

`ShardStream` reads shard i of a codec variant (or of several aligned variants: a mixture), and
optionally shard i of `orig` in lockstep, decodes in DataLoader workers and yields **uint8** CHW
tensors; normalisation happens on the device (`to_device`), which halves the CPU cost per sample
compared with float tensors.

Splitting: each epoch the shard order is permuted (seeded by `seed + epoch`), the permuted shards are
laid end to end and cut into `world_size` equal contiguous ranges of `num_samples // world_size`
samples (the remainder is dropped, as DistributedSampler with `drop_last=True` does). `make_loader`
then cuts a rank's range into whole batches and deals contiguous runs of batches to the DataLoader
workers, each of which reads its run, shuffles it through a buffer, decodes and collates. So the
number of batches per epoch is known exactly (`len(loader)`), is the same on every rank and does not
depend on the worker count, and with `drop_last=True` (training) no batch is short: the ragged tail
of at most `batch_size - 1` samples per rank is dropped, a different one each epoch.

Why not webdataset's own `split_by_node` / `split_by_worker`: they deal whole shards, so ranks get
unequal sample counts whenever shards differ in size or do not divide evenly (an ImageNet train split
is 1282 shards, the last one short), and DDP hangs on the last all-reduce of the rank with more
batches. webdataset does the rest: tar members are grouped into samples by `group_by_keys`, the
sample buffer is `webdataset.filters._shuffle`; batching is done here, so a batch of mixed image sizes
names its shard and key; tar headers are parsed by a small USTAR reader (below) because `tarfile`
costs ~40 us per member.

Integrity: a shard's size is checked against the manifest before it is read, and a shard read to its
end is hashed while it streams (sha256, once per process) and checked then: flipped bytes fail
loudly instead of decoding to garbage. Images are checked against `max_pixels` from their header
before they are decoded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import random
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lossyvision import accel, storage
from lossyvision.pipelines.epoch import SharedEpoch
from lossyvision.pipelines.imageio import SourceError
from lossyvision.pipelines.shards import MANIFEST, has_manifest, manifest_path

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_LABEL = -1



class ShardError(RuntimeError):
    """A shard is unreadable, truncated, or disagrees with its manifest or with `orig`."""


class OptionError(ValueError):
    """An option's value is wrong (the CLIs exit 2 with its message)."""


def check_limits(**values) -> None:
    """OptionError unless each value (or (value, lowest)) is None or an int >= its lowest (1 by default)."""
    for name, v in values.items():
        v, lo = v if isinstance(v, tuple) else (v, 1)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise OptionError(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")


_WORKER_WRAP = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_error_message(e: BaseException) -> str:
    """The original message of an exception a DataLoader worker raised.

    torch re-raises it in the main process as the same type with the message replaced by
    "Caught X in DataLoader worker process N." and the worker's whole traceback; its last line is
    "X: <original message>"."""
    msg = str(e)
    if not _WORKER_WRAP.match(msg):
        return msg
    last = msg.rstrip().rsplit("\n", 1)[-1]
    name, sep, rest = last.partition(": ")
    return rest if sep and re.fullmatch(r"[\w.]+", name) else last


def resolve_device(name: str | None) -> torch.device:
    """`cpu`, `cuda`, `cuda:N`, `mps`, or None / `auto` (cuda if available, else cpu); OptionError
    naming the fix when the device does not exist here."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise OptionError(f"unknown device {name!r}; choose cpu, cuda, cuda:N, mps or auto")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError("CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s), cuda:0 to cuda:{}".format(torch.cuda.device_count() - 1))
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptionError("MPS is not available here; use --device cpu")
    return dev


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int
    size: int | None = None       # bytes, as the manifest records them (None: not recorded)
    sha256: str | None = None


@dataclass(frozen=True)
class VariantInfo:
    """What a loader needs from `<variant_dir>/_manifest.json` (or a legacy `manifest.json`)."""

    root: str                 # the variant folder: a local path or an fsspec URL
    variant: str
    spec: str | None          # codec spec (`jpeg-q10`); None for `orig`
    ext: str                  # member holding the image: `png` for orig, the codec ext otherwise
    shards: tuple[ShardInfo, ...]
    task: str
    classes: tuple[str, ...] | None
    manifest: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    def shard_path(self, name: str) -> str:
        """Path or URL of one of this variant's shards."""
        return storage.join(self.root, name)


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if storage.is_remote(path) else os.path.basename(os.path.normpath(path))


def read_variant(variant_dir: str | os.PathLike) -> VariantInfo:
    """Parse a variant's manifest (local path or URL); raise FileNotFoundError/ValueError naming the problem."""
    root = os.fspath(variant_dir)
    path = manifest_path(root)
    if not storage.isfile(path):
        raise FileNotFoundError(f"no {MANIFEST} in {root} (is this a variant folder written by prepare-shards?)")
    try:
        m = json.loads(storage.read_text(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rebuild the variant with prepare-shards") from None
    if not isinstance(m, dict) or not isinstance(m.get("shards", []), list):
        raise ValueError(f"{path}: not a lossyvision manifest (a JSON {type(m).__name__}, expected an object "
                         "with a 'shards' list); rebuild the variant with prepare-shards")
    codec = m.get("codec")
    done = [s for s in m.get("shards", []) if s]  # unfinished shards of an interrupted job are null
    try:
        shards = tuple(_shard_info(s) for s in sorted(done, key=lambda s: s["name"]))
        if codec is not None and not (isinstance(codec, dict) and isinstance(codec.get("ext"), str)):
            raise TypeError("codec")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed manifest ({type(e).__name__}: {e}); rebuild the variant with "
                         "prepare-shards") from None
    if not shards:
        raise ValueError(f"{path}: manifest lists no shards")
    if not m.get("complete", True):
        log.warning("%s: manifest is not marked complete; reading the %d shards it lists", path, len(shards))
    classes = m.get("classes")
    return VariantInfo(
        root=root, variant=m.get("variant", _basename(root)),
        spec=codec["spec"] if codec else None, ext=codec["ext"] if codec else m.get("orig_format", "png"),
        shards=shards, task=m.get("task", "none"),
        classes=tuple(classes) if classes else None, manifest=m)


def _shard_info(s: dict) -> ShardInfo:
    from lossyvision.names import check_name

    size = s.get("size")
    return ShardInfo(check_name("shard", s["name"]), int(s["count"]), int(size) if size is not None else None,
                     s.get("sha256") or None)


def check_aligned(a: VariantInfo, b: VariantInfo) -> None:
    """Raise ShardError unless the two variants are partitioned identically (same names and counts)."""
    if [(s.name, s.count) for s in a.shards] != [(s.name, s.count) for s in b.shards]:
        raise ShardError(f"variants {a.root} and {b.root} are not partitioned identically "
                         f"({len(a.shards)} vs {len(b.shards)} shards or different counts); "
                         "prepare them from the same source list with the same --shard-size")


class _NotPlainUstar(Exception):
    """A header the fast reader does not handle (pax, GNU long names, links, base-256 sizes)."""


def _ustar_files(f, path: str) -> Iterator[dict]:
    """`{"fname", "data"}` per regular file of a plain USTAR tar, what `prepare-shards` writes.

    Python's `tarfile` spends ~40 us parsing each 512-byte header (measured: 130-170 us per 3-member
    sample against ~15 us here), as much as decoding a small JPEG, so plain headers are read here;
    at the first header of any other kind the rest of the file goes to webdataset's
    `tar_file_iterator` (tarfile), from that header on.
    """
    from webdataset.tariterators import tar_file_iterator

    while True:
        hdr = f.read(512)
        if not hdr:
            return
        if len(hdr) < 512:
            raise ShardError(f"{path}: truncated or corrupt tar (a {len(hdr)}-byte header at the end)")
        if hdr == b"\0" * 512:
            return  # end-of-archive marker
        try:
            if hdr[257:262] != b"ustar" or hdr[156:157] not in (b"0", b"\0", b"5") or hdr[124] & 0x80:
                raise _NotPlainUstar
            chk = int(hdr[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
            size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except (_NotPlainUstar, ValueError):
            if not f.seekable():
                raise ShardError(f"{path}: not a plain USTAR tar and not seekable") from None
            f.seek(-512, os.SEEK_CUR)
            for m in tar_file_iterator(f):
                yield m
            return
        if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
            raise ShardError(f"{path}: truncated or corrupt tar (bad header checksum)")
        name = hdr[:100].split(b"\0", 1)[0]
        prefix = hdr[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
        data = f.read(size)
        if len(data) < size:
            raise ShardError(f"{path}: truncated or corrupt tar ({name.decode(errors='replace')} ends early)")
        pad = -size % 512
        if pad:
            f.read(pad)
        if hdr[156:157] != b"5":
            yield {"fname": name.decode("utf-8"), "data": data}


class _CountingReader:
    """A shard's file object that counts, and optionally hashes, the bytes as they are read, so the
    integrity check costs no second read. A backward seek (the tarfile fallback re-reads one header)
    re-reads bytes already hashed; a forward seek leaves a gap, and the hash is then dropped."""

    def __init__(self, f, hash_it: bool) -> None:
        self.f, self.pos, self.done = f, 0, 0
        self.sha = hashlib.sha256() if hash_it else None
        self.gap = False

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        end = self.pos + len(data)
        if end > self.done:
            if self.pos > self.done:
                self.gap, self.sha = True, None
            elif self.sha is not None:
                self.sha.update(memoryview(data)[self.done - self.pos:])
            self.done = end
        self.pos = end
        return data

    def seekable(self) -> bool:
        return self.f.seekable()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = self.f.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


# shards whose sha256 this process has checked: (path, sha256); each is hashed on its first full read
_VERIFIED: set[tuple[str, str]] = set()


def _check_size_before(path: str, size: int | None) -> None:
    if size is None or storage.is_remote(path):
        return  # remote: the bytes read are counted instead (no extra request per shard)
    st = storage.stat(path)
    if st is not None and st.size != size:
        raise ShardError(f"{path}: {st.size} bytes but the manifest says {size} (truncated or changed since it was "
                         "written); rebuild it with prepare-shards")


def _check_after(path: str, r: _CountingReader, size: int | None, sha256: str | None) -> None:
    r.drain()  # the end-of-archive blocks and padding: a few KiB
    if size is not None and not r.gap and r.done != size:
        raise ShardError(f"{path}: {r.done} bytes but the manifest says {size} (truncated or changed since it was "
                         "written); rebuild it with prepare-shards")
    if sha256 is not None and r.sha is not None:
        if r.sha.hexdigest() != sha256:
            raise ShardError(f"{path}: does not match the manifest's sha256; rebuild it with prepare-shards")
        _VERIFIED.add((path, sha256))


def iter_tar_samples(path: str | os.PathLike, size: int | None = None, sha256: str | None = None) -> Iterator[dict]:
    """Yield `{"__key__": key, ext: bytes, ...}` groups from a tar (local path or URL), in file order.

    Members are grouped into samples by webdataset's `group_by_keys` (key = name up to the first dot
    of its last component, as every webdataset reader splits it); errors become ShardError naming
    the shard. With `size` / `sha256` (the manifest's), a local shard's size is checked before it is
    read, and once it is read to its end its byte count and (on the first full read in this process)
    its sha256, hashed while streaming, must match: a shard changed after it was written fails there."""
    from webdataset.tariterators import group_by_keys

    path = os.fspath(path)
    try:
        _check_size_before(path, size)
        with storage.open_read(path) as f:
            r = _CountingReader(f, hash_it=sha256 is not None and (path, sha256) not in _VERIFIED)
            files = ({**m, "__url__": path} for m in _ustar_files(r, path))
            for sample in group_by_keys(files, lcase=False):
                sample.pop("__url__", None)
                yield sample
            _check_after(path, r, size, sha256)
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: truncated or corrupt tar ({type(e).__name__}: {e})") from e


def decode_png(data: bytes, mode: str = "RGB") -> np.ndarray:
    """PNG -> uint8 HxWx3 (mode RGB) or HxW (mode L), writable (torch refuses read-only buffers).

    imagecodecs (libpng) decodes a 224x224 crop in 1.3 ms against Pillow's 1.8 ms
    (tools/bench/train.py); Pillow stays the fallback for the modes it must convert."""
    import imagecodecs

    a = imagecodecs.png_decode(data)
    if a.dtype == np.uint8 and ((mode == "RGB" and a.ndim == 3 and a.shape[2] == 3) or (mode == "L" and a.ndim == 2)):
        return a
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert(mode))


def decode_lossless(data: bytes, ext: str) -> np.ndarray:
    """An `orig` image (or a restored one): PNG, QOI (--orig-format qoi) or NumPy .npy (--orig-format npy)."""
    if ext == "qoi":
        import imagecodecs

        return imagecodecs.qoi_decode(data)
    if ext == "npy":
        return decode_npy(data)
    return decode_png(data)


_NPY_HEADER = re.compile(rb"\{'descr': '\|u1', 'fortran_order': False, 'shape': \((\d+), (\d+), 3\), \} *\n")


def decode_npy(data: bytes) -> np.ndarray:
    """A uint8 HxWx3 `.npy` (what `--orig-format npy` writes). The header np.save writes for such an
    array is parsed here and the pixels are a view of `data`: np.load spends ~0.27 ms per 224x224 image
    (most of it `ast.literal_eval` of the header and a copy); other .npy files go through np.load."""
    if data[:8] == b"\x93NUMPY\x01\x00":
        n = int.from_bytes(data[8:10], "little")
        m = _NPY_HEADER.fullmatch(data[10:10 + n])
        if m is not None:
            h, w = int(m.group(1)), int(m.group(2))
            if len(data) == 10 + n + h * w * 3:
                return np.frombuffer(data, np.uint8, offset=10 + n).reshape(h, w, 3)
    a = np.load(io.BytesIO(data), allow_pickle=False)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"an orig .npy must be uint8 HxWx3, got {a.dtype} {a.shape}")
    return a


def _as_chw(rgb: np.ndarray) -> torch.Tensor:
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    # a permuted HWC view: already channels_last in memory, which is what the model wants
    if not (rgb.flags.writeable and rgb.flags.c_contiguous):
        rgb = np.array(rgb)
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _label(sample: dict, where: str, classes: tuple[str, ...] | None):
    if "cls" in sample:
        key = sample["__key__"]
        try:
            y = int(sample["cls"])
        except ValueError:
            raise ShardError(f"{where}: sample {key!r} has a non-integer .cls "
                             f"{sample['cls'][:20]!r}") from None
        if classes is not None and not 0 <= y < len(classes):
            raise ShardError(f"{where}: sample {key!r} has .cls {y}, outside the manifest's {len(classes)} "
                             f"classes (0..{len(classes) - 1}); rebuild the shard with prepare-shards")
        if y < 0:
            raise ShardError(f"{where}: sample {key!r} has a negative .cls {y}; rebuild the shard with prepare-shards")
        return y
    if "seg.png" in sample:
        return torch.from_numpy(decode_png(sample["seg.png"], mode="L"))
    return NO_LABEL


_PNG_SIG = b"\x89PNG\r\n\x1a\n"
# Bitstreams Pillow has no reader for: asking it first cost 406 us per 224x224 BPG sample (jxl: 156 us),
# a failed open each time; their size comes from the sample json.
_NO_PILLOW_READER = frozenset(("hevc", "msh", "jxl"))


def image_size(data: bytes, ext: str, meta: bytes | None) -> tuple[int, int] | None:
    """(width, height) of an encoded image without decoding it: PNG and QOI headers directly, other
    formats Pillow reads from their header, and bitstreams Pillow cannot read (HEVC, BPG, msh) from
    the sample's json (`w`, `h`), which prepare-shards records; None for .npy (its pixels are its bytes)."""
    if data[:8] == _PNG_SIG and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:4] == b"qoif" and len(data) >= 12:
        return int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big")
    if data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
        if size is not None:
            return size
    if ext == "npy":
        return None
    if ext not in _NO_PILLOW_READER:
        from lossyvision.pipelines.imageio import SourceError, header_size

        try:
            return header_size(data)
        except SourceError:
            pass
    try:
        m = json.loads(meta) if meta else {}
        return int(m["w"]), int(m["h"])
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"cannot read the size of its .{ext} from the header, and its json has no w and h "
                         "to check against --max-pixels") from None


_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF segment, walking the marker segments before it: ~2-5 us
    against Pillow's ~60 us (an eighth of decoding a 224x224 crop); None when it cannot tell."""
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any SOF
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def check_image_pixels(data: bytes, ext: str, meta: bytes | None, max_pixels: int) -> None:
    """SourceError when an encoded image is over `max_pixels` (see `image_size`), before it is decoded."""
    from lossyvision.pipelines.imageio import check_pixels

    size = image_size(data, ext, meta)
    if size is not None:
        check_pixels(size[0], size[1], max_pixels, f".{ext}")


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most ``limit`` characters (for one-line errors)."""
    return (str(e).strip().splitlines() or [""])[0][:limit]


def variant_decoder(info: "VariantInfo"):
    """The codec that decodes a (compressed) variant's bitstreams, as its manifest describes it."""
    from lossyvision.codecs import CodecError, from_spec

    block = info.manifest.get("codec") or {}
    if block.get("name") == "msh":
        # the spec alone drops weights=: the manifest names the weights (and their sha256) it was encoded with
        from lossyvision.codecs.msh import decoder_for_manifest

        try:
            return decoder_for_manifest(block, info.root)
        except CodecError as e:
            raise ShardError(first_line(e, 1000)) from None
    return from_spec(info.spec)


def decode_image(members: dict, info: "VariantInfo", codecs: dict, max_pixels: int) -> np.ndarray:
    """A sample's image as uint8 HxWx3: its `decoded.png` if stored, else its bitstream through the
    variant's codec (built once into `codecs`, keyed by spec); the pixel limit is checked first."""
    if "decoded.png" in members:
        check_image_pixels(members["decoded.png"], "png", None, max_pixels)
        return decode_png(members["decoded.png"])
    if info.ext not in members:
        raise ValueError(f"no .{info.ext} member")
    data = members[info.ext]
    check_image_pixels(data, info.ext, members.get("json"), max_pixels)
    if info.spec is None:
        return decode_lossless(data, info.ext)
    codec = codecs.get(info.spec)
    if codec is None:
        codec = codecs[info.spec] = variant_decoder(info)
    return codec.decode(data)


def _check_meta_size(rgb: np.ndarray, meta: bytes | None) -> None:
    """A decoded image must have the size its json records (a bitstream that decodes to another size is corrupt)."""
    if not meta:
        return
    try:
        m = json.loads(meta)
        h, w = int(m["h"]), int(m["w"])
    except (ValueError, TypeError, KeyError):
        return
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"decodes to {rgb.shape[1]}x{rgb.shape[0]} but its json says {w}x{h}")


def split_range(start: int, stop: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous part `index` of `parts` of [start, stop), sizes differing by at most one."""
    n = stop - start
    return start + n * index // parts, start + n * (index + 1) // parts


@dataclass(frozen=True)
class _Raw:
    """One sample as read from the tars, still encoded: what the shuffle buffer holds (~8x less
    memory than decoded pairs, and the same decode work)."""

    key: str
    where: str                 # the variant shard it came from, for error messages
    label: dict                # the members holding the label (`cls` or `seg.png`), possibly empty
    vidx: int                  # which variant of a mixture was drawn
    image: dict                # the chosen variant's members (`decoded.png` and/or its codec ext, json)
    orig: bytes | None
    orig_meta: bytes | None = None


class ShardStream(IterableDataset):
    """Stream `(x, x_tilde, y, key)` (paired) or `(x_tilde, y, key)` (single) from shards.

    x, x_tilde: uint8 3xHxW; y: int class (`cls`), uint8 HxW map (`seg.png`) or -1.
    `transform`, when given, is applied to each sample as iteration yields it (that tuple, images as
    uint8 3xHxW tensors) in the process that decodes it, a DataLoader worker under `make_loader`;
    what it returns is the sample from then on (batched by `default_collate`). It must map one
    sample to one sample (`len()` counts samples) and be picklable for the `spawn`/`forkserver`
    worker start methods: a module-level function, a `functools.partial`, a torchvision transform.
    `variant_dir` is the folder of one variant (its manifest and shards), or a list of folders of
    aligned variants of the same (dataset, split): a *mixture*, where each sample comes from one of
    them, drawn per sample and epoch with a seeded generator (every variant is still read in lockstep,
    so keys are checked across all of them). `orig_dir`, when given, is the `orig` folder of the same
    (dataset, split), read in lockstep. Call `set_epoch(e)` before each epoch's `iter(loader)`: the
    epoch lives in shared memory (`SharedEpoch`), so persistent DataLoader workers (fork or spawn)
    read it too, once, when the epoch's iteration starts in them; the whole epoch (shard order,
    shuffle buffer, mixture draws) uses that value. Iterating yields samples; `make_loader` yields
    whole batches.
    """

    def __init__(self, variant_dir: str | os.PathLike | list | tuple, orig_dir: str | os.PathLike | None = None, *,
                 shuffle: bool = False, seed: int = 0, buffer_size: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 drop_remainder: bool | None = None, max_pixels: int | None = None,
                 transform: Callable[[tuple], Any] | None = None) -> None:
        super().__init__()
        from lossyvision.pipelines.imageio import DEFAULT_MAX_PIXELS

        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (sample tuple -> sample), got {type(transform).__name__}")
        self.transform = transform

        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        dirs = [variant_dir] if isinstance(variant_dir, (str, os.PathLike)) else list(variant_dir)
        if not dirs:
            raise ValueError("ShardStream needs at least one variant folder")
        self.variants = tuple(read_variant(d) for d in dirs)
        self.variant = self.variants[0]
        for other in self.variants[1:]:
            check_aligned(self.variant, other)
        self.orig = read_variant(orig_dir) if orig_dir is not None else None
        if self.orig is not None:
            check_aligned(self.orig, self.variant)
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = buffer_size if shuffle else 0
        if rank is None or world_size is None:
            rank, world_size = _dist_rank_world()
        self.rank, self.world_size = rank, world_size
        # with one rank nothing needs dropping; with several, equal counts per rank matter more
        self.drop_remainder = world_size > 1 if drop_remainder is None else drop_remainder
        self._epoch = SharedEpoch(0)
        self._codecs: dict = {}

    def __getstate__(self) -> dict:
        # codecs built while iterating in this process stay here: workers build their own
        return {**self.__dict__, "_codecs": {}}

    @property
    def paired(self) -> bool:
        return self.orig is not None

    @property
    def mixture(self) -> bool:
        return len(self.variants) > 1

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.variant.classes

    @property
    def epoch(self) -> int:
        """The epoch `set_epoch` set last (shared with this dataset's DataLoader workers)."""
        return self._epoch.get()

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all its workers together)."""
        a, b = self._rank_range()
        return b - a

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Batches `make_loader` yields per epoch on this rank, whatever the number of workers."""
        a, b = self._rank_range()
        return (b - a) // batch_size if drop_last else -(-(b - a) // batch_size)

    # -- partitioning -------------------------------------------------------------------
    def _rank_range(self) -> tuple[int, int]:
        total = self.variant.num_samples
        if self.drop_remainder:
            per = total // self.world_size
            return self.rank * per, (self.rank + 1) * per
        return split_range(0, total, self.world_size, self.rank)

    def shard_order(self, epoch: int | None = None) -> list[int]:
        """The shard permutation of `epoch` (default: the current one)."""
        order = list(range(len(self.variant.shards)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + (self.epoch if epoch is None else epoch)).shuffle(order)
        return order

    def _segments(self, start: int, stop: int, epoch: int) -> list[tuple[int, int, int]]:
        """(shard index, first, stop) pieces covering virtual positions [start, stop)."""
        segs, pos = [], 0
        for i in self.shard_order(epoch):
            n = self.variant.shards[i].count
            lo, hi = max(start, pos), min(stop, pos + n)
            if lo < hi:
                segs.append((i, lo - pos, hi - pos))
            pos += n
        return segs

    # -- reading --------------------------------------------------------------------------
    def _draw(self, key: str, epoch: int) -> int:
        """Which variant of a mixture this sample uses this epoch (validation: the same every epoch)."""
        if not self.mixture:
            return 0
        return random.Random(f"{self.seed}:{epoch if self.shuffle else 0}:{key}").randrange(len(self.variants))

    def _read_shard(self, i: int, first: int, stop: int, epoch: int) -> Iterator[_Raw]:
        infos = [*self.variants, *([self.orig] if self.orig is not None else [])]
        name = self.variant.shards[i].name
        paths = [v.shard_path(name) for v in infos]
        # aligned variants list the same shards in the same order (check_aligned): shard i of each
        its = [iter_tar_samples(p, v.shards[i].size, v.shards[i].sha256) for v, p in zip(infos, paths)]
        n = 0
        for vs in its[0]:
            group = [vs]
            for v, p, it in zip(infos[1:], paths[1:], its[1:]):
                s = next(it, None)
                if s is None:
                    raise ShardError(f"{p}: ends after {n} samples but {paths[0]} continues (key {vs['__key__']!r})")
                if s["__key__"] != vs["__key__"]:
                    raise ShardError(f"{name}: key mismatch at sample {n}: {v.variant} has {s['__key__']!r}, "
                                     f"{self.variant.variant} has {vs['__key__']!r} ({paths[0]})")
                group.append(s)
            n += 1
            if n <= first:
                continue
            if n > stop:
                count = self.variant.shards[i].count
                if stop >= count:  # a shard read to the manifest's count must end there
                    raise ShardError(f"{paths[0]}: holds more than the manifest's {count} samples (first extra key "
                                     f"{vs['__key__']!r}); rebuild it with prepare-shards")
                return
            key = vs["__key__"]
            k = self._draw(key, epoch)
            chosen = group[k]
            label_src = next((g for g in (chosen, *group) if "cls" in g or "seg.png" in g), chosen)
            label = {m: label_src[m] for m in ("__key__", "cls", "seg.png") if m in label_src}
            image = {m: chosen[m] for m in (infos[k].ext, "decoded.png", "json") if m in chosen}
            if image.keys() <= {"json"}:
                raise ShardError(f"{paths[k]}: sample {key!r} has no .{infos[k].ext} member "
                                 f"(members: {sorted(m for m in chosen if m != '__key__')})")
            orig = orig_meta = None
            if self.orig is not None:
                o = group[-1]
                if self.orig.ext not in o:
                    raise ShardError(f"{paths[-1]}: sample {key!r} has no .{self.orig.ext} member")
                orig, orig_meta = o[self.orig.ext], o.get("json")
            yield _Raw(key, paths[k], label, k, image, orig, orig_meta)
        for p, it in zip(paths[1:], its[1:]):
            # read the aligned shards to their end too: more samples is an error, and their size and sha256 get checked
            extra = next(it, None)
            if extra is not None:
                raise ShardError(f"{p}: holds more samples than {paths[0]} (first extra key {extra['__key__']!r}); "
                                 "prepare both variants from the same source list")
        if n < min(stop, self.variant.shards[i].count):
            raise ShardError(f"{paths[0]}: holds {n} samples but the manifest says {self.variant.shards[i].count} "
                             "(truncated shard? rerun prepare-shards to rewrite it)")

    def _decode(self, r: _Raw) -> tuple:
        """`([x,] x_tilde, y, key)` with the images as decoded: uint8 HxWx3 (or HxW) NumPy arrays."""
        info = self.variants[r.vidx]
        try:
            rgb = decode_image(r.image, info, self._codecs, self.max_pixels)
            _check_meta_size(rgb, r.image.get("json"))
            y = _label(r.label, r.where, self.classes) if r.label else NO_LABEL
            if isinstance(y, torch.Tensor) and tuple(y.shape) != rgb.shape[:2]:
                raise ValueError(f"its seg.png is {y.shape[1]}x{y.shape[0]} but its image is {rgb.shape[1]}x{rgb.shape[0]}")
            if r.orig is None:
                return rgb, y, r.key
            check_image_pixels(r.orig, self.orig.ext, r.orig_meta, self.max_pixels)
            x = decode_lossless(r.orig, self.orig.ext)
            if x.shape[:2] != rgb.shape[:2]:
                raise ValueError(f"its {self.orig.variant} image is {x.shape[1]}x{x.shape[0]} but its {info.variant} "
                                 f"image is {rgb.shape[1]}x{rgb.shape[0]}")
            return x, rgb, y, r.key
        except ShardError:
            raise
        except SourceError as e:  # over --max-pixels
            raise ShardError(f"{r.where}: sample {r.key!r}: {e}") from None
        except Exception as e:  # a decoder's own error type: name the shard and the sample
            raise ShardError(f"{r.where}: sample {r.key!r} does not decode "
                             f"({type(e).__name__}: {first_line(e)})") from e

    def _iter_raw(self, lo: int, hi: int, wid: int, epoch: int) -> Iterator[_Raw]:
        raw: Iterator[_Raw] = (s for seg in self._segments(lo, hi, epoch) for s in self._read_shard(*seg, epoch))
        if self.buffer_size > 1:
            from webdataset.filters import _shuffle

            rng = random.Random(hash((self.seed, epoch, self.rank, wid)))
            raw = _shuffle(raw, bufsize=self.buffer_size, initial=self.buffer_size, rng=rng)
        return raw

    def _iter_range(self, lo: int, hi: int, wid: int, epoch: int) -> Iterator[tuple]:
        return (self._decode(r) for r in self._iter_raw(lo, hi, wid, epoch))

    @staticmethod
    def _worker() -> tuple[int, int]:
        worker = get_worker_info()
        return (worker.id, worker.num_workers) if worker is not None else (0, 1)

    def _transformed(self, sample: tuple) -> Any:
        return self.transform(tuple(_as_chw(v) if isinstance(v, np.ndarray) else v for v in sample))

    def __iter__(self) -> Iterator:
        # a generator: the epoch is read at the first next(), in the worker, after set_epoch
        epoch = self.epoch
        wid, nw = self._worker()
        a, b = self._rank_range()
        lo, hi = split_range(a, b, nw, wid)
        for sample in self._iter_range(lo, hi, wid, epoch):
            if self.transform is not None:
                yield self._transformed(sample)
            else:
                yield tuple(_as_chw(v) if isinstance(v, np.ndarray) else v for v in sample)

    def iter_batches(self, batch_size: int, drop_last: bool = False) -> Iterator:
        """This worker's batches: a contiguous run of the rank's whole batches, collated."""
        epoch = self.epoch  # once per epoch, in the worker (see __iter__)
        wid, nw = self._worker()
        a, b = self._rank_range()
        nb = self.num_batches(batch_size, drop_last)
        blo, bhi = split_range(0, nb, nw, wid)
        lo, hi = a + blo * batch_size, min(a + bhi * batch_size, b)
        samples, wheres, keys = [], [], []
        for r in self._iter_raw(lo, hi, wid, epoch):
            sample = self._decode(r)
            samples.append(self._transformed(sample) if self.transform is not None else sample)
            wheres.append(r.where)
            keys.append(r.key)
            if len(samples) == batch_size:
                yield _collate_named(samples, wheres, keys)
                samples, wheres, keys = [], [], []
        if samples and not drop_last:
            yield _collate_named(samples, wheres, keys)


def _image_hw(v: object) -> tuple[int, int] | None:
    """(H, W) of an image in a sample: a decoded HxW[x3] array, or a [C x]H x W tensor a transform returned."""
    if isinstance(v, np.ndarray):
        return v.shape[:2]
    if isinstance(v, torch.Tensor) and v.dim() >= 2:
        return tuple(v.shape[-2:])
    return None


def _collate_named(samples: list, wheres: list[str], keys: list[str]) -> Any:
    """`collate`, refusing a batch of different image sizes with the shard and key of the odd one out."""
    from collections import Counter

    columns = len(samples[0]) if isinstance(samples[0], (tuple, list)) else 0
    for c in range(columns):
        sizes = [_image_hw(s[c]) if isinstance(s, (tuple, list)) and len(s) > c else None for s in samples]
        if sizes[0] is None:
            continue
        common = Counter(sz for sz in sizes if sz is not None).most_common(1)[0][0]
        if any(sz != common for sz in sizes):
            i = next(i for i, sz in enumerate(sizes) if sz != common)
            j = sizes.index(common)
            what = f"{sizes[i][1]}x{sizes[i][0]}" if sizes[i] else "not an image"
            raise ShardError(f"{wheres[i]}: sample {keys[i]!r} is {what} but sample {keys[j]!r} ({wheres[j]}) of the "
                             f"same batch is {common[1]}x{common[0]}; prepare the shards with one crop size, make the "
                             "transform return one size, or use batch size 1")
    return collate(samples)


def collate(samples: list) -> Any:
    """Batch `_decode` tuples: images (uint8 HxWx3 or HxW arrays) become one contiguous uint8 Bx3xHxW
    tensor, written plane by plane with `cv2.split`; the rest goes through `default_collate` (so does
    a sample that is not a tuple, as a transform may return).

    The images never become per-sample tensors: cv2.split deinterleaves a 224x224 sample in 24 us,
    against 108 us for torch's strided permute-copy (what `torch.stack` of CHW views does: 6 ms per
    batch of 32, a third of the decode work), and per-sample `from_numpy`/`permute` and the copy of
    read-only buffers cost another ~0.1 ms per pair (tools/bench/train.py). In a worker the batch is
    allocated in shared memory, as default_collate does, so it reaches the main process without
    another copy."""
    import cv2

    if not isinstance(samples[0], (tuple, list)):
        return torch.utils.data.default_collate(samples)
    out = []
    for col in zip(*samples):
        first = col[0]
        if not isinstance(first, np.ndarray):
            out.append(torch.utils.data.default_collate(list(col)))
            continue
        h, w = first.shape[:2]
        if any(a.shape[:2] != (h, w) for a in col):
            raise ShardError(f"cannot batch images of different sizes ({first.shape} and others); "
                             "prepare the shards with one crop size, or use batch size 1")
        shape = (len(col), 3, h, w)
        if get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(len(col) * 3 * h * w)
            batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        else:
            batch = torch.empty(shape, dtype=torch.uint8)
        planes = batch.numpy()
        for i, a in enumerate(col):
            if a.ndim == 2:
                planes[i] = a
            else:
                for c, plane in enumerate(cv2.split(a)):
                    planes[i, c] = plane
        out.append(batch)
    return out


class ShardBatches(IterableDataset):
    """Whole batches of a ShardStream; `len()` is the exact number of batches an epoch yields."""

    def __init__(self, stream: ShardStream, batch_size: int, drop_last: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.stream, self.batch_size, self.drop_last = stream, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        return self.stream.num_batches(self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator:
        return self.stream.iter_batches(self.batch_size, self.drop_last)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def variant_dir(shards: str | os.PathLike, variant: str, split: str | None = None) -> str:
    """`ROOT/<dataset>/<split>` (local path or URL) + variant -> its folder, with a clear error if it is
    missing; with `split`, `shards` is `ROOT/<dataset>` and the folder is `<shards>/<split>/<variant>`."""
    shards = os.fspath(shards)
    if split is not None:
        shards = storage.join(shards, split)
    path = storage.join(shards, variant)
    if not has_manifest(path):
        raise FileNotFoundError(f"variant {variant!r} not found under {shards}; "
                                f"available: {', '.join(available_variants(shards)) or 'none (wrong --shards path?)'}")
    return path


def available_variants(shards: str) -> list[str]:
    """Names of the variant folders (those holding a manifest) directly under `shards`."""
    return [n for n in storage.listdir(shards, dirs_only=True) if has_manifest(storage.join(shards, n))]


def to_device(x: torch.Tensor, device: torch.device | str, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              channels_last: bool = False) -> torch.Tensor:
    """uint8 Bx3xHxW -> normalised float32 on `device` (the copy is 4x smaller than float's).

    The copy is `non_blocking` (asynchronous from a pinned batch: `make_loader(..., pin_memory=True)`),
    and the scale and shift come from `accel.normalizer`, built once per (mean, std, device)."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scale, shift = accel.normalizer(mean, std, x.device)
    # (x/255 - m)/s as one scale and one shift in place: two passes, no temporaries (3x faster on a
    # CPU than the three-pass form; tools/bench/train.py)
    return x.float().mul_(scale).sub_(shift)


def make_loader(ds: ShardStream, batch_size: int, num_workers: int = 0, drop_last: bool = False,
                pin_memory: bool = False, multiprocessing_context: str | None = None,
                persistent_workers: bool | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader of whole batches of `ds` (collated in the workers, straight into shared memory).

    `len(loader)` is exactly the number of batches it yields, whatever `num_workers` is; with
    `drop_last=True` every batch holds `batch_size` samples (training: no size-1 batch reaches
    BatchNorm). A batch is a list `[x_tilde, y, keys]` (paired: `[x, x_tilde, y, keys]`), images
    uint8 Bx3xHxW, keys a list of str; with a `transform`, whatever `default_collate` makes of the
    transformed samples. `multiprocessing_context` (`"spawn"`, `"forkserver"`, `"fork"`) is DataLoader's own.

    `persistent_workers` (None: True when `num_workers > 0`; ignored without workers): the workers
    start at the first `iter(loader)` and serve every later epoch of this loader, so build it once
    per run and call `ds.set_epoch(e)` before each epoch's `iter(loader)`: the epoch is in shared
    memory and reaches the workers. Their decoders, and the sha256 checks already done, are kept.
    `pin_memory=True` (on CUDA) puts batches in page-locked memory, so `to_device`'s copy is asynchronous.
    """
    persistent = (num_workers > 0 if persistent_workers is None else bool(persistent_workers)) and num_workers > 0
    return torch.utils.data.DataLoader(
        ShardBatches(ds, batch_size, drop_last), batch_size=None, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=persistent,
        prefetch_factor=2 if num_workers > 0 else None,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None)
