"""Rate curves from report rows: which rows form one codec's (or one recipe's) curve.

A curve is one codec family (codec plus its non-default options, e.g. 'j2k (nomct)') on one
dataset/split, optionally for one recipe (a results label); its points are the family's variants,
ordered by rate. Restored variants (restore-shards) form their own family beside their codec's,
'bpg+restored' (paper 2 Fig. 6), at their source's rate. The lossless 'orig' row is not a point of
any curve: the plots draw it as a reference line.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable


def _coded_variant(r: dict) -> str:
    """The variant whose bitstream a row stands for: a restored row's source, else the variant."""
    return r.get("source_variant") or r["variant"].split("+")[0]


def family(r: dict) -> str:
    """Curve label: the codec plus any non-default options (the variant minus its parameter), and
    '+restored' (or the variant's own '+' suffix) for restored variants."""
    parts = _coded_variant(r).split("-")
    extra = "-".join(parts[2:])
    label = r["codec"] + (f" ({extra})" if extra else "")
    if r.get("target_bpp") is not None:
        label += " rate-controlled"
    if "+" in r["variant"]:
        return label + "+" + r["variant"].split("+", 1)[1]
    return label + ("+restored" if r.get("restored") else "")


def base_family(label: str) -> str:
    """The codec family a derived family ('bpg+restored') was made from ('bpg')."""
    return label.split("+", 1)[0]


def setting(r: dict) -> str:
    """A point's label: the codec parameter of its variant ('q75', 'r200', 'qp41', 'b0.5')."""
    parts = _coded_variant(r).split("-")
    return parts[1] if len(parts) > 1 else r["variant"]


def finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_point(r: dict) -> bool:
    """A lossy variant with a measured rate (a point of some curve)."""
    return r.get("codec") != "lossless" and finite(r.get("bpp")) and r["bpp"] > 0


@dataclass
class Group:
    """The rows of one dataset/split."""

    dataset: str
    split: str
    rows: list[dict] = field(default_factory=list)

    @property
    def images(self) -> str:
        n = sorted({int(r["images"]) for r in self.rows if finite(r.get("images"))})
        return "?" if not n else str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"

    @property
    def crop(self) -> str:
        crops = sorted({str(r["crop"]) for r in self.rows if r.get("crop")})
        return ", ".join(crops) or "?"

    def title(self) -> str:
        """'imagenet / val: 50000 images, crop resize256-center224' (a plot's title)."""
        return f"{self.dataset} / {self.split}: {self.images} images, crop {self.crop}"


def groups(rows: list[dict]) -> list[Group]:
    """Rows by (dataset, split), in the table's order."""
    out: dict[tuple[str, str], Group] = {}
    for r in rows:
        key = (r["dataset"], r["split"])
        out.setdefault(key, Group(*key)).rows.append(r)
    return list(out.values())


@dataclass
class Curve:
    label: str
    rates: list[float]
    values: list[float]
    settings: list[str]

    def __len__(self) -> int:
        return len(self.rates)


def curves(rows: list[dict], metric: str, key: Callable[[dict], str] = family,
           recipe: str | None = None) -> dict[str, Curve]:
    """One curve per ``key(row)`` (default: codec family) of the points with a finite ``metric``;
    with ``recipe``, only that recipe's rows; each variant counts once, points ordered by rate."""
    seen: dict[str, dict[str, tuple[float, float, str]]] = defaultdict(dict)
    for r in rows:
        if not is_point(r) or not finite(r.get(metric)):
            continue
        if recipe is not None and r.get("recipe") != recipe:
            continue
        seen[key(r)].setdefault(r["variant"], (float(r["bpp"]), float(r[metric]), setting(r)))
    out = {}
    for label, pts in seen.items():
        p = sorted(pts.values())
        out[label] = Curve(label, [x[0] for x in p], [x[1] for x in p], [x[2] for x in p])
    return out


def recipes(rows: list[dict]) -> list[str]:
    """The recipe labels in the order they first appear (the first is the recipes' BD reference)."""
    out: list[str] = []
    for r in rows:
        if r.get("recipe") is not None and r["recipe"] not in out:
            out.append(r["recipe"])
    return out
