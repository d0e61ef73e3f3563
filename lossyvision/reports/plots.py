"""Rate-distortion and rate-accuracy plots (PNG)."""

from __future__ import annotations

import os
from collections import defaultdict


def _family(r: dict) -> str:
    """Line label: the codec plus any non-default options (variant minus its parameter)."""
    v = r["variant"].split("+")[0]
    parts = v.split("-")
    extra = "-".join(parts[2:])
    label = r["codec"] + (f" ({extra})" if extra else "")
    if r.get("target_bpp") is not None:
        label += " rate-controlled"
    return label + ("+" + r["variant"].split("+", 1)[1] if "+" in r["variant"] else "")


def rd_plot(rows: list[dict], path: str, metrics: tuple[str, ...] = ("psnr", "ssim"), title: str | None = None) -> str | None:
    """PSNR and SSIM (or other metric columns) against bpp, one line per codec; None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lossy = [r for r in rows if r.get("bpp") is not None and r["codec"] != "lossless"]
    if not lossy:
        return None
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in lossy:
        key = _family(r) if len({(x["dataset"], x["split"]) for x in lossy}) == 1 else f"{r['dataset']}/{r['split']}: {_family(r)}"
        groups[key].append(r)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, rs in sorted(groups.items()):
            pts = sorted((r["bpp"], r[metric]) for r in rs if r.get(metric) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel("rate (bits per pixel)")
        ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}.get(metric, metric))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rate_accuracy_plot(rows: list[dict], path: str, metric: str = "top1") -> str | None:
    """Accuracy against bpp, one line per (codec, model/recipe) (paper 1 Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.get("bpp") is not None and r.get(metric) is not None]
    if not pts:
        return None
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in pts:
        groups[f"{r['codec']} / {r.get('model', 'model')}"].append(r)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["bpp"])
        ax.plot([r["bpp"] for r in rs], [100 * r[metric] for r in rs], marker="o", label=label)  # fractions -> %
    ax.set_xlabel("rate (bits per pixel)")
    ax.set_ylabel(f"{metric} accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
