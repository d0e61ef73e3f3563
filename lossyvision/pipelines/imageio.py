"""Reading source images into uint8 RGB, the same way for every dataset.

Policy for real-world files:
- CMYK JPEGs (ImageNet has a few) are converted by Pillow, which undoes Adobe's inverted CMYK;
- greyscale images are replicated to three channels;
- alpha is dropped (not composited), as torchvision's loader does;
- 16-bit PNGs are scaled to 8 bit with rounding (``v * 255 / 65535``), not truncated;
- EXIF orientation is **not** applied: torchvision's ImageFolder loader and ImageNet's pretrained
  weights see the stored pixel order, so applying it would change what the models were trained on;
- truncated, zero-byte or unreadable files raise :class:`SourceError` with the reason; the prepare
  job records them in the manifest and carries on.
"""

from __future__ import annotations

import numpy as np


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


def read_rgb(path: str) -> np.ndarray:
    """Read an image file (local path or fsspec URL) as uint8 HxWx3 RGB (see the module docstring for the policy)."""
    from .. import storage

    try:
        data = storage.read_bytes(path)
    except OSError as e:
        raise SourceError(f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise SourceError("zero-byte file")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16:
        # 16-bit PNG: Pillow would truncate 16-bit RGB to 8 bit, so decode the full range here
        import imagecodecs

        try:
            return to_rgb8(imagecodecs.png_decode(data))
        except Exception as e:
            raise SourceError(f"corrupt PNG: {e}") from None
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_rgb8(np.asarray(im).astype(np.uint16) if im.mode != "I" else np.clip(np.asarray(im), 0, 65535).astype(np.uint16))
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise SourceError("not an image file (cannot identify image format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SourceError(f"cannot decode image: {e}") from None
