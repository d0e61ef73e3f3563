"""HEVC intra through x265, in-process via PyAV's FFmpeg (libx265 encoder, FFmpeg hevc decoder).

Two codecs share this module:

``bpg`` reproduces what paper 1 ran, ``bpgenc -m 9 -b 8 -c ycbcr -q QP -f 420`` (libbpg's
x265 path, ``x265_glue.c``), as closely as x265 allows:

- colour: RGB -> YCbCr BT.601 **full range** (bpgenc's ``-c ycbcr`` default), 8 bit, 4:2:0, with
  bpgenc's own integer arithmetic, so Y, Cb and Cr at full resolution are bpgenc's bit for bit;
- ``-m 9`` selects x265 preset ``placebo`` with tune ``ssim``; intra only (keyint 1);
- bpgenc passes ``qp + 1`` to x265 in 8-bit mode ("to match the JCTVC quality"); so does this
  codec. x265 rejects QP > 51, so bpg QP 51 is encoded at x265 QP 51, not 52 (deviation 1);
- no info SEI (bpgenc sets ``bEmitInfoSEI = 0``; otherwise x265 writes ~2.3 KB per image).

Deviations, each small and documented:

1. QP 51 -> x265 QP 51 (see above): BPG-51 images are slightly larger than bpgenc's.
2. Container: the bytes are the raw HEVC Annex-B stream. Its parameter sets take 84 bytes at
   224x224 (VPS 27, SPS 47, PPS 10, start codes included; measured); a .bpg file drops the VPS and
   packs the needed SPS fields into a header of roughly 20 bytes (estimated from the BPG format
   specification), so rates here are about 60-65 bytes per image higher than bpgenc's: ~3 % at
   QP 41 and ~13 % at QP 51 on 224x224 crops. Compare codecs at equal bytes with this in mind.
3. Chroma: bpgenc decimates chroma with its own 10-tap filter and bpgdec interpolates with another;
   here the (bpgenc-exact) full-resolution chroma is averaged over 2x2 blocks, rounded half up, and
   interpolated bilinearly (centre-sited). Before 2026-12 the conversion was float32 and averaged
   unrounded chroma; the integer one is ~10x faster (0.36 vs 4.3 ms at 224x224) and changed BPG
   bytes by -0.21 % (QP 41) and -0.06 % (QP 51), PSNR by < 0.005 dB, on 8 ImageNet-style crops.
4. x265 runs single-threaded (``pools=none``, ``frame-threads=1``) so that output does not depend
   on the machine, and so that one task uses one core; parallelism comes from the pipeline.

Odd widths or heights, which 4:2:0 HEVC cannot code, and sides under 32 px, which x265 refuses,
are handled the way bpgenc handles sizes off its coding grid: the picture is padded (to even size,
and to at least 32 px a side) by repeating its last row/column, and the true size travels in a
header. BPG's file header always carries it; here an 8-byte prefix (``LVHS`` + width and height as
big-endian uint16) is added to padded images only, and the decoder crops back. Even-sized images of
32 px and up (every paper setting) are plain Annex-B.

``hevc`` is plain x265 at its own QP (no +1) with a choice of preset (default ``medium``, which
encodes about 2x faster than ``veryslow`` for about 10 % more bytes on scikit-image's photos) and no tune.
"""

from __future__ import annotations

import fractions
import struct

import numpy as np

from .base import Codec, CodecError
from .registry import register_codec

# x265 refuses pictures under 32 px a side (it shrinks the CTU below its TU depth settings:
# avcodec_open2 fails, measured on 1x1 .. 30x30, 16x64, 1x3000); 32 and up encode at any even size.
MIN_SIDE = 32
_SIZE_MAGIC = b"LVHS"  # cannot start an Annex-B stream, which begins with a 00 00 01 start code
X265_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")

# BT.601 full range (JPEG/JFIF) coefficients, as bpgenc's default '-c ycbcr'.
_KR, _KB = 0.299, 0.114
_RGB2YCC = np.array(
    [[_KR, 1 - _KR - _KB, _KB],
     [-0.5 * _KR / (1 - _KB), -0.5 * (1 - _KR - _KB) / (1 - _KB), 0.5],
     [0.5, -0.5 * (1 - _KR - _KB) / (1 - _KR), -0.5 * _KB / (1 - _KR)]]
)
_YCC2RGB = np.linalg.inv(_RGB2YCC)

