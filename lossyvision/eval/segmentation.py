"""Semantic segmentation evaluation on train ids: confusion-matrix mIoU and reports.

mIoU follows the Cityscapes benchmark: one confusion matrix accumulated over all pixels of the
split (not a mean of per-image IoUs), ``IoU_c = TP / (TP + FP + FN)``, pixels labelled with the
ignore value (255) ignored, classes absent from both labels and predictions left out of the mean.
Classes, their small/big groups and the ignore value come from the shards' class list (the
manifest's "segmentation" block, :mod:`lossyvision.pipelines.classlists`); Cityscapes' is paper
2's Table II (footnote 5). Every score is percent and says so in its name
(``miou_pct``, per-class ``iou_pct``, ``miou_small_pct``, ``miou_big_pct``, ``pixel_accuracy_pct``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from lossyvision import storage
from lossyvision.eval import segreport
from lossyvision.eval.segreport import iou_column  # noqa: F401  (Table II and Fig. 7 live there; re-exported)
from lossyvision.pipelines.classlists import CITYSCAPES, IGNORE_INDEX, ClassList, variant_class_list

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lossyvision.train.distributed import DistInfo

log = logging.getLogger(__name__)

#: Cityscapes train ids 0..18, in order (cityscapesscripts' labels table).
CITYSCAPES_CLASSES = CITYSCAPES.classes
#: Paper 2, Table II: classes of small objects; every other class is "big".
SMALL_CLASSES = CITYSCAPES.small


def confusion_matrix(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor,
                     num_classes: int = 19, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """int64 [num_classes, num_classes] counts, rows = ground truth, columns = prediction.

    Pixels whose label is ``ignore_index`` never count; any other label or prediction outside
    0..num_classes-1 is an error (it would silently vanish from the matrix otherwise).
    """
    p = torch.as_tensor(pred).reshape(-1).long()
    y = torch.as_tensor(label).reshape(-1).long()
    if p.shape != y.shape:
        raise ValueError(f"prediction and label sizes differ: {tuple(pred.shape)} vs {tuple(label.shape)}")
    keep = y != ignore_index
    p, y = p[keep], y[keep]
    for name, t in (("label", y), ("prediction", p)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} values must be 0..{num_classes - 1} or {ignore_index}; "
                             f"found {sorted(set(t.unique().tolist()) - set(range(num_classes)))[:5]}")
    cm = torch.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


@dataclass
class SegmentationScores:
    """Scores in percent; per-class IoU is NaN (JSON null) for classes never seen nor predicted."""

    miou_pct: float
    iou_pct: dict[str, float]
    miou_small_pct: float
    miou_big_pct: float
    pixel_accuracy_pct: float
    pixels: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["iou_pct"] = {k: (None if np.isnan(v) else v) for k, v in self.iou_pct.items()}
        return d


# keys of result files written before the units were named (already percent); read for one release
_OLD_KEYS = {"miou": "miou_pct", "per_class": "iou_pct", "small": "miou_small_pct", "big": "miou_big_pct",
             "pixel_accuracy": "pixel_accuracy_pct"}


def upgrade_record(r: dict) -> dict:
    """A result record with the current key names (older records used 'miou', 'per_class', ...)."""
    out = {}
    for k, v in r.items():
        new = _OLD_KEYS.get(k)
        out[new if new and new not in r else k] = v
    return out


def scores_from_confusion(cm: np.ndarray, classes: tuple[str, ...] = CITYSCAPES_CLASSES,
                          small: tuple[str, ...] = SMALL_CLASSES) -> SegmentationScores:
    """Per-class IoU, mIoU, small/big mIoU and pixel accuracy (percent) of a confusion matrix whose
    rows and columns are ``classes`` in order; a group with no class seen is NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classes)} classes")
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100
    is_small = np.array([c in small for c in classes])

    def nanmean(v: np.ndarray) -> float:
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    total = cm.sum()
    return SegmentationScores(
        miou_pct=nanmean(iou), iou_pct={c: float(v) for c, v in zip(classes, iou)},
        miou_small_pct=nanmean(iou[is_small]), miou_big_pct=nanmean(iou[~is_small]),
        pixel_accuracy_pct=float(tp.sum() / total * 100) if total else float("nan"), pixels=int(total))


