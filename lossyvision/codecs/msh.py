"""Mean-Scale Hyperprior (Minnen et al. 2018; CompressAI ``mbt2018_mean``), quality 1-8.

The bitstream is CompressAI's real entropy-coded strings (``compress``/``decompress``) behind a
15-byte header, so ``decode`` needs nothing but the bytes and the model:

    b"MS" | quality (u8) | height (u16) | width (u16) | len(y string) (u32) | crc32(payload) (u32)
    followed by the y string, then the z string (the payload).

The CRC is there because CompressAI's rANS decoder reads past the end of a truncated or corrupt
string and can crash the interpreter (seen here); a bad stream is refused before it gets there.
Inputs are zero-padded (centred, as CompressAI's eval does) to a multiple of 64 and cropped
after decoding. The header's 15 bytes are counted in the rate.

Weights: CompressAI's zoo (``pretrained=True``) when online, or ``weights=PATH`` (a state dict
of ``mbt2018_mean`` at that quality, as the zoo or CompressAI's training saves it). Offline with
no weights this raises a CodecError that says so. ``weights="untrained"`` builds a randomly
initialised model: only for tests of the plumbing (its rates mean nothing).
Runs on CUDA when available (option ``device``). Entropy coding is on the CPU either way; note
that encoding on one device and decoding on another can fail, as with any learned codec whose
hyperprior is computed in floating point.
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import warnings
import zlib

import numpy as np

from ..extras import COMPRESSAI_INSTALL
from .base import Codec, CodecError
from .registry import register_codec

_MAGIC = b"MS"
_HEADER = struct.Struct(">2sBHHII")
_MODELS: dict = {}
WEIGHTS_HINT = ("pass a local state dict of mbt2018_mean at that quality: prepare-shards --codec-opt msh.weights=PATH, "
                "encode --codec-opt weights=PATH")
_LOCK = threading.Lock()


def _device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(quality: int, weights: str | None, device: str):
    """The mbt2018_mean model at ``quality``, cached per process."""
    key = (quality, weights, device)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        try:
            import torch

            with warnings.catch_warnings():  # CompressAI's import calls torch.jit.script, deprecated in torch 2.14
                warnings.simplefilter("ignore", FutureWarning)
                from compressai.zoo import mbt2018_mean
        except ImportError as e:
            raise CodecError(f"codec 'msh' needs CompressAI ({e}): {COMPRESSAI_INSTALL}") from e
        if weights in (None, "", "zoo"):
            try:
                # torch.hub writes 'Downloading: ...' to stdout whatever progress says: kept out of the commands' output
                with contextlib.redirect_stdout(io.StringIO()):
                    model = mbt2018_mean(quality=quality, pretrained=True, progress=False)
            except Exception as e:  # URLError, HTTPError, socket errors: all mean "no weights here"
                raise CodecError(
                    f"codec 'msh': cannot fetch CompressAI's pretrained mbt2018_mean weights for quality {quality} "
                    f"({type(e).__name__}); this machine may be offline; {WEIGHTS_HINT}"
                ) from e
        elif weights == "untrained":
            model = mbt2018_mean(quality=quality, pretrained=False)
        else:
            model = mbt2018_mean(quality=quality, pretrained=False)
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise CodecError(f"codec 'msh': weights file {weights!r} does not exist") from None
            except Exception as e:  # a text file, an empty file, a folder: UnpicklingError, EOFError, OSError...
                raise CodecError(f"codec 'msh': {weights!r} is not a PyTorch checkpoint ({type(e).__name__}); {WEIGHTS_HINT}") from None
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            try:
                model = type(model).from_state_dict(state)
            except Exception as e:
                raise CodecError(f"codec 'msh': {weights!r} is not an mbt2018_mean state dict ({e})") from e
        model = model.eval().to(device)
        model.update(force=True)
        _MODELS[key] = model
        return model


@register_codec
class MSH(Codec):
    name = "msh"
    ext = "msh"
    q_name = "quality"
    q_range = (1, 8)
    q_default = 3
    q_direction = 1
    spec_prefix = "q"
    description = "CompressAI mbt2018_mean (learned), quality 1-8; option weights=PATH, device"

    def _check_options(self) -> None:
        self._only_options("weights", "device")
        self.weights = self.options.get("weights")
        self.device = self.options.get("device")

    def check_ready(self) -> None:
        load_model(int(self.q), self.weights, _device(self.device))

    def _encode(self, rgb: np.ndarray) -> bytes:
        import torch
        import torch.nn.functional as F

        dev = _device(self.device)
        model = load_model(int(self.q), self.weights, dev)
        h, w = rgb.shape[:2]
        if h > 65535 or w > 65535:
            raise CodecError(f"codec 'msh': image {w}x{h} too large for the header (max 65535)")
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(dev)
        ph, pw = (-h) % 64, (-w) % 64
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="constant", value=0)
        with torch.no_grad():
            out = model.compress(x)
        y_str, z_str = out["strings"][0][0], out["strings"][1][0]
        payload = y_str + z_str
        return _HEADER.pack(_MAGIC, int(self.q), h, w, len(y_str), zlib.crc32(payload)) + payload

    def _decode(self, data: bytes) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if len(data) < _HEADER.size or data[:2] != _MAGIC:
            raise CodecError(f"{self.spec}: not an MSH bitstream (bad header)")
        _, q, h, w, ny, crc = _HEADER.unpack_from(data)
        if not 1 <= q <= 8 or _HEADER.size + ny > len(data) or h == 0 or w == 0:
            raise CodecError(f"{self.spec}: corrupt MSH header")
        if zlib.crc32(data[_HEADER.size :]) != crc:
            raise CodecError(f"{self.spec}: MSH bitstream is truncated or corrupt (CRC mismatch)")
        y_str = data[_HEADER.size : _HEADER.size + ny]
        z_str = data[_HEADER.size + ny :]
        dev = _device(self.device)
        model = load_model(q, self.weights, dev)
        hp, wp = h + (-h) % 64, w + (-w) % 64
        with torch.no_grad():
            x_hat = model.decompress([[y_str], [z_str]], (hp // 64, wp // 64))["x_hat"]
        ph, pw = hp - h, wp - w
        x_hat = F.pad(x_hat, (-(pw // 2), -(pw - pw // 2), -(ph // 2), -(ph - ph // 2)))
        return x_hat.clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).cpu().numpy()

    @staticmethod
    def versions() -> dict[str, str]:
        # Package metadata, not an import: importing CompressAI costs seconds (it loads torch).
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for pkg in ("compressai", "torch"):
            try:
                out[pkg] = version(pkg)
            except PackageNotFoundError:
                out[pkg] = "not installed"
        return out
