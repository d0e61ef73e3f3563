"""``rate-report``: the per-variant rate table and plots of a shard root."""

from __future__ import annotations

import click

from .. import storage
from . import options as o
from .errors import offline_errors


@o.command("rate-report", quiet=False)
@click.argument("root")
# -- rate-report options (begin) ------------------------------------------------------------
@o.out("Folder for the tables (CSV/JSON), bd_rate.*, compressai/*.json and the figures.",
       shown="ROOT/report; for a URL ROOT, ./report-<name>")
@o.option("--results", multiple=True, metavar="[LABEL=]FILE", show_default="none",
          help="Accuracy JSON joined by variant: eval-classifier's results.json or eval-segmentation's "
               "results.json. LABEL names the curve (recipe) of its rows; repeat a LABEL to make one curve of "
               "several files. Without it: the row's model (classifier) or configuration (segmentation).")
@o.option("--bd-reference", "bd_reference", multiple=True, metavar="CODEC|RECIPE",
          show_default="jpeg (else the first codec); the first --results' recipe",
          help="Reference curve of the Bjøntegaard deltas: a codec as the table names it (j2k, 'j2k (nomct)') "
               "or a --results LABEL; repeat to set both.")
@o.option("--bd-method", type=click.Choice(["pchip", "akima", "cubic"]), default="pchip",
          help="Interpolation of the Bjøntegaard deltas: pchip (the JCT-VC/JVET/MPEG CTC spreadsheets'), "
               "akima, or cubic (VCEG-M33's third-order fit; needs 4 points per curve).")
@o.formats()
@o.option("--no-plot", is_flag=True, help="Skip the figures.")
# -- rate-report options (end) --------------------------------------------------------------
@offline_errors
def rate_report(root: str, out: str | None, results: tuple[str, ...], bd_reference: tuple[str, ...], bd_method: str,
                formats: tuple[str, ...], no_plot: bool) -> None:
    """Per-variant rate table (paper 1 Table I columns + MS-SSIM, timings, failures), Bjøntegaard deltas
    (BD-rate, BD-PSNR/MS-SSIM, BD-accuracy/mIoU) vs a reference codec and recipe, CompressAI-format
    curves, and rate-distortion / rate-accuracy figures. Accuracies and mIoU are percent."""
    from ..reports.bd import BDReferenceError
    from ..reports.rate_report import rate_report as run

    if not root.strip():
        raise click.UsageError("ROOT is empty; pass the --out of prepare-shards")
    if not storage.isdir(root):
        raise click.UsageError(f"{root} is not a folder; pass the --out of prepare-shards")
    try:
        rep = run(root, out=out, results=list(results) or None, plot=not no_plot, bd_reference=bd_reference,
                  bd_method=bd_method, formats=formats)
    except BDReferenceError as e:
        raise click.UsageError(str(e)) from None
    click.echo(rep.markdown)
    click.echo("")
    for kind, path in rep.files.items():
        click.echo(f"{kind}: {path}")
