"""Mean-Scale Hyperprior (Minnen et al. 2018; CompressAI ``mbt2018_mean``), quality 1-8.

The bitstream is CompressAI's real entropy-coded strings behind a 15-byte header, so ``decode``
needs nothing but the bytes and the model:

    b"MS" | quality (u8) | height (u16) | width (u16) | len(y string) (u32) | crc32(payload) (u32)
    followed by the y string, then the z string (the payload).

The CRC is there because CompressAI's rANS decoder reads past the end of a truncated or corrupt
string and can crash the interpreter (seen here); a bad stream is refused before it gets there.
Inputs are zero-padded (centred, as CompressAI's eval does) to a multiple of 64 and cropped
after decoding. The header's 15 bytes are counted in the rate.

What guarantees what. ``compress``/``decompress`` are CompressAI's own (``MeanScaleHyperprior``),
split by where each piece runs: only the transforms g_a (analysis, encoder) and g_s (synthesis,
decoder) run on the ``device`` option; h_a, the hyper-synthesis h_s that produces the Gaussian
scales and means, and both entropy models always run on a CPU copy of the model in fp32 with one
intra-op thread (whatever the process's thread setting or autocast state). rANS stays in sync
only if encoder and decoder compute the same CDF index for every symbol, and these are exactly
the computations that feed it, so a bitstream made on any device decodes to the same latent on
any other (CUDA convolutions differ from the CPU's, with TF32 more so; conv outputs on the CPU
differ with the thread count: measured). Pixels: every CPU decode (in-process, a DataLoader
worker, another process) gives the same bytes, because g_s on the CPU also runs single-threaded;
a g_s on CUDA differs from it by rounding. On the CPU the bytes are those of CompressAI's
``model.compress`` (tested). Residual risk: the CPU's own fp32 kernels differ between CPU kinds
(AVX2 vs AVX-512), so a scale within an ulp of a table edge could still be binned differently on
another kind of machine; nothing here can detect that but the manifest's sha256s of the shards.

Devices: inside a DataLoader worker, and in a forked child, the default is the CPU; an explicit
``device`` is honoured except inside a DataLoader worker or a child forked after CUDA started,
where CUDA cannot start ("Cannot re-initialize CUDA in forked subprocess").

Weights: CompressAI's zoo (``pretrained=True``) when online, or ``weights=PATH`` (a state dict
of ``mbt2018_mean`` at that quality, as the zoo or CompressAI's training saves it). Offline with
no weights this raises a CodecError that says so. ``weights="untrained"`` builds a model
initialised from a fixed seed (the same in every process): only for tests of the plumbing (its
rates mean nothing). ``info()`` (a variant manifest's codec block) records ``weights`` (as given,
or "zoo"), ``weights_sha256`` (lossyvision.fingerprint.state_dict_sha256 of the model as loaded)
and ``entropy_device: "cpu-fp32"``; :func:`decoder_for_manifest` rebuilds the decoder from that
block, finding the file where recorded or through ``$LOSSYVISION_MSH_WEIGHTS``, and refuses other
weights or another entropy policy in one line.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..extras import COMPRESSAI_INSTALL
from .base import Codec, CodecError
from .registry import register_codec

log = logging.getLogger(__name__)

_MAGIC = b"MS"
_HEADER = struct.Struct(">2sBHHII")
ENTROPY_DEVICE = "cpu-fp32"
WEIGHTS_ENV = "LOSSYVISION_MSH_WEIGHTS"
UNTRAINED_SEED = 0
WEIGHTS_HINT = ("pass a local state dict of mbt2018_mean at that quality: prepare-shards --codec-opt msh.weights=PATH, "
                "encode --codec-opt weights=PATH")
_CPU_MODELS: dict = {}  # (quality, weights) -> _CpuModel
_TRANSFORMS: dict = {}  # (quality, weights, device) -> (g_a, g_s) on that device
_LOCK = threading.Lock()
_CPU_LOCK = threading.Lock()  # the single-threaded CPU section sets torch's process-wide thread count
_FORKED = False
_WARNED: set[str] = set()


def _after_fork_in_child() -> None:
    global _FORKED, _LOCK, _CPU_LOCK
    _FORKED = True
    # a lock another thread of the parent held at the fork would never be released here
    _LOCK, _CPU_LOCK = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def resolve_device(requested: str | None) -> str:
    """The device g_a and g_s run on: ``requested``, else CUDA when available, but the CPU inside a
    DataLoader worker or a forked child (and for any request where CUDA cannot start)."""
    import torch
    from torch.utils.data import get_worker_info

    # Cannot re-initialize CUDA in forked subprocess: a worker forked by a parent that has used CUDA
    # (training, evaluation, the teacher-cache build) still sees torch.cuda.is_available() but dies on
    # the first CUDA call, and a worker would hold a CUDA context per process anyway. The bitstream
    # decodes the same on any device, so the CPU costs nothing but time.
    if get_worker_info() is not None:
        return "cpu"
    bad_fork = getattr(torch.cuda, "_is_in_bad_fork", lambda: False)()
    if requested:
        return "cpu" if bad_fork and str(requested).startswith("cuda") else str(requested)
    if _FORKED or bad_fork:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class _CpuModel:
    """The whole model on the CPU in fp32, its entropy tables built there; h_a, h_s and the entropy
    models of every encode and decode are this copy's."""

    net: Any
    sha256: str  # of the state dict as loaded (before the CPU builds its CDF tables)


