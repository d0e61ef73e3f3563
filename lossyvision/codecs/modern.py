"""WebP, AVIF and JPEG XL through imagecodecs (beyond the papers).

imagecodecs' defaults are not what a rate study wants: its WebP defaults to lossless and its
AVIF to 4:4:4. These codecs pin lossy WebP (method 6), AVIF 8-bit 4:2:0 and lossy JPEG XL, so
q is always a lossy quality in 0..100 (100 is still lossy for WebP/AVIF; JPEG XL uses 0..99).
"""

from __future__ import annotations

import numpy as np

from .base import Codec
from .registry import register_codec


class _ImagecodecsCodec(Codec):
    q_name = "quality"
    q_range = (0, 100)
    q_direction = 1
    spec_prefix = "q"
    q_default = 75
    lib = ""

    def _check_options(self) -> None:
        self._only_options()

    @classmethod
    def versions(cls) -> dict[str, str]:
        import imagecodecs

        return {"imagecodecs": imagecodecs.__version__, cls.lib: getattr(imagecodecs, f"{cls.lib}_version")()}


@register_codec
class WebP(_ImagecodecsCodec):
    name = "webp"
    ext = "webp"
    lib = "webp"
    description = "libwebp lossy (method 6), quality 0-100"

    def _encode(self, rgb: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.webp_encode(rgb, level=float(self.q), lossless=False, method=6, numthreads=1)

    def _decode(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.webp_decode(data, hasalpha=False)


@register_codec
class AVIF(_ImagecodecsCodec):
    name = "avif"
    ext = "avif"
    lib = "avif"
    description = "libavif (AV1 intra) 8-bit 4:2:0, quality 0-100, speed 6"

    def _encode(self, rgb: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.avif_encode(rgb, level=int(self.q), speed=6, bitspersample=8, pixelformat="420", numthreads=1)

    def _decode(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.avif_decode(data, numthreads=1)


@register_codec
class JPEGXL(_ImagecodecsCodec):
    name = "jxl"
    ext = "jxl"
    lib = "jpegxl"
    q_range = (0, 99)
    description = "libjxl lossy (VarDCT, effort 7), quality 0-99"

    def _encode(self, rgb: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.jpegxl_encode(rgb, level=int(self.q), effort=7, lossless=False, numthreads=1)

    def _decode(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpegxl_decode(data, numthreads=1)
