"""Rate-distortion and rate-accuracy figures for papers: PNG, PDF and/or SVG.

Each figure is one dataset/split, titled with its image count and crop; every panel has its
legend, points carry their codec setting (q75, r200, qp41), axes name their units. The lossless
``orig`` row is a dashed horizontal reference line, so it never stretches the rate axis (it
sits near 10 bpp as PNG while the codecs sit under 1.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ..eval.figures import DEFAULT_FORMATS, pyplot, save
from .curves import Group, base_family, curves, finite, groups, recipes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM", "ms_ssim_db": "MS-SSIM (dB)",
          "top1_pct": "top-1 accuracy (%)", "top5_pct": "top-5 accuracy (%)", "miou_pct": "mIoU (%)",
          "miou_small_pct": "mIoU small objects (%)", "miou_big_pct": "mIoU big objects (%)"}
RATE_LABEL = "rate (bits per pixel)"
RD_METRICS = ("psnr", "ms_ssim_db", "ssim")
ACCURACY_METRICS = ("top1_pct", "top5_pct", "miou_pct")
_STYLES = ("-", "--", ":", "-.")


def _stem(stem: str, g: Group, several: bool) -> str:
    return f"{stem}_{g.dataset}_{g.split}" if several else stem


def _panels(n: int) -> tuple[Any, list]:
    plt = pyplot()
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 4.4), squeeze=False)
    return fig, list(axes[0])


def _label_points(ax: Any, xs: list[float], ys: list[float], labels: list[str], colour: str) -> None:
    for x, y, q in zip(xs, ys, labels):
        ax.annotate(q, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=colour)


def _finish(ax: Any, ylabel: str) -> None:
    ax.set_xlabel(RATE_LABEL)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    n = len(ax.get_legend_handles_labels()[0])
    if n > 6:  # a long legend inside would hide the curves: below the panel instead
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2 if n < 13 else 3, frameon=False)
    elif n:
        ax.legend(fontsize=8, loc="best")


def rd_figure(g: Group, metrics: Iterable[str] = RD_METRICS) -> Figure | None:
    """One panel per metric with data: a line per codec family over rate; None if nothing to plot.
    A restored family ('bpg+restored', paper 2 Fig. 6) is dashed in its codec's colour."""
    metrics = [m for m in metrics if curves(g.rows, m)]
    if not metrics:
        return None
    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics):
        cs = curves(g.rows, metric)
        bases = sorted({base_family(label) for label in cs})
        for label, c in sorted(cs.items()):
            colour = colours[bases.index(base_family(label)) % len(colours)]
            derived = label != base_family(label)
            ax.plot(c.rates, c.values, marker="s" if derived else "o", linestyle="--" if derived else "-", color=colour,
                    label=label)
            _label_points(ax, c.rates, c.values, c.settings, colour)
        _finish(ax, LABELS.get(metric, metric))
    fig.suptitle(g.title())
    fig.tight_layout()
    return fig


def rate_accuracy_figure(g: Group, metrics: Iterable[str] = ACCURACY_METRICS) -> Figure | None:
    """One panel per accuracy metric with data: a line per (codec family, recipe), colour by codec
    and line style by recipe; each recipe's accuracy on ``orig`` as a dashed reference line."""
    metrics = [m for m in metrics if curves(g.rows, m)]
    if not metrics:
        return None
    plt = pyplot()
    fig, axes = _panels(len(metrics))
    rs = recipes(g.rows)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, metrics):
        fams = sorted(curves(g.rows, metric))
        for i, recipe in enumerate(rs):
            style = _STYLES[i % len(_STYLES)]
            for label, c in sorted(curves(g.rows, metric, recipe=recipe).items()):
                colour = colours[fams.index(label) % len(colours)]
                ax.plot(c.rates, c.values, marker="o", linestyle=style, color=colour,
                        label=f"{label} / {recipe}" if len(rs) > 1 else label)
                _label_points(ax, c.rates, c.values, c.settings, colour)
            for r in g.rows:
                if r.get("codec") == "lossless" and r.get("recipe") == recipe and finite(r.get(metric)):
                    # axhline spans the axes in axes coordinates: it leaves the rate limits to the codecs
                    ax.axhline(r[metric], color="0.35", linestyle=style, linewidth=1,
                               label=f"{r['variant']}{' / ' + recipe if len(rs) > 1 else ''} ({r[metric]:.1f} %)")
                    break
        _finish(ax, LABELS.get(metric, metric))
    fig.suptitle(g.title())
    fig.tight_layout()
    return fig


def _plot(rows: list[dict], stem: str, formats: Iterable[str], make: Any) -> list[str]:
    gs = groups(rows)
    paths: list[str] = []
    for g in gs:
        fig = make(g)
        if fig is not None:
            paths += save(fig, _stem(stem, g, len(gs) > 1), formats)
    return paths


def rd_plot(rows: list[dict], stem: str, formats: Iterable[str] = DEFAULT_FORMATS,
            metrics: Iterable[str] = RD_METRICS) -> list[str]:
    """PSNR, MS-SSIM (dB) and SSIM against rate: STEM.<format> (STEM_<dataset>_<split>.<format> when
    the rows hold several splits); returns the paths, none if nothing to plot."""
    metrics = tuple(metrics)
    return _plot(rows, stem, formats, lambda g: rd_figure(g, metrics))


def rate_accuracy_plot(rows: list[dict], stem: str, formats: Iterable[str] = DEFAULT_FORMATS) -> list[str]:
    """Accuracy (top-1, top-5, mIoU; percent) against rate (paper 1 Fig. 4), files as :func:`rd_plot`."""
    return _plot(rows, stem, formats, rate_accuracy_figure)
