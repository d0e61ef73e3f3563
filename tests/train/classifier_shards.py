"""Write small shard sets exactly as docs/shards.md specifies (until prepare_shards is used instead)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def toy_images(n: int, size: int = 32, classes: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray, int]]:
    """Learnable toy: class c is a bright square at one of `classes` positions on a noisy background."""
    rng = np.random.default_rng(seed)
    out = []
    half = size // 2
    for i in range(n):
        y = int(rng.integers(classes))
        img = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
        r, c = divmod(y % 4, 2)
        img[r * half:(r + 1) * half, c * half:(c + 1) * half, (y // 4) % 3] = 230
        out.append((f"train/img{i:04d}", img, y))
    return out


def write_variant(split_dir: Path, variant: str, samples: list[tuple[str, np.ndarray, object]], *,
                  shard_size: int, classes: list[str] | None, spec: str | None = None,
                  store_decoded: bool = False, decoded_override=None, task: str | None = None) -> Path:
    """Write `split_dir/variant/shard-*.tar` + _manifest.json; `spec` None means the lossless `orig`."""
    import webdataset as wds
    from lossyvision.codecs import from_spec
    vdir = Path(split_dir) / variant
    vdir.mkdir(parents=True, exist_ok=True)
    codec = from_spec(spec) if spec else None
    samples = sorted(samples, key=lambda s: s[0])
    shards, bpps = [], []
    for index, start in enumerate(range(0, len(samples), shard_size)):
        chunk = samples[start:start + shard_size]
        name = f"shard-{index:06d}.tar"
        with wds.TarWriter(str(vdir / name)) as sink:
            for key, img, label in chunk:
                h, w = img.shape[:2]
                s = {"__key__": key}
                if codec is None:
                    s["png"] = png_bytes(img)
                    s["json"] = json.dumps({"h": h, "w": w, "source": key, "bytes": len(s["png"])}).encode()
                else:
                    data = codec.encode(img)
                    s[codec.ext] = data
                    bpps.append(len(data) * 8 / (h * w))
                    s["json"] = json.dumps({"bytes": len(data), "bpp": bpps[-1], "h": h, "w": w,
                                            "spec": codec.spec}).encode()
                    if store_decoded:
                        dec = codec.decode(data) if decoded_override is None else decoded_override(img)
                        s["decoded.png"] = png_bytes(dec)
                if isinstance(label, np.ndarray):
                    s["seg.png"] = png_bytes(label)
                elif label is not None:
                    s["cls"] = str(int(label)).encode()
                sink.write(s)
        data = (vdir / name).read_bytes()
        shards.append({"name": name, "index": index, "count": len(chunk), "sha256": hashlib.sha256(data).hexdigest(),
                       "size": len(data), "first_key": chunk[0][0], "last_key": chunk[-1][0]})
    manifest = {
        "format": "lossyvision-shards/1", "dataset": "toy", "split": Path(split_dir).name, "variant": variant,
        "task": task or ("classification" if classes else "none"), "classes": classes,
        "codec": None if codec is None else {"name": spec.split("-")[0], "spec": codec.spec, "ext": codec.ext},
        "shard_size": shard_size, "shards": shards, "num_samples": len(samples),
        "means": {"bpp": float(np.mean(bpps))} if bpps else {}, "complete": True}
    (vdir / "_manifest.json").write_text(json.dumps(manifest, indent=2))
    return vdir


def make_dataset(root: Path, n_train: int = 48, n_val: int = 16, size: int = 32, classes: int = 4,
                 variants: tuple[str, ...] = ("jpeg-q10",), shard_size: int = 10, seed: int = 0) -> Path:
    """ROOT/toy/{train,val}/{orig,<variants>}; returns ROOT/toy."""
    names = [f"c{i}" for i in range(classes)]
    ds = Path(root) / "toy"
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        samples = [(k.replace("train", split), img, y) for k, img, y in toy_images(n, size, classes, s)]
        write_variant(ds / split, "orig", samples, shard_size=shard_size, classes=names)
        for v in variants:
            write_variant(ds / split, v, samples, shard_size=shard_size, classes=names, spec=v)
    return ds
