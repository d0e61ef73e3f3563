"""Command line: thin click wrappers over the library (parse, call one function, print).

``lossyvision <command>`` and the standalone console scripts (``prepare-shards``,
``rate-report``, ...) are the same click commands. User errors end in one line on stderr and exit
code 2 (bad options) or 1 (a failure while running), never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import click

from .. import storage
from .common import OneLineCommand, OneLineGroup, setup_logging, user_errors, verbose_option

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _usage_errors() -> tuple[type, ...]:
    from ..codecs import CodecError
    from ..eval.rates import ResultsError
    from ..names import NameError_
    from ..pipelines.crops import CropError
    from ..pipelines.imageio import SourceError
    from ..pipelines.prepare import PrepareError

    return (PrepareError, CodecError, CropError, SourceError, NameError_, ResultsError)


def _failures() -> tuple[type, ...]:
    from ..pipelines.joblock import JobLockError
    from ..pipelines.prepare import OutputNotSharedError
    from ..pipelines.shards import ManifestError
    from ..storage import StorageError

    return (FileNotFoundError, StorageError, JobLockError, OutputNotSharedError, ManifestError)


_errors = user_errors(_usage_errors, _failures, interrupted="interrupted; rerun the same command to resume (finished shards are kept)",
                      memory_hint="lower --max-pixels or --workers, or use a machine with more memory")


def user_errors_prepare(f: Callable) -> Callable:
    """One-line errors for this module's commands; a Ray address nobody answers is named as such."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ConnectionError as e:  # ray.init with an address nobody answers
            raise click.ClickException(f"cannot reach the Ray cluster: {e}; check --address / RAY_ADDRESS") from None

    return _errors(wrapper)


def finite(what: str, text: str) -> float:
    """A finite number from an option value, or a one-line usage error naming the option."""
    try:
        v = float(text)
    except ValueError:
        raise click.UsageError(f"{what} value '{text}' is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise click.UsageError(f"{what} value '{text}' must be a finite number")
    return v


def max_pixels_option(f: Callable) -> Callable:
    from ..pipelines.imageio import DEFAULT_MAX_PIXELS

    return click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
                        help="Images whose header holds more pixels (and crops or scales to more) are listed as failures "
                             "before any decode; the default keeps two workers within 24 GB (docs/scale.md).")(f)


