"""Crop policies, applied before compression (paper 1: compressing pixels the model never sees
would be wrong). Label maps follow with nearest-neighbour resampling.

String forms (``--crop``):
- ``imagenet`` = ``resize256-center224``: shorter side to 256 (bicubic, Pillow's antialiased
  resize as torchvision's ``Resize(256)`` on PIL images), then a centred 224x224 crop;
- ``full``: the frame as it is;
- ``crop:WxH`` or ``crop:WxH+X+Y``: a fixed crop (centred when X, Y are omitted);
- ``scale:WxH`` or ``scale:F``: a downscale (bicubic for images, nearest for labels).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from .imageio import DEFAULT_MAX_PIXELS


class CropError(ValueError):
    pass


def _check_size(w: int, h: int, max_pixels: int, what: str) -> None:
    if w * h > max_pixels:
        raise CropError(f"{what} would be {w}x{h} = {w * h} pixels, over --max-pixels {max_pixels}")


def _resize(a: np.ndarray, size: tuple[int, int], label: bool) -> np.ndarray:
    from PIL import Image

    w, h = size
    im = Image.fromarray(a)
    return np.asarray(im.resize((w, h), Image.NEAREST if label else Image.BICUBIC))


@dataclass(frozen=True)
class CropPolicy:
    name: str = "full"
    resize: int = 0  # shorter side, 0 = none
    crop_w: int = 0
    crop_h: int = 0
    x: int = -1  # -1 = centred
    y: int = -1
    scale_w: int = 0
    scale_h: int = 0
    scale: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        """Refuse sizes that no image could be cropped or scaled to within ``max_pixels``, before any work."""
        if self.crop_w:
            _check_size(self.crop_w, self.crop_h, max_pixels, f"crop {self.name}")
        if self.scale_w:
            _check_size(self.scale_w, self.scale_h, max_pixels, f"scale {self.name}")

    def __call__(self, rgb: np.ndarray, label: object = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, object]:
        """Apply to an image and, if it is a label map (2-D array), to its label; a resize whose
        result would exceed ``max_pixels`` (a 1x3000 image resized to a shorter side of 256) raises
        CropError before it allocates."""
        is_map = isinstance(label, np.ndarray) and label.ndim == 2
        if is_map and label.shape != rgb.shape[:2]:
            raise CropError(f"label map {label.shape} and image {rgb.shape[:2]} differ in size")
        h, w = rgb.shape[:2]
        if self.resize:
            s = self.resize
            # torchvision Resize(int): shorter side -> s, longer side int(s * long / short)
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            _check_size(nw, nh, max_pixels, f"resizing {w}x{h} to a shorter side of {s}")
            rgb = _resize(rgb, (nw, nh), False)
            if is_map:
                label = _resize(label, (nw, nh), True)
            h, w = nh, nw
        if self.scale_w or self.scale:
            nw, nh = (self.scale_w, self.scale_h) if self.scale_w else (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            _check_size(nw, nh, max_pixels, f"scaling {w}x{h}")
            rgb = _resize(rgb, (nw, nh), False)
            if is_map:
                label = _resize(label, (nw, nh), True)
            h, w = nh, nw
        if self.crop_w:
            cw, ch = self.crop_w, self.crop_h
            if cw > w or ch > h:
                raise CropError(f"crop {cw}x{ch} is larger than the image {w}x{h}")
            # torchvision center_crop: top = int(round((h - ch) / 2))
            x = int(round((w - cw) / 2.0)) if self.x < 0 else self.x
            y = int(round((h - ch) / 2.0)) if self.y < 0 else self.y
            if x + cw > w or y + ch > h:
                raise CropError(f"crop {cw}x{ch}+{x}+{y} leaves the image {w}x{h}")
            rgb = rgb[y : y + ch, x : x + cw]
            if is_map:
                label = label[y : y + ch, x : x + cw]
        return np.ascontiguousarray(rgb), (np.ascontiguousarray(label) if is_map else label)


@dataclass(frozen=True)
class PatchGrid:
    """A frame size and a grid of patches cut from it: an image is resized to ``frame_w x frame_h``
    (bicubic; its label map with nearest), then cut into ``cols x rows`` patches of ``patch_w x patch_h``
    evenly spaced from edge to edge (overlapping where they do not tile), numbered row-major.
    Paper 2's Semantic Drone Dataset: 3000x2000, 4 x 3 patches of 1200x800 at a 600 px stride."""

    frame_w: int
    frame_h: int
    patch_w: int
    patch_h: int
    cols: int
    rows: int

    def __post_init__(self) -> None:
        if min(self.frame_w, self.frame_h, self.patch_w, self.patch_h, self.cols, self.rows) < 1:
            raise CropError(f"patch grid {self}: sizes and counts must be at least 1")
        if self.patch_w > self.frame_w or self.patch_h > self.frame_h:
            raise CropError(f"patch {self.patch_w}x{self.patch_h} is larger than the frame {self.frame_w}x{self.frame_h}")

    @property
    def count(self) -> int:
        return self.cols * self.rows

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(x, y, w, h) of every patch, row-major."""
        def starts(frame: int, patch: int, n: int) -> list[int]:
            return [round(i * (frame - patch) / (n - 1)) for i in range(n)] if n > 1 else [(frame - patch) // 2]

        return [(x, y, self.patch_w, self.patch_h) for y in starts(self.frame_h, self.patch_h, self.rows)
                for x in starts(self.frame_w, self.patch_w, self.cols)]

    def frame(self, rgb: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The image (and its label map) at the frame size."""
        if label is not None and label.shape != rgb.shape[:2]:
            raise CropError(f"label map {label.shape} and image {rgb.shape[:2]} differ in size")
        size = (self.frame_w, self.frame_h)
        if rgb.shape[:2] != (self.frame_h, self.frame_w):
            rgb = _resize(rgb, size, False)
            label = None if label is None else _resize(label, size, True)
        return rgb, label

    def patch(self, frame: np.ndarray, label: np.ndarray | None, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Patch ``index`` of a frame already at the frame size (:meth:`frame`), and of its label map."""
        if frame.shape[:2] != (self.frame_h, self.frame_w):
            raise CropError(f"frame {frame.shape[1]}x{frame.shape[0]} is not {self.frame_w}x{self.frame_h}")
        if not 0 <= index < self.count:
            raise CropError(f"patch {index} of a grid of {self.count}")
        x, y, w, h = self.boxes()[index]
        cut = np.ascontiguousarray(frame[y : y + h, x : x + w])
        return cut, (None if label is None else np.ascontiguousarray(label[y : y + h, x : x + w]))


IMAGENET = CropPolicy(name="resize256-center224", resize=256, crop_w=224, crop_h=224)
FULL = CropPolicy(name="full")


def parse_crop(text: str) -> CropPolicy:
    """'imagenet' | 'resize256-center224' | 'full' | 'crop:WxH[+X+Y]' | 'scale:WxH' | 'scale:F'."""
    t = text.strip().lower()
    policy = _parse(t, text)
    if (policy.crop_w == 0) != (policy.crop_h == 0) or policy.crop_w < 0 or (policy.name.startswith("crop:") and policy.crop_w == 0):
        raise CropError(f"crop policy '{text}': width and height must be at least 1")
    if policy.name.startswith("scale:") and not policy.scale and (policy.scale_w < 1 or policy.scale_h < 1):
        raise CropError(f"crop policy '{text}': width and height must be at least 1")
    if policy.name.startswith("resize") and (policy.resize < 1 or policy.crop_w < 1):
        raise CropError(f"crop policy '{text}': sizes must be at least 1")
    return policy


def _parse(t: str, text: str) -> CropPolicy:
    if t in ("imagenet", "resize256-center224"):
        return IMAGENET
    if t == "full":
        return FULL
    m = re.fullmatch(r"resize(\d+)-center(\d+)", t)
    if m:
        return CropPolicy(name=t, resize=int(m.group(1)), crop_w=int(m.group(2)), crop_h=int(m.group(2)))
    m = re.fullmatch(r"crop:(\d+)x(\d+)(?:\+(\d+)\+(\d+))?", t)
    if m:
        x = int(m.group(3)) if m.group(3) else -1
        y = int(m.group(4)) if m.group(4) else -1
        return CropPolicy(name=t, crop_w=int(m.group(1)), crop_h=int(m.group(2)), x=x, y=y)
    m = re.fullmatch(r"scale:(\d+)x(\d+)", t)
    if m:
        return CropPolicy(name=t, scale_w=int(m.group(1)), scale_h=int(m.group(2)))
    m = re.fullmatch(r"scale:(0?\.\d+|1(?:\.0*)?)", t)
    if m:
        return CropPolicy(name=t, scale=float(m.group(1)))
    raise CropError(
        f"unknown crop policy '{text}'; use imagenet, full, crop:WxH[+X+Y], scale:WxH or scale:F (0 < F <= 1)"
    )
