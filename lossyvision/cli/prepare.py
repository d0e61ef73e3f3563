"""``prepare-shards``: crop, encode with every codec setting, measure, write aligned shards."""

from __future__ import annotations

from typing import Any

import click

from .. import storage
from . import options as o
from .errors import drop_none, finite, offline_errors


def parse_codec_settings(codecs: tuple[str, ...], qs: tuple[str, ...], bpps: tuple[str, ...], opts: tuple[str, ...],
                         mean_bpps: tuple[str, ...] = ()) -> list:
    """Pair each --codec with its --quality, --bpp or --mean-bpp list (by position), e.g.
    ``--codec jpeg --quality 75,10,5 --codec j2k --quality 200``; ``--codec-opt j2k.mct=false`` scopes
    an option to one codec (with a single --codec, ``mct=false`` is enough). A --mean-bpp list may
    name a preset (``katakol2021``: paper 2's four rates of that codec)."""
    from ..pipelines.meanbpp import RateTargetError, expand_targets
    from ..pipelines.prepare import CodecSetting

    if not codecs:
        if qs or bpps or mean_bpps:
            raise click.UsageError("--quality/--bpp/--mean-bpp given without --codec")
        return []
    kinds = [k for k, v in (("--quality", qs), ("--bpp", bpps), ("--mean-bpp", mean_bpps)) if v]
    if len(kinds) > 1:
        raise click.UsageError(f"mix of {' and '.join(kinds)}: run prepare-shards once per kind (same --out)")
    values = qs or bpps or mean_bpps
    what = kinds[0] if kinds else "--quality"
    if len(values) != len(codecs):
        raise click.UsageError(
            f"{len(codecs)} --codec but {len(values)} {what}; give one list per codec, "
            "e.g. --codec jpeg --quality 75,10,5 --codec j2k --quality 200"
        )
    per_codec: dict[str, dict] = {}
    for item in opts:
        k, eq, v = item.partition("=")
        if eq and "." not in k and len(set(codecs)) == 1:
            k = f"{codecs[0]}.{k}"
        if not eq or "." not in k:
            raise click.UsageError(f"--codec-opt '{item}' must look like CODEC.KEY=VALUE, e.g. j2k.mct=false")
        c, key = k.split(".", 1)
        per_codec.setdefault(c, {})[key] = v
    unknown = set(per_codec) - set(codecs)
    if unknown:
        raise click.UsageError(f"--codec-opt for {', '.join(sorted(unknown))}, which is not among the --codec values")
    settings = []
    for name, vals in zip(codecs, values):
        if mean_bpps:
            try:
                targets = expand_targets(name, vals)
            except RateTargetError as e:
                raise click.UsageError(str(e)) from None
            settings += [CodecSetting(name, options=dict(per_codec.get(name, {})), mean_bpp=b) for b in targets]
            continue
        for tok in vals.split(","):
            tok = tok.strip()
            v = finite(f"{what} for codec {name}:", tok)
            v = int(v) if v == int(v) and qs else v
            settings.append(CodecSetting(name, q=v if qs else None, bpp=None if qs else v, options=dict(per_codec.get(name, {}))))
    return settings


def _echo_choice(s: Any) -> None:
    """One line per --mean-bpp target, before the job starts."""
    t = s.rate_target
    reach = "" if t["bracketed"] else " (the target is beyond the codec's range here: the closest end)"
    sem = f" +- {t['sample_sem_bpp']:.4f} (standard error)" if t.get("sample_sem_bpp") else ""
    whole = "the whole split" if t["sample"] >= t["split_images"] else f"{t['sample']} of {t['split_images']} images"
    click.echo(f"--mean-bpp {t['mean_bpp']:g} for {s.name}: {t['q_name']} {t['chosen']} -> {s.build().spec}, sample mean "
               f"{t['sample_mean_bpp']:.4f} bpp{sem} over {whole} (seed {t['seed']}, {len(t['tried'])} probes){reach}")


@o.command("prepare-shards")
@o.option("--dataset", required=True, show_default="required", help="imagenet | cityscapes | segfolder | inria | sdd | folder | samples | fashion-mnist")
@o.option("--src", default=None, show_default="none, for samples",
          help="Dataset root: a path or an fsspec URL such as s3://bucket/ILSVRC2012.")
@o.split("val; 'all' for folder/samples", "Split folder of the source, e.g. train or val.", checked_by_library=True)
@o.out("Shard root, a path or an fsspec URL (s3://bucket/shards): writes OUT/<dataset>/<split>/<variant>/.", required=True)
@o.option("--codec", "codecs", multiple=True, show_default="none: only orig", help="Codec name; repeat for several codecs.")
@o.quality("Comma-separated native parameters for the matching --codec, e.g. 75,10,5.", multiple=True)
@o.option("--bpp", "bpps", multiple=True, show_default="none",
          help="Comma-separated per-image target rates (bits/pixel) for the matching --codec: each image gets its own "
               "parameter.")
@o.option("--mean-bpp", "mean_bpps", multiple=True, metavar="B[,B...]|PRESET", show_default="none",
          help="Comma-separated dataset-level rates (bits/pixel) for the matching --codec: one parameter for the whole "
               "split, the one whose mean bpp on a seeded sample (--rate-sample) is closest to B, found by bisection "
               "before the job; the variant is named by it (bpg-qp44). Preset katakol2021: paper 2's four points "
               "(bpg 0.0454,0.0674,0.0870,0.1279; msh 0.0419,0.0613,0.0891,0.1279).")