# bpgenc's forward conversion (libbpg bpgenc.c, convert_init + rgb24_to_ycc, 8-bit in and out):
# integer coefficients lrint(k * 2^23), Y = (c.rgb + 2^22) >> 23, C = ((c.rgb + 2^22) >> 23) + 128,
# clamped. Those sums need 31 bits; float32 is exact below 2^24, so each coefficient is split as
# hi * 2^12 + lo and both halves go through OpenCV's float32 transform, where every partial sum is
# an integer below 2^22 and therefore exact whatever the order or FMA use. The result is bpgenc's
# Y, Cb and Cr bit for bit (tests/codecs/test_hevc.py), on any machine, in ~0.2 ms at 224x224.
_SHIFT, _SPLIT = 23, 12
_C_INT = np.rint(_RGB2YCC * (1 << _SHIFT)).astype(np.int64)  # lrint: ties to even, as np.rint
_C_HI = np.floor_divide(_C_INT, 1 << _SPLIT)
_C_LO = _C_INT - _C_HI * (1 << _SPLIT)  # 0 <= lo < 2^12
# Scaled by powers of two, which float32 represents exactly: lo/2^12 (plus the rounding term) and
# hi/2^11 (plus the chroma centre), so that Y = floor(hi.rgb/2^11 + floor(lo.rgb/2^12 + 2^10)/2^11).
_M_LO = (np.hstack([_C_LO, np.full((3, 1), 1 << (_SHIFT - 1))]) / (1 << _SPLIT)).astype(np.float32)
_M_HI = (np.hstack([_C_HI, np.array([[0], [128 << (_SHIFT - _SPLIT)], [128 << (_SHIFT - _SPLIT)]])])
         / (1 << (_SHIFT - _SPLIT))).astype(np.float32)
# Inverse (decoder side): float32, offsets for the chroma centre folded into a 3x4 matrix.
_M_INV = np.hstack([_YCC2RGB, -(_YCC2RGB[:, 1:] @ np.array([128.0, 128.0]))[:, None]]).astype(np.float32)


def _padded(n: int) -> int:
    """The coded size of a side of n pixels: even, and at least MIN_SIDE."""
    return max(MIN_SIDE, n + n % 2)


