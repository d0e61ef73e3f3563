"""Device policy shared by every GPU stage: precision, cuDNN/cuBLAS settings, cached constants and
running sums that stay on the device.

Why each piece exists:

- ``amp_dtype``: ``torch.cuda.is_bf16_supported()`` is True on GPUs that only *emulate* bf16
  (pre-Ampere, compute capability < 8), where bf16 autocast is slower than fp32 and fp16 + GradScaler
  is the fast path. bf16 is chosen only where the tensor cores run it natively.
- ``configure_backends``: ``cudnn.benchmark`` pays off for fixed input shapes (classifier crops,
  segmentation crops); ``--deterministic`` turns it off and sets ``CUBLAS_WORKSPACE_CONFIG``, which
  cuBLAS reads when its handle is created, so it must be set before the first matmul.
- ``normalizer``: the (x/255 - mean)/std constants built once per (mean, std, device), not per batch.
- ``DeviceSums``: metrics accumulated as device tensors; one host sync (``values()``) per log
  interval or epoch instead of one ``.item()`` per metric per step.
"""

from __future__ import annotations

import functools
import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def _cuda_capability(dev: torch.device) -> tuple[int, int] | None:
    """``dev``'s compute capability, None without CUDA."""
    return tuple(torch.cuda.get_device_capability(dev)) if torch.cuda.is_available() else None


def bf16_native_on(capability: tuple[int, int] | None) -> bool:
    """True for a CUDA compute capability whose tensor cores run bf16: 8.0 and above (Ampere and
    later); None (no CUDA) is False."""
    return capability is not None and capability[0] >= 8


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls run natively: CUDA compute capability >= 8.0 (Ampere and later), or
    a CPU (autocast on CPU is bf16 only)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bf16_native_on(_cuda_capability(dev))
    return dev.type == "cpu"


def amp_dtype_for(device_type: str, amp: bool | None = None,
                  capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """``amp_dtype``'s decision for a device type and (on CUDA) a compute capability, without asking
    the hardware: None when mixed precision is off (``amp=False``, or ``amp=None`` off CUDA); on CUDA
    bf16 where ``capability`` runs it natively, else fp16 (also for ``capability=None``); bf16 on
    other devices."""
    if amp is None:
        amp = device_type == "cuda"
    if not amp:
        return None
    if device_type == "cuda":
        return torch.bfloat16 if bf16_native_on(capability) else torch.float16
    return torch.bfloat16


def amp_dtype(device: torch.device | str, amp: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for ``device``: None when mixed precision is off (``amp=False``, or
    ``amp=None`` off CUDA), bf16 where it is native, else fp16 (pair it with ``grad_scaler``).
    ``amp_dtype_for`` with this device's compute capability (asked for only when it decides)."""
    dev = torch.device(device)
    on = dev.type == "cuda" if amp is None else bool(amp)
    return amp_dtype_for(dev.type, on, _cuda_capability(dev) if on and dev.type == "cuda" else None)


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` (None: a no-op context)."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 on CUDA (bf16 and fp32 need none)."""
    dev = torch.device(device)
    return torch.amp.GradScaler("cuda" if dev.type == "cuda" else "cpu",
                                enabled=dev.type == "cuda" and dtype == torch.float16)


def configure_backends(device: torch.device | str, *, deterministic: bool = False, fixed_shapes: bool = True,
                       tf32: bool | None = None) -> dict:
    """Set cuDNN / cuBLAS for a run and return what was set (for the run's log and config).

    ``deterministic``: deterministic algorithms (warn-only where none exists), cudnn.benchmark off,
    ``CUBLAS_WORKSPACE_CONFIG`` set (unless the user set it). Otherwise deterministic algorithms are
    off (also after an earlier deterministic run in this process) and ``cudnn.benchmark`` is on for
    fixed input shapes on CUDA. ``tf32`` None leaves PyTorch's defaults; False turns TF32 off in
    convolutions and matmuls (fp32 as the papers trained)."""
    dev = torch.device(device)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        # what a deterministic run set would otherwise stay on, and the record below would say False
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = bool(fixed_shapes and dev.type == "cuda")
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "tf32": torch.backends.cuda.matmul.allow_tf32}


@functools.lru_cache(maxsize=64)
def _normalizer(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (1.0 / (255.0 * s)).to(device), (m / s).to(device)


def normalizer(mean, std, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``x_uint8 * scale - shift == (x/255 - mean)/std``, built once per
    (mean, std, device) and kept on the device."""
    return _normalizer(tuple(float(v) for v in mean), tuple(float(v) for v in std), str(torch.device(device)))


class DeviceSums:
    """Running sums kept on the device: ``add`` never syncs; ``values`` syncs once.

    >>> s = DeviceSums("cpu"); s.add("loss", torch.tensor(2.0), weight=4); s.add("n", 4); s.values()
    {'loss': 8.0, 'n': 4.0}
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._sums: dict[str, torch.Tensor] = {}
        self._host: dict[str, float] = {}

    def add(self, name: str, value: torch.Tensor | float | int, weight: float | int = 1) -> None:
        if isinstance(value, torch.Tensor):
            v = value.detach().to(torch.float64) * weight
            cur = self._sums.get(name)
            self._sums[name] = v if cur is None else cur + v
        else:  # host numbers (sample counts) stay on the host: adding them costs nothing
            self._host[name] = self._host.get(name, 0.0) + float(value) * weight

    def names(self) -> list[str]:
        return [*self._sums, *(n for n in self._host if n not in self._sums)]

    def tensor(self, names: list[str] | None = None) -> torch.Tensor:
        """The sums as one float64 vector on the device (for one all_reduce)."""
        names = self.names() if names is None else names
        parts = []
        for n in names:
            t = self._sums.get(n)
            t = torch.zeros((), dtype=torch.float64, device=self.device) if t is None else t.to(self.device)
            parts.append(t.reshape(()) + self._host.get(n, 0.0))
        if not parts:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        return torch.stack(parts)

    def values(self) -> dict[str, float]:
        """One host sync: every sum as a float."""
        names = self.names()
        return dict(zip(names, self.tensor(names).tolist()))

    def reset(self) -> None:
        self._sums.clear()
        self._host.clear()
