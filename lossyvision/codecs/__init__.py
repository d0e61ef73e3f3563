"""Codecs: ``encode(uint8 HxWx3) -> bytes`` and ``decode(bytes) -> uint8 HxWx3``, and a registry.

>>> from lossyvision import codecs
>>> codecs.names()
['avif', 'bpg', 'hevc', 'j2k', 'jpeg', 'jxl', 'msh', 'png', 'webp']
>>> c = codecs.create("j2k", 200)          # q is the native parameter (here a compression ratio)
>>> c = codecs.create("bpg", bpp=0.12)     # or a per-image rate target in bits per pixel
>>> c = codecs.from_spec("jpeg-q10")        # a variant name back to its codec
"""

from . import hevc, j2k, jpeg, modern, msh, png  # noqa: F401  (registers the codecs)
from .base import Codec, CodecError, EncodeResult, check_rgb
from .png import png_decode, png_encode
from .ratecontrol import RateControlled
from .registry import create, from_spec, get_codec_class, names, parse_spec, register_codec

__all__ = [
    "Codec",
    "CodecError",
    "EncodeResult",
    "RateControlled",
    "check_rgb",
    "create",
    "from_spec",
    "get_codec_class",
    "names",
    "parse_spec",
    "png_decode",
    "png_encode",
    "register_codec",
]
