"""Codec benchmark on real photos (scikit-image's): bytes, bpp, PSNR, SSIM, encode/decode ms.

    python tools/bench/codecs.py [--sizes 224x224,1024x512] [--repeat 3] [--codecs jpeg-q75,...] [--json PATH]

Times are medians over photos x repeats, single-threaded codecs, this machine. Markdown to stdout;
--json writes one row per codec setting and size, "enc+dec ms <spec> <size>" (encode + decode
medians, no target), in the protocol of tools/bench/common.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (tools/bench/common.py, next to this script)

from lossyvision import codecs, quality
from lossyvision.pipelines.sources import create_source

PAPER_SPECS = ["jpeg-q75", "jpeg-q10", "jpeg-q5", "j2k-r75", "j2k-r200", "j2k-r400", "j2k-r200-nomct",
               "bpg-qp41", "bpg-qp46", "bpg-qp51", "hevc-qp41", "hevc-qp41-veryslow", "webp-q50", "avif-q50", "jxl-q50", "png"]


def photos(size: tuple[int, int], n: int) -> list[np.ndarray]:
    """Real RGB photos resized (bicubic, centre crop to the aspect) to ``size`` = (w, h)."""
    src = create_source("samples", None, "all")
    out = []
    for it in src.items():
        a, _ = src.load(it)
        if a[..., 0].tolist() == a[..., 1].tolist():
            continue  # colour photos only
        w, h = size
        im = Image.fromarray(a)
        s = min(im.width / w, im.height / h)
        cw, ch = int(w * s), int(h * s)
        im = im.crop(((im.width - cw) // 2, (im.height - ch) // 2, (im.width - cw) // 2 + cw, (im.height - ch) // 2 + ch))
        out.append(np.asarray(im.resize((w, h), Image.BICUBIC)))
        if len(out) == n:
            break
    return out


def bench(spec: str, imgs: list[np.ndarray], repeat: int) -> dict:
    c = codecs.from_spec(spec)
    enc, dec, nbytes, ps, ss = [], [], [], [], []
    for a in imgs:
        data = c.encode(a)
        for _ in range(repeat):
            t0 = time.perf_counter()
            data = c.encode(a)
            t1 = time.perf_counter()
            d = c.decode(data)
            t2 = time.perf_counter()
            enc.append((t1 - t0) * 1e3)
            dec.append((t2 - t1) * 1e3)
        nbytes.append(len(data))
        ps.append(quality.psnr(a, d))
        ss.append(quality.ssim(a, d))
    h, w = imgs[0].shape[:2]
    finite = [p for p in ps if np.isfinite(p)]
    return {"spec": spec, "size": f"{w}x{h}", "bytes": np.mean(nbytes), "bpp": np.mean(nbytes) * 8 / (h * w),
            "psnr": np.mean(finite) if finite else float("inf"), "ssim": np.mean(ss),
            "enc_ms": statistics.median(enc), "dec_ms": statistics.median(dec)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="224x224,1024x512")
    ap.add_argument("--codecs", default=",".join(PAPER_SPECS))
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, metavar="PATH", help="write the rows of tools/bench/common.py here")
    args = ap.parse_args()
    rows = []
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        imgs = photos((w, h), args.photos)
        for spec in args.codecs.split(","):
            rows.append(bench(spec, imgs, args.repeat if w * h <= 224 * 224 else 1))
    print(f"Codec benchmark: {args.photos} real photos per size, median ms, one thread per codec.\n")
    print("| codec | size | bytes | bpp | PSNR dB | SSIM | enc ms | dec ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['spec']} | {r['size']} | {r['bytes']:.0f} | {r['bpp']:.3f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['enc_ms']:.2f} | {r['dec_ms']:.2f} |")
    common.write_json(args.json, "codecs", [common.row(f"enc+dec ms {r['spec']} {r['size']}", r["enc_ms"] + r["dec_ms"], "ms")
                                            for r in rows])


if __name__ == "__main__":
    main()
