"""Paper 2's segmentation report from eval-segmentation's result records: Table II and Fig. 7.

Table II (``table2.{md,csv,json}``): one row per configuration and rate, grouped by codec and, within
a codec, in the paper's order (CO, CC, RO, then OC, OR, RR), rising rate; OO last. Columns: the
configuration, codec, codec setting (qp41), bpp (the compressed side's mean: the training set's,
the test set's for OC/OR; PNG's for OO), IoU per class (the class names the records carry, from
the shards' class list), the small- and big-object mIoU and the mIoU, all percent.

Fig. 7 (``miou_vs_bpp.<format>``): mIoU against rate, one curve per configuration (the same colour
in every panel), one panel per codec when there are several, OO a horizontal reference line.

It lives in eval (not reports/) because ``evaluate_checkpoint`` writes it after each evaluation, and
it imports nothing from eval.segmentation, which calls it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: paper 2's configurations in its Table II order, then the ones it plots but does not tabulate
CONFIG_ORDER = ("CO", "CC", "RO", "OC", "OR", "RR")
LOSSLESS = "lossless"


def iou_column(cls: str) -> str:
    """The table column of one class's IoU (percent), e.g. 'traffic_light_iou_pct'."""
    return cls.replace(" ", "_") + "_iou_pct"


def compressed_side(r: dict) -> str:
    """The variant whose rate defines a record's point: the training set's unless it is the original."""
    return r["train_variant"] if r["configuration"][0] != "O" else r["test_variant"]


def codec_family(variant: str) -> str:
    """'bpg' for 'bpg-qp41' and 'bpg-qp41+restored'."""
    return variant.split("+", 1)[0].split("-", 1)[0]


def setting(variant: str) -> str:
    """The codec parameter of a variant name, as a point label: 'qp41' for 'bpg-qp41+restored'."""
    parts = variant.split("+", 1)[0].split("-")
    return parts[1] if len(parts) > 1 else variant


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _config_rank(c: str) -> tuple[int, str]:
    return (CONFIG_ORDER.index(c), c) if c in CONFIG_ORDER else (len(CONFIG_ORDER), c)


def table2_rows(records: Sequence[dict], classes: Sequence[str]) -> list[dict]:
    """Table II rows (see the module docstring) of current-format records, OO last."""
    rows = []
    for r in records:
        config = r["configuration"]
        side = compressed_side(r)
        oo = config == "OO"
        row = {"configuration": config, "codec": LOSSLESS if oo else codec_family(side),
               "setting": "-" if oo else setting(side), "bpp": _finite(r.get("bpp"))}
        ious = r.get("iou_pct") or {}
        row.update({iou_column(c): _finite(ious.get(c)) for c in classes})
        row.update({k: _finite(r.get(k)) for k in ("miou_small_pct", "miou_big_pct", "miou_pct")})
        row.update({"train_variant": r["train_variant"], "test_variant": r["test_variant"], "images": r.get("images")})
        rows.append(row)
    rows.sort(key=lambda x: (x["configuration"] == "OO", x["codec"], _config_rank(x["configuration"]),
                             x["bpp"] if x["bpp"] is not None else math.inf, x["train_variant"], x["test_variant"]))
    return rows


def table2_columns(classes: Sequence[str]) -> list[str]:
    return ["configuration", "codec", "setting", "bpp", *map(iou_column, classes), "miou_small_pct", "miou_big_pct",
            "miou_pct", "train_variant", "test_variant", "images"]


