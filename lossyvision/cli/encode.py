"""``lossyvision codecs`` (the codec table) and ``lossyvision encode`` (one image)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from . import options as o
from .errors import finite, offline_errors


@o.command("codecs", quiet=False)
@o.json_switch("Print JSON instead of a table.")
def codecs_cmd(json_out: bool) -> None:
    """List the codecs: name, what q means, its range, and the libraries behind it."""
    from ..codecs import get_codec_class, names

    rows = []
    for n in names():
        cls = get_codec_class(n)
        try:
            versions = cls.versions()
        except Exception as e:  # an optional back-end that is missing still gets its row
            versions = {"error": str(e)}
        rng = "-" if cls.q_range is None else f"{cls.q_range[0]:g}..{cls.q_range[1]:g}"
        example = n if cls.q_range is None else f"{n}-{cls.spec_prefix}{cls.q_default}"
        rows.append({"name": n, "q": cls.q_name if cls.q_range else "-", "range": rng, "example_spec": example,
                     "description": cls.description, "versions": versions})
    if json_out:
        click.echo(json.dumps(rows, indent=1))
        return
    from ..reports.tables import markdown

    for r in rows:
        r["versions"] = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    click.echo(markdown(rows, ["name", "q", "range", "example_spec", "description", "versions"]))


def parse_codec_opts(opts: tuple[str, ...], codec: str) -> dict[str, Any]:
    """KEY=VALUE or CODEC.KEY=VALUE (CODEC must be ``codec``) -> {KEY: VALUE}."""
    out: dict[str, Any] = {}
    for item in opts:
        if "=" not in item:
            raise click.UsageError(f"--codec-opt '{item}' must look like [CODEC.]KEY=VALUE, e.g. {codec}.KEY=VALUE")
        k, v = item.split("=", 1)
        c, dot, key = k.partition(".")
        if dot and c.strip() != codec:
            raise click.UsageError(f"--codec-opt '{item}' is for codec {c.strip()!r}, not --codec {codec}")
        out[(key if dot else k).strip()] = v.strip()
    return out


@o.command("encode", quiet=False)
@click.argument("image", type=click.Path(dir_okay=False))
@o.option("--codec", "codec_name", required=True, show_default="required", help="Codec name (see 'lossyvision codecs').")
@o.quality("Native codec parameter (JPEG quality, J2K ratio, QP, ...).")
@o.option("--bpp", default=None, show_default="none", help="Target rate in bits per pixel instead of --quality.")
@o.codec_opt("Codec option, e.g. mct=false or j2k.mct=false, preset=slow.", old=("--opt",))
@o.option("--crop", default=None, show_default="none", help="Crop policy before encoding, e.g. imagenet.")
@o.option("-o", "--output", type=click.Path(dir_okay=False), default=None, show_default="none",
          help="Write the bitstream to this file.")
@o.option("--decoded", type=click.Path(dir_okay=False), default=None, show_default="none",
          help="Write the decoded image to this file (PNG).")
@o.json_switch("Print the stats as JSON.")
@o.max_pixels("Images whose header holds more pixels (and crops or scales to more) are refused before any decode.")
@offline_errors
def encode_cmd(image: str, codec_name: str, quality: str | None, bpp: str | None, codec_opt: tuple[str, ...],
               crop: str | None, output: str | None, decoded: str | None, json_out: bool, max_pixels: int) -> None:
    """Encode one IMAGE and print bytes, bpp, PSNR, SSIM, MS-SSIM and encode/decode time."""
    from ..codecs import create, png_encode
    from ..pipelines.crops import parse_crop
    from ..pipelines.imageio import read_rgb
    from .. import quality as metrics

    if quality is not None and bpp is not None:
        raise click.UsageError("give --quality or --bpp, not both")
    qv = None if quality is None else finite("--quality", quality)
    bv = None if bpp is None else finite("--bpp", bpp)
    codec_options = parse_codec_opts(codec_opt, codec_name)
    if not os.path.isfile(image):
        raise click.UsageError(f"image {image} does not exist")
    codec = create(codec_name, None if qv is None else (int(qv) if qv == int(qv) else qv), bpp=bv, **codec_options)
    policy = parse_crop(crop) if crop else None
    if policy is not None:
        policy.check(max_pixels)
    codec.check_ready()
    rgb = read_rgb(image, max_pixels)
    if policy is not None:
        rgb, _ = policy(rgb, max_pixels=max_pixels)
    r = codec.roundtrip(rgb)
    # as in the prepare job: SSIM and MS-SSIM are left out (null) below the 11x11 window
    s, ms = metrics.Reference(rgb).scores(r.decoded, True) if min(rgb.shape[:2]) >= metrics.WIN_SIZE else (None, None)
    stats = {"spec": codec.spec, "q": r.q, "h": rgb.shape[0], "w": rgb.shape[1], "bytes": r.bytes, "bpp": r.bpp(),
             "psnr": metrics.psnr(rgb, r.decoded), "ssim": s, "ms_ssim": ms, "enc_ms": r.enc_ms, "dec_ms": r.dec_ms}
    if output:
        with open(output, "wb") as f:
            f.write(r.data)
    if decoded:
        with open(decoded, "wb") as f:
            f.write(png_encode(r.decoded, level=6))
    if json_out:
        click.echo(json.dumps({k: (None if isinstance(v, float) and v == float("inf") else v) for k, v in stats.items()}))
    else:
        for k, v in stats.items():
            click.echo(f"{k:>8}: {v:.4f}" if isinstance(v, float) else f"{k:>8}: {v}")