def configuration(train_variant: str, test_variant: str, orig: str = "orig") -> str:
    """Paper 2's name for a (train, test) pair: O original, C compressed, R restored (e.g. 'RO')."""
    def letter(v: str) -> str:
        return "O" if v == orig else "R" if v.endswith("+restored") else "C"
    return letter(train_variant) + letter(test_variant)


# -- inference -----------------------------------------------------------------------------------

def _logits(model: torch.nn.Module, x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))  # zeros = the dataset mean after normalisation
    return model(x)[..., :h, :w]


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Argmax train ids (N x H x W, int64) for normalised N x 3 x H x W input of any size."""
    return _logits(model, x, multiple).argmax(1)


def confusion_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Add the (label, prediction) pairs of ``pred``/``label`` (same device) to ``out``, a flat int64
    confusion matrix of ``num_classes**2 + 1`` counts on that device (the last one collects ignored
    pixels), and return it; no host sync. Values must already be in range (labels are checked on
    the host by :func:`evaluate_model`; predictions are argmaxes over ``num_classes`` logits).

    Not ``torch.bincount``: on CUDA it reads the input's maximum back to the host to size its
    output, one sync per image; ``scatter_add_`` into a fixed-size vector needs none."""
    n = num_classes
    p, y = pred.reshape(-1).long(), label.reshape(-1).long()
    if p.shape != y.shape:
        raise ValueError(f"prediction and label sizes differ: {tuple(pred.shape)} vs {tuple(label.shape)}")
    idx = torch.where(y == ignore_index, n * n, y * n + p)
    if out is None:
        out = torch.zeros(n * n + 1, dtype=torch.int64, device=p.device)
    return out.scatter_add_(0, idx, torch.ones_like(idx))


