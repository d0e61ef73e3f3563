"""JPEG 2000 through OpenJPEG; the parameter is a compression ratio, as in paper 1.

Pillow's OpenJPEG encoder in rates mode (``quality_mode="rates", quality_layers=[r]``) targets
``raw_bytes / r``: on 224x224 RGB, r=200 gives about 150528/200 = 753 bytes. imagecodecs cannot
do this (its ``level`` is a PSNR target), so encoding uses Pillow; decoding uses
``imagecodecs.jpeg2k_decode`` (bit-identical to Pillow's decoder, about 2x faster).

Options:
- ``mct`` (default True): the RGB->YCbCr colour transform. Paper 1's code ran Pillow's default
  of the time, *without* it; that costs 1.5-2.5 dB at equal bytes (tools/bench/codecs.py), and the paper's PSNR column
  (21.19 dB at r200) agrees with mct off. Use ``mct=False`` (spec suffix ``-nomct``) to reproduce.
- ``irreversible`` (default False): the 9/7 wavelet instead of the reversible 5/3.
- ``container``: ``j2k`` (raw codestream, default) or ``jp2`` (adds the JP2 boxes, ~85 bytes).
- q = 0 means lossless.
"""

from __future__ import annotations

import io

import numpy as np

from .base import Codec, CodecError
from .registry import register_codec


@register_codec
class JPEG2000(Codec):
    name = "j2k"
    q_name = "compression ratio"
    q_range = (0, 10000)
    q_integer = False
    q_default = 200
    q_direction = -1
    spec_prefix = "r"
    spec_tokens = {"nomct": ("mct", False), "irr": ("irreversible", True), "jp2": ("container", "jp2")}
    description = "OpenJPEG rates mode, q = compression ratio (0 = lossless); options mct, irreversible, container"

    def _check_options(self) -> None:
        self._only_options("mct", "irreversible", "container")
        self.mct = self._bool_option("mct", True)
        self.irreversible = self._bool_option("irreversible", False)
        self.container = self.options.get("container", "j2k")
        if self.container not in ("j2k", "jp2"):
            raise CodecError(f"codec 'j2k': container must be 'j2k' or 'jp2', got {self.container!r}")
        if 0 < float(self.q) < 1:
            raise CodecError(f"codec 'j2k': compression ratio {self.q} is below 1; use 0 (lossless) or a ratio >= 1")

    @property
    def ext(self) -> str:  # type: ignore[override]
        return self.container

    def spec_suffix(self) -> str:
        return ("" if self.mct else "-nomct") + ("-irr" if self.irreversible else "") + ("-jp2" if self.container == "jp2" else "")

    def _encode(self, rgb: np.ndarray) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(
            buf,
            "JPEG2000",
            quality_mode="rates",
            quality_layers=[float(self.q)],
            mct=int(self.mct),
            irreversible=self.irreversible,
            no_jp2=self.container == "j2k",
        )
        return buf.getvalue()

    def _decode(self, data: bytes) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpeg2k_decode(data)

    @staticmethod
    def versions() -> dict[str, str]:
        import imagecodecs
        import PIL
        from PIL import features

        return {"pillow": PIL.__version__, "openjpeg": str(features.version("jpg_2000")), "imagecodecs": imagecodecs.__version__}