@o.option("--rate-sample", "rate_sample", type=o.positive(), default=None, metavar="N", show_default="64",
          help="Images of the seeded random sample (seed --order-seed) a --mean-bpp parameter is chosen on; the "
               "whole split when it has fewer.")
@o.codec_opt("Codec option, e.g. j2k.mct=false (CODEC. may be left out with one --codec).")
@o.option("--crop", default=None, show_default="per dataset",
          help="imagenet | full | crop:WxH[+X+Y] | scale:WxH | scale:F.")
@o.option("--shard-size", type=o.positive(), default=None, show_default="1000; 100 for cityscapes",
          help="Samples per shard. Aim for several shards per core of the cluster.")
@o.workers("Parallel tasks.", shown="all CPUs", lo=1)
@o.option("--address", default=None, show_default="RAY_ADDRESS, else a local Ray",
          help="Ray cluster to join: HEAD:6379 or ray://HEAD:10001.")
@o.option("--break-lock", is_flag=True, help="Take over the output's lock from a job known to be dead on another host.")
@o.option("--executor", type=click.Choice(["auto", "ray", "local"]), default=None, show_default="auto",
          help="auto: Ray when it pays (several shards and workers).")
@o.option("--no-orig", is_flag=True, help="Do not write the lossless orig variant.")
@o.option("--orig-format", type=click.Choice(["png", "qoi", "npy"]), default=None,
          show_default="npy for train* splits, else png",
          help="Format of the orig crops: npy (uncompressed, no decode work for the paired loader), png (every "
               "image reader knows it, ~2.4x smaller) or qoi.")
@o.option("--store-decoded", is_flag=True, default=None, help="Also store decoded images as lossless PNG.")
@o.option("--no-ms-ssim", is_flag=True, help="Skip MS-SSIM (saves ~3 ms per image and setting).")
@o.option("--order", type=click.Choice(["shuffled", "sorted"]), default=None,
          show_default="shuffled for train* splits, else sorted",
          help="Sample order across shards: shuffled (a seeded permutation, so a shard holds a random mix of "
               "classes) or sorted by key.")
@o.option("--order-seed", type=int, default=None, show_default="0",
          help="Seed of the shuffled order and of the --mean-bpp sample.")
@o.limit("Only the first N images in shard order (sorted: the first keys; shuffled: a seeded random subset).",
         checked_by_library=True)
@o.max_pixels("Images whose header holds more pixels (and crops or scales to more) are listed as failures before "
              "any decode; the default keeps two workers within 24 GB (docs/scale.md).")
@offline_errors
def prepare_shards(**options: Any) -> None:
    """Crop, encode with every codec setting, measure, and write aligned WebDataset shards + manifests.

    \b
    Example:
      prepare-shards --dataset imagenet --src /data/ILSVRC2012 --split val --out /data/shards \\
          --codec jpeg --quality 75,10,5 --codec j2k --quality 75,200,400 --codec bpg --quality 41,46,51
      prepare-shards --dataset cityscapes --src /data/cityscapes --split train --out /data/shards \\
          --codec bpg --mean-bpp katakol2021     # paper 2's four rate points: one QP each for the split
    """
    import signal

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (a scheduler's pre-emption) ends like Ctrl-C: in-flight work cancelled

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        _prepare(**options)
    finally:  # called in-process (a notebook, a test runner), the caller's handler comes back
        signal.signal(signal.SIGTERM, old_term)


def _prepare(dataset: str, src: str | None, split: str | None, out: str, codecs: tuple, quality: tuple, bpps: tuple,
             codec_opt: tuple, crop: str | None, shard_size: int | None, workers: int | None, address: str | None,
             break_lock: bool, executor: str | None, no_orig: bool, orig_format: str | None, store_decoded: bool | None,
             no_ms_ssim: bool, order: str | None, order_seed: int | None, limit: int | None, quiet: bool,
             max_pixels: int, mean_bpps: tuple = (), rate_sample: int | None = None) -> None:
    from ..pipelines.prepare import PrepareConfig, prepare_shards as run

    settings = parse_codec_settings(codecs, quality, bpps, codec_opt, mean_bpps)
    cfg = PrepareConfig(dataset=dataset, out=out, src=src, split=split, codecs=settings,
                        write_orig=not no_orig, ms_ssim=not no_ms_ssim, progress=not quiet, break_lock=break_lock,
                        max_pixels=max_pixels,
                        **drop_none(crop=crop, shard_size=shard_size, workers=workers, address=address,
                                    executor=executor, store_decoded=store_decoded, limit=limit, orig_format=orig_format,
                                    order=order, order_seed=order_seed, rate_sample=rate_sample))
    manifests = run(cfg, on_rate_choice=_echo_choice)
    first = next(iter(manifests.values()))
    n_fail = first.get("num_failures", 0)
    where = storage.join(out, dataset, cfg.split)
    if n_fail and not first["num_samples"]:
        f0 = first["failures"][0]
        raise click.ClickException(f"none of the {n_fail} images could be used (listed in the manifests under {where}); "
                                   f"the first, {f0['key']}: {f0['reason']}")
    click.echo(f"wrote {len(manifests)} variant(s) x {first['num_shards']} shard(s), {first['num_samples']} images each, "
               f"to {where}" + (f"; {n_fail} image(s) could not be used, listed with the reason under 'failures' in the manifests" if n_fail else ""))