def _cell(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table2_markdown(rows: Sequence[dict], classes: Sequence[str], small: Sequence[str], dataset: str) -> str:
    """Table II as Markdown: a 'CO (bpg)' label on the first row of each group, as the paper prints it."""
    head = ["configuration", "setting", "bpp", *classes, "small obj.", "big obj.", "mIoU"]
    lines = [f"Table II: per-class IoU, small/big-object mIoU and mIoU (%) per configuration and rate, {dataset}; "
             f"small objects: {', '.join(small) or 'none'}; bpp: the compressed side's mean (the training set's, the "
             "test set's for OC/OR; the originals' for OO).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    last = None
    for r in rows:
        group = f"{r['configuration']} ({r['codec']})"
        cells = [group if group != last else "", r["setting"], _cell(r["bpp"], 4),
                 *(_cell(r[iou_column(c)]) for c in classes),
                 _cell(r["miou_small_pct"]), _cell(r["miou_big_pct"]), _cell(r["miou_pct"])]
        last = group
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table2(records: Sequence[dict], classes: Sequence[str], small: Sequence[str], dataset: str,
                 out_dir: str | Path) -> dict[str, Path]:
    """table2.csv / table2.json / table2.md under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table2_rows(records, classes)
    cols = table2_columns(classes)
    paths = {"table2_csv": out / "table2.csv", "table2_json": out / "table2.json", "table2_md": out / "table2.md"}
    with open(paths["table2_csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows({c: ("" if r.get(c) is None else r[c]) for c in cols} for r in rows)
    paths["table2_json"].write_text(json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=1) + "\n")
    paths["table2_md"].write_text(table2_markdown(rows, classes, small, dataset))
    return paths


# -- Fig. 7 ----------------------------------------------------------------------------------------

def _title(records: Sequence[dict], dataset: str) -> str:
    splits = sorted({str(r.get("split")) for r in records if r.get("split")})
    images = sorted({int(r["images"]) for r in records if r.get("images") is not None})
    what = ", ".join(filter(None, [f"{dataset} " + "/".join(splits) if splits else dataset,
                                   (f"{images[0]} images" if len(images) == 1 else
                                    f"{images[0]}-{images[-1]} images" if images else ""), "full frames"]))
    return f"mIoU vs rate: {what}"


def miou_figure(records: Sequence[dict], dataset: str = "Cityscapes") -> Figure:
    """Paper 2 Fig. 7: mIoU (%) against rate, a line per configuration over its rates (points labelled
    with the codec setting), in one panel per codec when there are several; OO as a dashed horizontal
    line in every panel, which leaves the rate axis to the compressed points."""
    from .figures import pyplot

    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines: dict[str, dict[str, list[tuple[float, float, str]]]] = {}
    for r in records:
        if r["configuration"] == "OO" or _finite(r.get("bpp")) is None or _finite(r.get("miou_pct")) is None:
            continue
        side = compressed_side(r)
        lines.setdefault(codec_family(side), {}).setdefault(r["configuration"], []).append(
            (float(r["bpp"]), float(r["miou_pct"]), setting(side)))
    oo = next((float(r["miou_pct"]) for r in records if r["configuration"] == "OO" and _finite(r.get("miou_pct")) is not None),
              None)
    codecs = sorted(lines) or [""]
    configs = sorted({c for per in lines.values() for c in per}, key=_config_rank)
    fig, axes = plt.subplots(1, len(codecs), figsize=(6.4 if len(codecs) == 1 else 5.2 * len(codecs), 4.4),
                             squeeze=False, sharey=True)
    for ax, codec in zip(axes[0], codecs):
        for config in configs:
            pts = sorted(lines.get(codec, {}).get(config, []))
            if not pts:
                continue
            colour = colours[configs.index(config) % len(colours)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label=f"{config} ({codec})")
            for x, y, q in pts:
                ax.annotate(q, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
        if oo is not None:
            # axhline spans the axes in axes coordinates: it leaves the rate limits to the codecs
            ax.axhline(oo, color="k", linestyle="--", linewidth=1, label=f"OO ({oo:.1f} %)")
        ax.set_xlabel("rate (bits per pixel)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if len(codecs) > 1:
            ax.set_title(codec, fontsize=10)
    axes[0][0].set_ylabel("mIoU (%)")
    if len(codecs) > 1:
        fig.suptitle(_title(records, dataset), fontsize=10)
    else:
        axes[0][0].set_title(_title(records, dataset), fontsize=10)
    fig.tight_layout()
    return fig


def plot_miou_vs_bpp(records: Sequence[dict], path: str | Path, formats: Iterable[str] | None = None,
                     dataset: str = "Cityscapes") -> list[str]:
    """:func:`miou_figure` written as PATH's stem in each of ``formats`` (default: PATH's suffix,
    else PNG); returns the paths."""
    import os

    from .figures import FORMATS, save

    stem, suffix = os.path.splitext(os.fspath(path))
    if suffix.lstrip(".").lower() not in FORMATS:
        stem, suffix = os.fspath(path), ".png"
    return save(miou_figure(records, dataset), stem, formats or (suffix.lstrip(".").lower(),))
