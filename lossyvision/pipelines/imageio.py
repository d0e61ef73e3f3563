"""Reading source images into uint8 RGB, the same way for every dataset.

Policy for real-world files:
- CMYK JPEGs (ImageNet has a few) are converted by Pillow, which undoes Adobe's inverted CMYK;
- greyscale images are replicated to three channels;
- alpha is dropped (not composited), as torchvision's loader does;
- 16-bit PNGs are scaled to 8 bit with rounding (``v * 255 / 65535``), not truncated;
- EXIF orientation is **not** applied: torchvision's ImageFolder loader and ImageNet's pretrained
  weights see the stored pixel order, so applying it would change what the models were trained on;
- truncated, zero-byte or unreadable files raise :class:`SourceError` with the reason; the prepare
  job records them in the manifest and carries on;
- memory is bounded before any decode: only regular files are opened (a FIFO or a symlink to
  ``/dev/zero`` is refused, not read), files larger than an uncompressed image of the pixel limit
  are refused unread, and the width x height in the header (every format and bit depth, read by
  Pillow without decoding) must be at most ``max_pixels`` (:data:`DEFAULT_MAX_PIXELS`).
"""

from __future__ import annotations

import io
import os
import stat as stat_mod
import struct

import numpy as np

# 2^27 = 134 M pixels (e.g. 13400 x 10000). The prepare job peaks at <= 24x the image's RGB bytes
# + 64 MiB per worker (docs/scale.md), i.e. ~9.7 GB at this limit: two workers fit in 24 GB.
DEFAULT_MAX_PIXELS = 1 << 27
# A compressed file is never larger than its pixels stored raw at 16-bit RGBA, plus headers.
_BYTES_PER_PIXEL_MAX = 8
_HEADER_SLACK = 16 << 20


class SourceError(Exception):
    """A source file could not be read; the message is the reason recorded in the manifest."""


def to_rgb8(a: np.ndarray) -> np.ndarray:
    """Any decoded array (grey, grey+alpha, RGB, RGBA; 8 or 16 bit) -> uint8 HxWx3."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        raise SourceError(f"unsupported sample type {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise SourceError(f"unsupported image shape {a.shape}")
    c = a.shape[2]
    if c in (1, 2):  # grey or grey+alpha
        a = np.repeat(a[..., :1], 3, axis=2)
    elif c >= 3:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image of ``max_pixels`` can be (raw 16-bit RGBA plus headers)."""
    return max_pixels * _BYTES_PER_PIXEL_MAX + _HEADER_SLACK


def read_file_bounded(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The bytes of an image file, refusing special files and files too large for ``max_pixels``
    without reading them (local paths and fsspec URLs)."""
    from .. import storage

    limit = max_file_bytes(max_pixels)
    try:
        if not storage.is_remote(path):  # object stores hold no FIFOs or devices
            mode = os.stat(storage.local_path(path))  # follows symlinks: a link to /dev/zero is a character device
            if not stat_mod.S_ISREG(mode.st_mode):
                raise SourceError(f"{storage.special_kind(mode.st_mode)}, not an image file (skipped unread)")
            if mode.st_size > limit:
                raise SourceError(f"file of {mode.st_size} bytes is larger than any image within --max-pixels {max_pixels} "
                                  f"can be ({limit} bytes); skipped unread")
        data = storage.read_bytes(path, limit + 1)  # never more than one byte past the limit, whatever the file holds
    except OSError as e:
        raise SourceError(f"cannot read file: {e.strerror or e}") from None
    if len(data) > limit:
        raise SourceError(f"file is larger than any image within --max-pixels {max_pixels} can be ({limit} bytes)")
    return data


def check_pixels(w: int, h: int, max_pixels: int, what: str = "image") -> None:
    if w * h > max_pixels:
        raise SourceError(f"{what} of {w}x{h} = {w * h} pixels is over --max-pixels {max_pixels}; raise it if you have the memory")


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding the pixels; raises
    :class:`SourceError` when the format is not recognised."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _bomb_check_off():
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except UnidentifiedImageError:
        raise SourceError("not an image file (cannot identify image format)") from None
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise SourceError(f"cannot read image header: {e}") from None


class _bomb_check_off:
    """Pillow's own decompression-bomb check (89 M px warning, 179 M px error) is replaced by
    ``max_pixels``, checked before decoding; a global of Pillow's, restored on exit."""

    def __enter__(self) -> None:
        from PIL import Image

        self._old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc: object) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self._old


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (any format Pillow reads; 16-bit PNG at full range) as uint8 HxWx3
    RGB, after checking the header's pixel count against ``max_pixels``."""
    if not data:
        raise SourceError("zero-byte file")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16:
        # 16-bit PNG: Pillow would truncate 16-bit RGB to 8 bit, so decode the full range here
        import imagecodecs

        check_pixels(*header_size(data), max_pixels)
        try:
            return to_rgb8(imagecodecs.png_decode(data))
        except Exception as e:
            raise SourceError(f"corrupt PNG: {e}") from None
    from PIL import Image, UnidentifiedImageError

    w = h = 0
    try:
        with _bomb_check_off(), Image.open(io.BytesIO(data)) as im:  # reads the header only
            w, h = im.size
            check_pixels(w, h, max_pixels)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_rgb8(np.asarray(im).astype(np.uint16) if im.mode != "I" else np.clip(np.asarray(im), 0, 65535).astype(np.uint16))
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise SourceError("not an image file (cannot identify image format)") from None
    except MemoryError:
        raise SourceError(f"out of memory decoding a {w}x{h} image; lower --max-pixels or use a machine with more memory") from None
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise SourceError(f"cannot decode image: {e}") from None


def read_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file (local path or fsspec URL) as uint8 HxWx3 RGB (see the module docstring for the policy)."""
    return decode_rgb(read_file_bounded(path, max_pixels), max_pixels)