def drop_none(**kwargs: Any) -> dict:
    """Options left unset on the command line fall through to the library defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}


@click.group(context_settings=CONTEXT, cls=OneLineGroup)
@click.version_option(package_name="lossyvision")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """lossyvision: train and evaluate vision models on lossy-compressed images."""
    setup_logging(verbose)


# -- codecs -------------------------------------------------------------------------------


@main.command("codecs", context_settings=CONTEXT, cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbose_option
def codecs_cmd(as_json: bool) -> None:
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
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from ..reports.tables import markdown

    for r in rows:
        r["versions"] = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    click.echo(markdown(rows, ["name", "q", "range", "example_spec", "description", "versions"]))


@main.command("encode", context_settings=CONTEXT, cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--codec", "codec_name", required=True, help="Codec name (see 'lossyvision codecs').")
@click.option("--q", "q", default=None, help="Native codec parameter (JPEG quality, J2K ratio, QP, ...).")
@click.option("--bpp", default=None, help="Target rate in bits per pixel instead of --q.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Codec option, e.g. mct=false, preset=slow.")
@click.option("--crop", default=None, help="Crop policy before encoding (default: none; e.g. imagenet).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the bitstream here.")
@click.option("--decoded", type=click.Path(dir_okay=False), default=None, help="Write the decoded image here (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@max_pixels_option
@verbose_option
@user_errors_prepare
def encode_cmd(image: str, codec_name: str, q: str | None, bpp: str | None, opts: tuple[str, ...], crop: str | None,
               output: str | None, decoded: str | None, as_json: bool, max_pixels: int) -> None:
    """Encode one IMAGE and print bytes, bpp, PSNR, SSIM, MS-SSIM and encode/decode time."""
    from ..codecs import create, png_encode
    from ..pipelines.crops import parse_crop
    from ..pipelines.imageio import read_rgb
    from .. import quality

    if q is not None and bpp is not None:
        raise click.UsageError("give --q or --bpp, not both")
    qv = None if q is None else finite("--q", q)
    bv = None if bpp is None else finite("--bpp", bpp)
    if not os.path.isfile(image):
        raise click.UsageError(f"image {image} does not exist")
    codec = create(codec_name, None if qv is None else (int(qv) if qv == int(qv) else qv), bpp=bv, **parse_opts(opts))
    policy = parse_crop(crop) if crop else None
    if policy is not None:
        policy.check(max_pixels)
    codec.check_ready()
    rgb = read_rgb(image, max_pixels)
    if policy is not None:
        rgb, _ = policy(rgb, max_pixels=max_pixels)
    r = codec.roundtrip(rgb)
    # as in the prepare job: SSIM and MS-SSIM are left out (null) below the 11x11 window
    s, ms = quality.Reference(rgb).scores(r.decoded, True) if min(rgb.shape[:2]) >= quality.WIN_SIZE else (None, None)
    stats = {"spec": codec.spec, "q": r.q, "h": rgb.shape[0], "w": rgb.shape[1], "bytes": r.bytes, "bpp": r.bpp(),
             "psnr": quality.psnr(rgb, r.decoded), "ssim": s, "ms_ssim": ms, "enc_ms": r.enc_ms, "dec_ms": r.dec_ms}
    if output:
        with open(output, "wb") as f:
            f.write(r.data)
    if decoded:
        with open(decoded, "wb") as f:
            f.write(png_encode(r.decoded, level=6))
    if as_json:
        click.echo(json.dumps({k: (None if isinstance(v, float) and v == float("inf") else v) for k, v in stats.items()}))
    else:
        for k, v in stats.items():
            click.echo(f"{k:>8}: {v:.4f}" if isinstance(v, float) else f"{k:>8}: {v}")


def parse_opts(opts: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in opts:
        if "=" not in o:
            raise click.UsageError(f"codec option '{o}' must look like KEY=VALUE")
        k, v = o.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# -- prepare-shards -----------------------------------------------------------------------


def parse_codec_settings(codecs: tuple[str, ...], qs: tuple[str, ...], bpps: tuple[str, ...], opts: tuple[str, ...]):
    """Pair each --codec with its --q list or --bpp list (by position), e.g.
    ``--codec jpeg --q 75,10,5 --codec j2k --q 200``; ``--codec-opt j2k.mct=false`` scopes options."""
    from ..pipelines.prepare import CodecSetting

    if not codecs:
        if qs or bpps:
            raise click.UsageError("--q/--bpp given without --codec")
        return []
    if qs and bpps:
        raise click.UsageError("mix of --q and --bpp: run prepare-shards once with --q and once with --bpp (same --out)")
    values = qs or bpps
    if len(values) != len(codecs):
        raise click.UsageError(
            f"{len(codecs)} --codec but {len(values)} --{'q' if qs else 'bpp'}; give one list per codec, "
            "e.g. --codec jpeg --q 75,10,5 --codec j2k --q 200"
        )
    per_codec: dict[str, dict] = {}
    for o in opts:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise click.UsageError(f"--codec-opt '{o}' must look like CODEC.KEY=VALUE, e.g. j2k.mct=false")
        k, v = o.split("=", 1)
        c, key = k.split(".", 1)
        per_codec.setdefault(c, {})[key] = v
    unknown = set(per_codec) - set(codecs)
    if unknown:
        raise click.UsageError(f"--codec-opt for {', '.join(sorted(unknown))}, which is not among the --codec values")
    settings = []
    for name, vals in zip(codecs, values):
        for tok in vals.split(","):
            tok = tok.strip()
            v = finite(f"--{'q' if qs else 'bpp'} for codec {name}:", tok)
            v = int(v) if v == int(v) and qs else v
            settings.append(CodecSetting(name, q=v if qs else None, bpp=None if qs else v, options=dict(per_codec.get(name, {}))))
    return settings


@main.command("prepare-shards", context_settings=CONTEXT, cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@click.option("--dataset", required=True, help="imagenet | cityscapes | folder | samples | fashion-mnist")
@click.option("--src", default=None, help="Dataset root: a path or an fsspec URL such as s3://bucket/ILSVRC2012 (not needed for samples).")
@click.option("--split", default=None, help="Split folder, e.g. train or val (default: val; 'all' for folder/samples).")
@click.option("--out", required=True, help="Shard root, a path or an fsspec URL (s3://bucket/shards): writes OUT/<dataset>/<split>/<variant>/.")
@click.option("--codec", "codecs", multiple=True, help="Codec name; repeat for several codecs.")
@click.option("--q", "qs", multiple=True, help="Comma-separated native parameters for the matching --codec.")
@click.option("--bpp", "bpps", multiple=True, help="Comma-separated target rates (bits/pixel) for the matching --codec.")
@click.option("--codec-opt", "codec_opts", multiple=True, metavar="CODEC.KEY=VALUE", help="Codec option, e.g. j2k.mct=false.")
@click.option("--crop", default=None, help="imagenet | full | crop:WxH[+X+Y] | scale:WxH | scale:F (default per dataset).")
@click.option("--shard-size", type=int, default=None, help="Samples per shard (default 1000; 100 for cityscapes). Aim for several shards per core of the cluster.")
@click.option("--workers", type=int, default=None, help="Parallel tasks (default: all CPUs).")
@click.option("--address", default=None, help="Ray cluster to join: HEAD:6379 or ray://HEAD:10001 (default: RAY_ADDRESS, else a local Ray).")
@click.option("--break-lock", is_flag=True, help="Take over the output's lock from a job known to be dead on another host.")
@click.option("--executor", type=click.Choice(["auto", "ray", "local"]), default=None, help="auto: Ray when it pays (several shards and workers).")
@click.option("--no-orig", is_flag=True, help="Do not write the lossless orig variant.")
@click.option("--orig-format", type=click.Choice(["png", "qoi", "npy"]), default=None,
              help="Format of the orig crops: npy (default for train* splits: uncompressed, no decode work for the "
                   "paired loader), png (default otherwise: every image reader knows it, ~2.4x smaller) or qoi.")
@click.option("--store-decoded", is_flag=True, default=None, help="Also store decoded images as lossless PNG.")
@click.option("--no-ms-ssim", is_flag=True, help="Skip MS-SSIM (saves ~3 ms per image and setting).")
@click.option("--order", type=click.Choice(["shuffled", "sorted"]), default=None,
              help="Sample order across shards: shuffled (default for train* splits: a seeded permutation, so a shard "
                   "holds a random mix of classes) or sorted by key (default for other splits).")
@click.option("--order-seed", type=int, default=None, help="Seed of the shuffled order [0].")
@click.option("--limit", type=int, default=None, help="Only the first N images in shard order (sorted: the first keys; shuffled: a seeded random subset).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@max_pixels_option
@verbose_option
@user_errors_prepare
def prepare_shards(**options: Any) -> None:
    """Crop, encode with every codec setting, measure, and write aligned WebDataset shards + manifests.

    \b
    Example:
      prepare-shards --dataset imagenet --src /data/ILSVRC2012 --split val \\
          --codec jpeg --q 75,10,5 --codec j2k --q 75,200,400 --codec bpg --q 41,46,51 --out /data/shards
    """
    import signal

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (a scheduler's pre-emption) ends like Ctrl-C: in-flight work cancelled

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        _prepare(**options)
    finally:  # called in-process (a notebook, a test runner), the caller's handler comes back
        signal.signal(signal.SIGTERM, old_term)


def _prepare(dataset: str, src: str | None, split: str | None, out: str, codecs: tuple, qs: tuple, bpps: tuple,
             codec_opts: tuple, crop: str | None, shard_size: int | None, workers: int | None, address: str | None,
             break_lock: bool, executor: str | None, no_orig: bool, orig_format: str | None, store_decoded: bool | None, no_ms_ssim: bool,
             order: str | None, order_seed: int | None, limit: int | None, quiet: bool, max_pixels: int) -> None:
    from ..pipelines.prepare import PrepareConfig, prepare_shards as run

    settings = parse_codec_settings(codecs, qs, bpps, codec_opts)
    cfg = PrepareConfig(dataset=dataset, out=out, src=src, split=split, codecs=settings,
                        write_orig=not no_orig, ms_ssim=not no_ms_ssim, progress=not quiet, break_lock=break_lock, max_pixels=max_pixels,
                        **drop_none(crop=crop, shard_size=shard_size, workers=workers, address=address,
                                    executor=executor, store_decoded=store_decoded, limit=limit, orig_format=orig_format,
                                    order=order, order_seed=order_seed))
    manifests = run(cfg)
    first = next(iter(manifests.values()))
    n_fail = first.get("num_failures", 0)
    where = storage.join(out, dataset, cfg.split)
    if n_fail and not first["num_samples"]:
        f0 = first["failures"][0]
        raise click.ClickException(f"none of the {n_fail} images could be used (listed in the manifests under {where}); "
                                   f"the first, {f0['key']}: {f0['reason']}")
    click.echo(f"wrote {len(manifests)} variant(s) x {first['num_shards']} shard(s), {first['num_samples']} images each, "
               f"to {where}" + (f"; {n_fail} image(s) could not be used, listed with the reason under 'failures' in the manifests" if n_fail else ""))


# -- rate-report --------------------------------------------------------------------------


@main.command("rate-report", context_settings=CONTEXT, cls=OneLineCommand)
@click.version_option(package_name="lossyvision")
@click.argument("root")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for CSV/JSON/PNG (default ROOT/report; for a URL ROOT, ./report-<name>).")
@click.option("--results", multiple=True, type=click.Path(dir_okay=False), help="Accuracy JSON from eval-classifier, joined by variant.")
@click.option("--no-plot", is_flag=True, help="Skip the PNG plots.")
@verbose_option
@user_errors_prepare
def rate_report(root: str, out: str | None, results: tuple[str, ...], no_plot: bool) -> None:
    """Per-variant rate table (paper 1 Table I columns + MS-SSIM, timings, failures) and RD plot."""
    from ..reports.rate_report import rate_report as run

    if not root.strip():
        raise click.UsageError("ROOT is empty; pass the --out of prepare-shards")
    if not storage.isdir(root):
        raise click.UsageError(f"{root} is not a folder; pass the --out of prepare-shards")
    rep = run(root, out=out, results=list(results) or None, plot=not no_plot)
    click.echo(rep.markdown)
    click.echo("")
    for kind, path in rep.files.items():
        click.echo(f"{kind}: {path}")


def _register_optional() -> None:
    """Commands of the training stages live in their own modules; register the ones present."""
    import importlib

    for mod, names in (("lossyvision.cli.classifier", ("train_classifier", "train_expert", "eval_classifier", "eval_matrix")),
                       ("lossyvision.cli.segmentation", ("train_restoration", "restore_shards", "train_segmentation", "eval_segmentation"))):
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            if e.name != mod:
                raise
            continue
        for n in names:
            cmd = getattr(m, n, None)
            if isinstance(cmd, click.Command):
                main.add_command(cmd, n.replace("_", "-"))


_register_optional()

prepare_shards_main = prepare_shards
rate_report_main = rate_report