def rgb_to_ycc444(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> HxWx3 float32 holding bpgenc's integer Y, Cb, Cr (0-255, full range)."""
    import cv2

    f = np.asarray(rgb, dtype=np.float32)
    t = cv2.transform(f, _M_LO)  # (lo . rgb + 2^22) / 2^12
    np.floor(t, out=t)
    t = cv2.scaleAdd(t, 1.0 / (1 << (_SHIFT - _SPLIT)), cv2.transform(f, _M_HI), dst=t)
    np.floor(t, out=t)  # = ((c . rgb + 2^22) >> 23) + centre, exactly
    # bpgenc clamps to 255 (Cb and Cr reach 256 on saturated blue and red; nothing goes below 0).
    # A bare float would be the scalar (v, 0, 0, 0) to OpenCV: every channel is given its bound.
    return cv2.min(t, (255.0,) * 4, dst=t)


def rgb_to_yuv420(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB (even H and W) -> planar YUV 4:2:0 full range, shaped (H*3/2, W) as FFmpeg's
    yuv420p. Y, Cb and Cr at full resolution are bpgenc's (see above); chroma is then the mean of
    each 2x2 block, rounded half up (bpgenc decimates with its own 10-tap filter instead)."""
    import cv2

    h, w = rgb.shape[:2]
    ycc = rgb_to_ycc444(rgb)
    out = np.empty((h * 3 // 2, w), dtype=np.uint8)
    # INTER_AREA at exactly 1/2 is the 2x2 mean; the sums of integers and the quarter are exact
    y, cb, cr = cv2.split(ycc)
    out[:h] = y  # integers in 0..255: the cast is exact
    planes = out[h:].reshape(2, h // 2, w // 2)
    for plane, src in zip(planes, (cb, cr)):
        c = cv2.resize(src, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        c += 0.5
        plane[:] = np.floor(c, out=c)
    return out


def yuv420_to_rgb(yuv: np.ndarray, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`rgb_to_yuv420` with bilinear, centre-sited chroma interpolation (float32,
    rounded to nearest, ties to even, and saturated)."""
    import cv2

    planes = yuv[h:].reshape(2, h // 2, w // 2)
    cb = cv2.resize(planes[0].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    cr = cv2.resize(planes[1].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.transform(cv2.merge([yuv[:h].astype(np.float32), cb, cr]), _M_INV)
    return cv2.convertScaleAbs(cv2.max(rgb, (0.0,) * 4))  # |x| of x >= 0 with OpenCV's rounding and saturation


class _X265Codec(Codec):
    ext = "hevc"
    q_name = "QP"
    q_range = (0, 51)
    q_direction = -1
    spec_prefix = "qp"
    tune: str | None = None
    default_preset = "medium"

    def _check_options(self) -> None:
        self._only_options("preset")
        self.preset = self.options.get("preset", self.default_preset)
        if self.preset not in X265_PRESETS:
            raise CodecError(f"codec '{self.name}': unknown x265 preset {self.preset!r}; choose one of {', '.join(X265_PRESETS)}")

    def spec_suffix(self) -> str:
        return "" if self.preset == self.default_preset else f"-{self.preset}"

    def x265_qp(self) -> int:
        return int(self.q)

    def _encode(self, rgb: np.ndarray) -> bytes:
        h, w = rgb.shape[:2]
        ph, pw = _padded(h), _padded(w)
        if (ph, pw) != (h, w):
            if h > 0xFFFF or w > 0xFFFF:
                raise CodecError(f"codec '{self.name}': {w}x{h} is too large for the size header (65535 at most)")
            padded = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            return _SIZE_MAGIC + struct.pack(">HH", w, h) + self._encode_even(padded)
        return self._encode_even(rgb)

    def _encode_even(self, rgb: np.ndarray) -> bytes:
        import av

        h, w = rgb.shape[:2]
        ctx = av.CodecContext.create("libx265", "w")
        ctx.width, ctx.height = w, h
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = fractions.Fraction(1, 25)
        params = [
            f"qp={self.x265_qp()}",
            "keyint=1",
            "info=0",
            "range=full",
            "colorprim=bt470bg",
            "transfer=bt470bg",
            "colormatrix=bt470bg",
            "pools=none",
            "frame-threads=1",
            "log-level=error",
        ]
        opts = {"preset": self.preset, "x265-params": ":".join(params)}
        if self.tune:
            opts["tune"] = self.tune
        ctx.options = opts
        frame = av.VideoFrame.from_ndarray(rgb_to_yuv420(rgb), format="yuv420p")
        packets = list(ctx.encode(frame)) + list(ctx.encode(None))
        return b"".join(bytes(p) for p in packets)

    def _decode(self, data: bytes) -> np.ndarray:
        if data[:4] == _SIZE_MAGIC:
            if len(data) < 8:
                raise CodecError(f"{self.spec}: truncated size header")
            w, h = struct.unpack(">HH", data[4:8])
            rgb = self._decode_even(data[8:])
            if rgb.shape[0] != _padded(h) or rgb.shape[1] != _padded(w):
                raise CodecError(f"{self.spec}: size header says {w}x{h} but the stream holds {rgb.shape[1]}x{rgb.shape[0]}")
            return np.ascontiguousarray(rgb[:h, :w])
        return self._decode_even(data)

    def _decode_even(self, data: bytes) -> np.ndarray:
        import av

        ctx = av.CodecContext.create("hevc", "r")
        ctx.thread_count = 1
        frames = list(ctx.decode(av.Packet(data))) + list(ctx.decode(None))
        if not frames:
            raise CodecError(f"{self.spec}: the HEVC bitstream holds no decodable picture")
        f = frames[0]
        if f.format.name not in ("yuv420p", "yuvj420p"):
            raise CodecError(f"{self.spec}: expected an 8-bit 4:2:0 stream, got pixel format {f.format.name}")
        yuv = f.to_ndarray()
        return yuv420_to_rgb(yuv, f.height, f.width)

    @staticmethod
    def versions() -> dict[str, str]:
        import av

        libs = {k: ".".join(map(str, v)) for k, v in av.library_versions.items() if k in ("libavcodec", "libavutil")}
        return {"pyav": av.__version__, "ffmpeg": getattr(av, "ffmpeg_version_info", ""), "x265": _x265_version(), **libs}


_X265_VERSION: str | None = None


def _x265_version() -> str:
    """x265's version string, read once from a tiny encode's... build info is stripped, so ask the library."""
    global _X265_VERSION
    if _X265_VERSION is None:
        import ctypes
        import ctypes.util
        import glob
        import os

        import av

        _X265_VERSION = "unknown"
        libdir = os.path.join(os.path.dirname(av.__file__), "..", "av.libs")
        for path in glob.glob(os.path.join(libdir, "libx265*.so*")):
            try:
                lib = ctypes.CDLL(path)
                _X265_VERSION = ctypes.c_char_p.in_dll(lib, "x265_version_str").value.decode()
                break
            except (OSError, ValueError):
                continue
    return _X265_VERSION


@register_codec
class BPG(_X265Codec):
    """HEVC intra configured as ``bpgenc -m 9 -b 8 -c ycbcr -q QP -f 420`` (see module docstring)."""

    name = "bpg"
    q_default = 41
    tune = "ssim"
    default_preset = "placebo"
    description = "HEVC intra as bpgenc -m 9 (x265 placebo, tune ssim, x265 QP = QP+1, full-range BT.601 4:2:0)"

    def x265_qp(self) -> int:
        return min(int(self.q) + 1, 51)


@register_codec
class HEVC(_X265Codec):
    """Plain x265 intra at its own QP and preset."""

    name = "hevc"
    q_default = 32
    spec_tokens = {p: ("preset", p) for p in X265_PRESETS}
    description = "x265 intra at QP (0-51), option preset (default medium), full-range BT.601 4:2:0"


BPG.spec_tokens = {p: ("preset", p) for p in X265_PRESETS}