def _build(quality: int, weights: str | None):
    import torch

    try:
        with warnings.catch_warnings():  # CompressAI's import calls torch.jit.script, deprecated in torch 2.14
            warnings.simplefilter("ignore", FutureWarning)
            from compressai.zoo import mbt2018_mean
    except ImportError as e:
        raise CodecError(f"codec 'msh' needs CompressAI ({e}): {COMPRESSAI_INSTALL}") from e
    if weights == "zoo":
        try:
            # torch.hub writes 'Downloading: ...' to stdout whatever progress says: kept out of the commands' output
            with contextlib.redirect_stdout(io.StringIO()):
                return mbt2018_mean(quality=quality, pretrained=True, progress=False)
        except Exception as e:  # URLError, HTTPError, socket errors: all mean "no weights here"
            raise CodecError(
                f"codec 'msh': cannot fetch CompressAI's pretrained mbt2018_mean weights for quality {quality} "
                f"({type(e).__name__}); this machine may be offline; {WEIGHTS_HINT}"
            ) from e
    if weights == "untrained":
        # seeded, so that the fingerprint (and every bitstream) is the same in every process
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            return mbt2018_mean(quality=quality, pretrained=False)
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
        return type(model).from_state_dict(state)
    except Exception as e:
        raise CodecError(f"codec 'msh': {weights!r} is not an mbt2018_mean state dict ({e})") from e


def cpu_model(quality: int, weights: str | None) -> _CpuModel:
    """The mbt2018_mean model at ``quality`` on the CPU in fp32, with its sha256; cached per process."""
    weights = weights or "zoo"
    key = (quality, weights)
    with _LOCK:
        if key not in _CPU_MODELS:
            from ..fingerprint import state_dict_sha256

            net = _build(quality, weights).float().eval()
            sha = state_dict_sha256(net)
            with _cpu_threads():
                net.update(force=True)
            _CPU_MODELS[key] = _CpuModel(net, sha)
        return _CPU_MODELS[key]


def transforms(quality: int, weights: str | None, device: str) -> tuple[Any, Any]:
    """(g_a, g_s) of that model on ``device``: the CPU model's own on the CPU, copies elsewhere."""
    cpu = cpu_model(quality, weights)
    if device == "cpu":
        return cpu.net.g_a, cpu.net.g_s
    key = (quality, weights or "zoo", device)
    with _LOCK:
        if key not in _TRANSFORMS:
            _TRANSFORMS[key] = (copy.deepcopy(cpu.net.g_a).to(device), copy.deepcopy(cpu.net.g_s).to(device))
        return _TRANSFORMS[key]


@contextlib.contextmanager
def _cpu_threads() -> Iterator[None]:
    """fp32 on one intra-op thread: CPU convolutions give other last bits with other thread counts
    (measured for g_a and g_s of this model), and a DataLoader worker runs with one."""
    import torch

    with _CPU_LOCK, torch.autocast("cpu", enabled=False):
        n = torch.get_num_threads()
        if n != 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if n != 1:
                torch.set_num_threads(n)


def entropy_encode(net: Any, y) -> tuple[bytes, bytes]:
    """CompressAI's ``MeanScaleHyperprior.compress`` after g_a, on the CPU model: (y string, z string)."""
    with _cpu_threads():
        z = net.h_a(y)
        z_strings = net.entropy_bottleneck.compress(z)
        z_hat = net.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales_hat, means_hat = net.h_s(z_hat).chunk(2, 1)
        indexes = net.gaussian_conditional.build_indexes(scales_hat)
        y_strings = net.gaussian_conditional.compress(y, indexes, means=means_hat)
    return y_strings[0], z_strings[0]


def entropy_decode(net: Any, y_str: bytes, z_str: bytes, shape: tuple[int, int]):
    """CompressAI's ``MeanScaleHyperprior.decompress`` up to g_s, on the CPU model: y_hat (fp32, CPU)."""
    with _cpu_threads():
        z_hat = net.entropy_bottleneck.decompress([z_str], shape)
        scales_hat, means_hat = net.h_s(z_hat).chunk(2, 1)
        indexes = net.gaussian_conditional.build_indexes(scales_hat)
        return net.gaussian_conditional.decompress([y_str], indexes, means=means_hat)