def _check_label(y: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    bad = (y != ignore_index) & ((y < 0) | (y >= num_classes))
    if bad.any():  # a CPU tensor from the stream: no device sync
        found = sorted(set(y[bad].unique().tolist()))[:5]
        raise ValueError(f"label values must be 0..{num_classes - 1} or {ignore_index}; found {found}")


def eval_share(total: int, rank: int, world_size: int, max_images: int | None = None) -> tuple[int, int]:
    """(first, count) of the images rank ``rank`` of ``world_size`` evaluates: its contiguous share
    of the stream (``ShardStream(..., drop_remainder=False)``: every image on exactly one rank),
    cut to the first ``max_images`` of the whole split."""
    from lossyvision.pipelines.stream import split_range

    a, b = split_range(0, total, world_size, rank)
    stop = total if max_images is None else min(total, max_images)
    return a, max(0, min(b, stop) - a)


def evaluate_model(model: torch.nn.Module, variant_dir: str, device: torch.device, num_classes: int = 19,
                   amp: bool = True, max_images: int | None = None,
                   max_pixels: int | None = None, quiet: bool = False,
                   ignore_index: int = IGNORE_INDEX, dist: "DistInfo | None" = None) -> tuple[np.ndarray, int]:
    """Full-frame, single-scale evaluation of one variant (its first `max_images` images); returns
    (confusion matrix, images). A progress bar unless `quiet` (or stderr is not a terminal), and an
    INFO line per tenth of the images.

    With ``dist`` (a :class:`lossyvision.train.distributed.DistInfo` of a joined process group, every
    rank calling) each rank evaluates its contiguous share of the images and the confusion matrices
    and image counts are summed over the ranks (one all_reduce): every rank returns exactly what
    one process evaluating all the images returns. ``amp``: mixed precision on CUDA
    (:func:`lossyvision.accel.amp_dtype`); on CUDA the model (converted in place) and the frames are
    channels_last. The matrix accumulates on the device and is read back once."""
    import time

    from lossyvision import accel
    from lossyvision.pipelines.stream import ShardStream, check_limits, to_device
    from lossyvision.progress import progress, rate_eta

    check_limits(max_images=max_images, max_pixels=max_pixels)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    stream = ShardStream(variant_dir, rank=rank, world_size=world, drop_remainder=False, max_pixels=max_pixels)
    total = stream.variant.num_samples if max_images is None else min(stream.variant.num_samples, max_images)
    _, mine = eval_share(stream.variant.num_samples, rank, world, max_images)
    every, t0 = max(1, mine // 10), time.perf_counter()
    cm = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)
    n = 0
    was_training = model.training
    model.eval()
    on_cuda = device.type == "cuda"
    dtype = accel.amp_dtype(device, amp and on_cuda)
    benchmark = torch.backends.cudnn.benchmark
    if not torch.are_deterministic_algorithms_enabled():  # (deterministic runs have benchmark off already)
        # frames may differ in size: cudnn.benchmark would re-tune for every new shape
        accel.configure_backends(device, fixed_shapes=False)
    if on_cuda:
        model.to(memory_format=torch.channels_last)
    quiet = quiet or rank != 0
    try:
        with torch.no_grad(), progress(stream, total=mine, desc=f"eval {stream.variant.variant}", unit="img",
                                       quiet=quiet) as bar:
            for x, y, key in (bar if mine else ()):
                if n >= mine:
                    break
                if not isinstance(y, torch.Tensor):
                    raise ValueError(f"{variant_dir}: sample {key!r} has no seg.png label map")
                try:
                    _check_label(y, num_classes, ignore_index)
                except ValueError as e:  # label ids outside the classes
                    raise ValueError(f"{variant_dir}: sample {key!r}: {e}") from None
                if on_cuda:  # page-locked: the copies below run asynchronously
                    x, y = x.pin_memory(), y.pin_memory()
                xd = to_device(x[None], device, channels_last=on_cuda)
                with accel.autocast(device, dtype):
                    logits = _logits(model, xd)
                if logits.shape[1] != num_classes:
                    raise ValueError(f"the model predicts {logits.shape[1]} classes, the variant has {num_classes}")
                confusion_counts(logits.argmax(1), y.to(device, non_blocking=True), num_classes, ignore_index, cm)
                n += 1
                if n % every == 0 and n < mine and not quiet:
                    log.info("eval %s: %d/%d images (%s)", stream.variant.variant, n, mine,
                             rate_eta(n, time.perf_counter() - t0, mine - n, "img"))
    finally:
        model.train(was_training)
        torch.backends.cudnn.benchmark = benchmark
    counts = torch.cat([cm[:-1], torch.tensor([n], dtype=torch.int64, device=device)])
    if dist is not None and dist.distributed:
        from lossyvision.train.distributed import all_reduce_sum

        all_reduce_sum(counts, dist)
    counts = counts.cpu().numpy()  # the one transfer
    n = int(counts[-1])
    if n != total:
        raise RuntimeError(f"{variant_dir}: evaluated {n} of {total} images")
    return counts[:-1].reshape(num_classes, num_classes).astype(np.int64), n


def variant_bpp(variant_dir: str) -> float | None:
    """Mean bpp from a variant's manifest (None for orig)."""
    from lossyvision.pipelines.shards import manifest_path

    m = json.loads(storage.read_text(manifest_path(variant_dir)))
    return (m.get("means") or {}).get("bpp")


@dataclass
class EvalConfig:
    checkpoint: str = ""           # model.pt or checkpoints/last.pt from train-segmentation
    shards: str = ""               # ROOT/cityscapes (a local path or an fsspec URL)
    test_variants: list[str] = field(default_factory=lambda: ["orig"])
    split: str = "val"
    train_variant: str | None = None  # default: the one recorded in the checkpoint
    out_dir: str = "runs/segmentation-eval"
    device: str | None = None
    amp: bool = True
    max_images: int | None = None
    max_pixels: int | None = None  # None: lossyvision.pipelines.imageio.DEFAULT_MAX_PIXELS
    quiet: bool = False            # no progress bar (it is off anyway when stderr is not a terminal)
    formats: tuple[str, ...] = ("png",)  # of miou_vs_bpp: png, pdf, svg

    def __post_init__(self) -> None:
        from lossyvision.names import check_name
        from lossyvision.pipelines.stream import check_limits

        from .figures import parse_formats

        self.formats = parse_formats(list(self.formats))

        self.test_variants = [check_name("--variant", v) for v in self.test_variants]
        check_name("--split", self.split)
        if self.train_variant is not None:
            check_name("--train-variant", self.train_variant)
        check_limits(max_images=self.max_images, max_pixels=self.max_pixels)

    def to_dict(self) -> dict:
        return asdict(self)


def result_record(cm: np.ndarray, images: int, train_variant: str, test_variant: str,
                  train_bpp: float | None, test_bpp: float | None, class_list: ClassList = CITYSCAPES,
                  **extra) -> dict:
    scores = scores_from_confusion(cm, class_list.classes, class_list.small)
    config = configuration(train_variant, test_variant)
    # the rate that defines a configuration is the compressed side's (training set first)
    bpp = train_bpp if config[0] != "O" else test_bpp
    return {"configuration": config, "train_variant": train_variant, "test_variant": test_variant,
            "train_bpp": train_bpp, "test_bpp": test_bpp, "bpp": bpp, "images": images,
            **scores.to_dict(), "confusion": cm.tolist(), "dataset": class_list.name,
            "classes": list(class_list.classes), "small_classes": list(class_list.small), **extra}


def evaluate_checkpoint(cfg: EvalConfig, dist: "DistInfo | None" = None) -> list[dict]:
    """Evaluate a trained model on each test variant; write one JSON per pair and the report.

    With ``dist`` (every rank of a joined process group calling) the images are split over the
    ranks (:func:`evaluate_model`); every rank returns the records, rank 0 alone writes them."""
    from lossyvision.pipelines.stream import variant_dir
    from lossyvision.nets.segmentation import load_segmentation_model

    from lossyvision.names import check_name
    from lossyvision.pipelines.stream import resolve_device

    device = resolve_device(cfg.device)
    class_lists = {}
    for v in cfg.test_variants:  # before the model loads: a typo fails at once
        class_lists[v] = variant_class_list(variant_dir(storage.join(cfg.shards, cfg.split), v))
    model, meta = load_segmentation_model(cfg.checkpoint, device)
    model_classes = (meta.get("arch") or {}).get("num_classes")
    trained_on = (meta.get("segmentation") or {}).get("classes")
    for v, cl in class_lists.items():
        if model_classes is not None and model_classes != cl.num_classes:
            raise ValueError(f"{cfg.checkpoint} predicts {model_classes} classes but variant {v} has {cl.num_classes} "
                             f"({cl.name}); evaluate it on shards of the dataset it was trained on")
        if trained_on is not None and list(trained_on) != list(cl.classes):
            raise ValueError(f"{cfg.checkpoint} was trained on the classes {trained_on[:4]}... but variant {v} has "
                             f"{list(cl.classes)[:4]}...; evaluate it on shards of the dataset it was trained on")
    tcfg = meta.get("config", {})
    train_variant = cfg.train_variant or tcfg.get("train_variant")
    if not train_variant:
        raise ValueError(f"{cfg.checkpoint} does not record its training variant; pass --train-variant")
    # it names the results file: the checkpoint's record must be a safe name too
    check_name(f"the training variant recorded in {cfg.checkpoint}", train_variant)
    train_bpp = None
    train_dir = storage.join(tcfg["shards"], tcfg.get("train_split", "train"), train_variant) if tcfg.get("shards") else None
    if train_dir and storage.isdir(train_dir):
        train_bpp = variant_bpp(train_dir)
    out = Path(cfg.out_dir)
    main = dist is None or dist.main
    records = []
    for test_variant in cfg.test_variants:
        vdir = variant_dir(storage.join(cfg.shards, cfg.split), test_variant)
        cl = class_lists[test_variant]
        cm, n = evaluate_model(model, vdir, device, num_classes=cl.num_classes, amp=cfg.amp, max_images=cfg.max_images,
                               max_pixels=cfg.max_pixels, quiet=cfg.quiet, ignore_index=cl.ignore_index, dist=dist)
        rec = result_record(cm, n, train_variant, test_variant, train_bpp, variant_bpp(vdir), class_list=cl,
                            checkpoint=str(cfg.checkpoint), split=cfg.split)
        records.append(rec)
        if not main:
            continue
        save_result(rec, out)
        log.info("%s (%s -> %s): mIoU %.2f %%  small %.2f %%  big %.2f %% on %d images", rec["configuration"],
                 train_variant, test_variant, rec["miou_pct"], rec["miou_small_pct"], rec["miou_big_pct"], n)
    if main:
        write_report(load_results(out), out, formats=cfg.formats)
    return records


# -- reports -------------------------------------------------------------------------------------

def save_result(record: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "results" / f"{record['train_variant']}__{record['test_variant']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(record), indent=1) + "\n")
    return path


def load_results(out_dir: Path) -> list[dict]:
    """The result records under OUT/results (ValueError naming a file that is not one)."""
    records = []
    for p in sorted((Path(out_dir) / "results").glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: not valid JSON ({e}); delete it or rerun eval-segmentation --checkpoint") from None
        if isinstance(r, dict):
            r = upgrade_record(r)
        if not isinstance(r, dict) or not {"configuration", "train_variant", "test_variant", "iou_pct"} <= r.keys():
            raise ValueError(f"{p}: not an eval-segmentation result; move it out of {Path(out_dir) / 'results'}")
        records.append(r)
    return records


def _json_safe(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.2f}"


def report_classes(records: list[dict]) -> ClassList:
    """The one class list of a set of result records (records written before they named theirs are
    Cityscapes'); records of different class lists cannot share a table."""
    lists = {}
    for r in records:
        cl = (ClassList(str(r.get("dataset") or "segmentation"), tuple(r["classes"]), small=tuple(r.get("small_classes") or ()))
              if r.get("classes") else CITYSCAPES)
        lists.setdefault(cl.classes, cl)
    if len(lists) > 1:
        names = sorted({cl.name for cl in lists.values()})
        raise ValueError(f"the results hold {len(lists)} different class lists ({', '.join(names)}); write each "
                         "dataset's results to its own --out")
    return next(iter(lists.values()), CITYSCAPES)


def write_report(records: list[dict], out_dir: Path, formats: Iterable[str] | None = None) -> dict[str, Path]:
    """results.csv / results.json / results.md (one row per record), paper 2's Table II as
    table2.{csv,json,md} and its Fig. 7 as miou_vs_bpp.<format> for each of ``formats`` (default PNG)
    (eval/segreport.py); every score is percent."""
    from lossyvision.extras import require

    pd = require("pandas", "segmentation", "the eval-segmentation report")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cl = report_classes([upgrade_record(r) for r in records])
    rows = []
    for r in sorted(map(upgrade_record, records),
                    key=lambda r: (r["configuration"], r["bpp"] or 0, r["train_variant"], r["test_variant"])):
        row = {"configuration": r["configuration"], "train_variant": r["train_variant"],
               "test_variant": r["test_variant"], "bpp": r["bpp"]}
        row.update({iou_column(c): r["iou_pct"].get(c) for c in cl.classes})
        row.update({"miou_small_pct": r["miou_small_pct"], "miou_big_pct": r["miou_big_pct"], "miou_pct": r["miou_pct"],
                    "images": r["images"]})
        rows.append(row)
    df = pd.DataFrame(rows)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md"}
    df.to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps(_json_safe(rows), indent=1) + "\n")
    cols = ["configuration", "train_variant", "test_variant", "bpp", *map(iou_column, cl.classes),
            "miou_small_pct", "miou_big_pct", "miou_pct"]
    head = ["config", "train", "test", "bpp", *cl.classes, "small obj.", "big obj.", "mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row[c] if isinstance(row[c], str) else _fmt(row[c]) for c in cols]
        cells[3] = "" if row["bpp"] is None else f"{row['bpp']:.4f}"
        lines.append("| " + " | ".join(cells) + " |")
    what = "Cityscapes" if cl.classes == CITYSCAPES.classes else cl.name
    paths["md"].write_text(f"Segmentation IoU and mIoU (%), {what} train ids; small objects: "
                           + (", ".join(cl.small) or "none") + ".\n\n" + "\n".join(lines) + "\n")
    recs = [upgrade_record(r) for r in records]
    paths.update(segreport.write_table2(recs, cl.classes, cl.small, _dataset_name(cl), out))
    if rows:
        plots = plot_miou_vs_bpp(records, out / "miou_vs_bpp", formats=formats)
        paths["plot"] = Path(plots[0])
        paths.update({f"plot_{Path(p).suffix[1:]}": Path(p) for p in plots[1:]})
    return paths


def _dataset_name(cl: ClassList) -> str:
    return "Cityscapes" if cl.classes == CITYSCAPES.classes else cl.name


def plot_miou_vs_bpp(records: list[dict], path: str | Path, formats: Iterable[str] | None = None) -> list[str]:
    """Paper 2 Fig. 7 (:func:`segreport.miou_figure`) written as PATH's stem in each of ``formats``
    (default: PATH's suffix, else PNG); returns the paths."""
    records = [upgrade_record(r) for r in records]
    name = _dataset_name(report_classes(records)) if records else "Cityscapes"
    return segreport.plot_miou_vs_bpp(records, path, formats, dataset=name)


def miou_figure(records: list[dict]) -> Figure:
    """Paper 2 Fig. 7: a line per configuration over rate, a panel per codec when there are several, OO
    as a horizontal reference line (:func:`segreport.miou_figure`)."""
    records = [upgrade_record(r) for r in records]
    return segreport.miou_figure(records, _dataset_name(report_classes(records)) if records else "Cityscapes")