def _weights_candidates(recorded: str) -> list[str]:
    """Where a variant's weights file may be here: the path as recorded, then $LOSSYVISION_MSH_WEIGHTS
    (the file itself, or a folder holding it under its basename)."""
    out = [recorded] if os.path.isfile(recorded) else []
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        cand = os.path.join(env, os.path.basename(recorded)) if os.path.isdir(env) else env
        if os.path.isfile(cand) and cand not in out:
            out.append(cand)
    return out


def decoder_for_manifest(block: dict, where: str) -> "MSH":
    """The decoder for a variant whose manifest's codec block is ``block`` (``where``: the variant, for
    messages): built with the weights it records, found here; CodecError (one line) when they or its
    entropy policy differ. Manifests written before these fields existed decode with one warning."""
    opts = block.get("options") or {}
    recorded = block.get("weights") or opts.get("weights") or "zoo"
    expected = block.get("weights_sha256")
    policy = block.get("entropy_device")
    quality = int(block.get("q") or MSH.q_default)  # rate-controlled variants record their base quality's sha256
    if expected is None and policy is None:
        if where not in _WARNED:
            _WARNED.add(where)
            log.warning("%s: an msh variant written before its manifest recorded weights_sha256 and entropy_device; "
                        "decoding with weights %r and CPU fp32 entropy coding, which is right only if it was "
                        "encoded on the CPU with those weights", where, recorded)
        found = _weights_candidates(recorded) if recorded not in ("zoo", "untrained") else [recorded]
        return MSH(q=quality, options={"weights": found[0] if found else recorded})
    if policy != ENTROPY_DEVICE:
        raise CodecError(f"codec 'msh': {where} records entropy_device {policy!r}, but this version decodes only "
                         f"{ENTROPY_DEVICE!r} bitstreams; rebuild the variant with prepare-shards")
    if recorded in ("zoo", "untrained"):
        env = os.environ.get(WEIGHTS_ENV)
        candidates = [recorded, *([env] if recorded == "zoo" and env and os.path.isfile(env) else [])]
    else:
        candidates = _weights_candidates(recorded)
        if not candidates:
            raise CodecError(f"codec 'msh': {where} was encoded with weights {recorded!r} (sha256 {str(expected)[:16]}...), "
                             f"not found here; set {WEIGHTS_ENV} to that file or to a folder holding "
                             f"{os.path.basename(recorded)}")
    seen = []
    for cand in candidates:
        try:
            sha = cpu_model(quality, cand).sha256
        except CodecError as e:  # the zoo offline, a file that is not a checkpoint
            seen.append(f"{cand} does not load ({str(e).splitlines()[0][:200]})")
            continue
        if sha == expected:
            return MSH(q=quality, options={"weights": cand})
        seen.append(f"{cand} has {sha[:16]}...")
    raise CodecError(f"codec 'msh': {where} was encoded with weights {recorded!r} of sha256 {str(expected)[:16]}... but "
                     f"{'; '.join(seen)}; set {WEIGHTS_ENV} to the weights file it was encoded with")


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
        cpu_model(int(self.q), self.weights)

    def info(self) -> dict:
        d = super().info()
        d.update(weights=self.weights or "zoo", weights_sha256=cpu_model(int(self.q), self.weights).sha256,
                 entropy_device=ENTROPY_DEVICE)
        return d

    def _encode(self, rgb: np.ndarray) -> bytes:
        import torch
        import torch.nn.functional as F

        h, w = rgb.shape[:2]
        if h > 65535 or w > 65535:
            raise CodecError(f"codec 'msh': image {w}x{h} too large for the header (max 65535)")
        dev = resolve_device(self.device)
        cpu = cpu_model(int(self.q), self.weights)
        g_a, _ = transforms(int(self.q), self.weights, dev)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(dev)
        ph, pw = (-h) % 64, (-w) % 64
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="constant", value=0)
        with torch.no_grad(), torch.autocast(torch.device(dev).type, enabled=False):
            y = g_a(x).float().cpu()
            y_str, z_str = entropy_encode(cpu.net, y)
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
        dev = resolve_device(self.device)
        cpu = cpu_model(q, self.weights)
        hp, wp = h + (-h) % 64, w + (-w) % 64
        with torch.no_grad():
            y_hat = entropy_decode(cpu.net, y_str, z_str, (hp // 64, wp // 64))
            if dev == "cpu":
                with _cpu_threads():  # so that every CPU decode gives the same pixels
                    x_hat = cpu.net.g_s(y_hat)
            else:
                _, g_s = transforms(q, self.weights, dev)
                with torch.autocast(torch.device(dev).type, enabled=False):
                    x_hat = g_s(y_hat.to(dev))
        ph, pw = hp - h, wp - w
        x_hat = F.pad(x_hat.clamp_(0, 1), (-(pw // 2), -(pw - pw // 2), -(ph // 2), -(ph - ph // 2)))
        return x_hat.mul(255).round().byte()[0].permute(1, 2, 0).cpu().numpy()

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
