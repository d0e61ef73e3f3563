"""Files at a dataset's shard root (``<out>/<dataset>/``) that let other readers open its variants as they are.

- ``README.md``: a Hugging Face dataset card. Its YAML front matter declares one config per variant,
  with ``data_files`` per split, and each config's features: members Pillow opens as ``Image``, the
  class index as ``ClassLabel`` with the class names, the per-sample JSON as a struct, uncompressed
  ``npy`` crops as arrays, every other bitstream (``hevc``, ``jxl``, ``msh``, ...) as ``binary``.
  Without it ``datasets`` infers one schema from the first shard it opens and merges every variant
  into one split. Then ``datasets.load_dataset("<out>/<dataset>", "<variant>")`` loads one variant.
- ``_info.json``: the split table of timm's ``wds/`` reader (one timm split per ``<split>/<variant>``:
  its shard file names, their lengths and the sample count), for classification datasets (timm
  reads the label from ``.cls``).

Both are rebuilt from the manifests of every complete variant under the dataset root at the end of
each job that writes shards, so variants and splits added by later jobs are merged in, and each file
is replaced atomically. A README.md or _info.json that lossyvision did not write is left alone.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

from .. import __version__, storage
from .shards import ManifestError, load_manifest

log = logging.getLogger(__name__)

__all__ = ["CARD", "TIMM_INFO", "IMAGE_EXTS", "write_reader_files", "update_reader_files", "hf_split_name"]

CARD = "README.md"
TIMM_INFO = "_info.json"
GENERATOR = "lossyvision"
# First line of the front matter (a YAML comment), so a card of any size is recognised from its head.
_CARD_MARK = "# lossyvision dataset card: generated from the shard manifests by every prepare-shards or restore-shards job; edits are overwritten"

# Members that Pillow (>= 10, as datasets' Image feature uses it) decodes; the other bitstreams are binary.
# AVIF needs Pillow >= 11.3 and JPEG XL is not in Pillow at all, so they stay bytes too.
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "j2k", "jp2", "qoi"})
# Types of the per-sample JSON fields prepare-shards and restore-shards write; others are inferred from
# the first sample. q is float: an integer for some codecs, a ratio for others.
_JSON_TYPES = {"bytes": "int64", "h": "int64", "w": "int64", "q": "float64", "bpp": "float64", "psnr": "float64",
               "ssim": "float64", "ms_ssim": "float64", "source_psnr": "float64", "source_ssim": "float64",
               "spec": "string", "source": "string", "over_target": "bool"}
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's split of a member name into key and extension


@dataclass
class _Variant:
    split: str
    variant: str
    manifest: dict
    members: dict[str, Any] = field(default_factory=dict)  # extension -> parsed JSON (json) or None


def write_reader_files(dataset_root: str) -> list[str]:
    """Write (or rewrite) README.md and, for classification datasets, _info.json in ``dataset_root``
    (``<out>/<dataset>``, local or URL) from the manifests under it; returns the paths written.

    Another job may finish a split of the same dataset meanwhile (the job locks are per split): the
    files are rendered again after writing and rewritten until they match what the folder holds."""
    cache: dict[tuple[str, str], dict[str, Any]] = {}
    written: list[str] = []
    wrote: tuple[str, str | None] | None = None
    for _ in range(3):
        found = _scan(dataset_root, cache)
        name = next((v.manifest.get("dataset") for v in found if v.manifest.get("dataset")), posixpath.basename(dataset_root.rstrip("/")))
        texts = (dataset_card(name, found), _timm_text(name, found))
        if texts == wrote:
            break
        written = []
        if _ours(storage.join(dataset_root, CARD), _CARD_MARK):
            storage.write_bytes_atomic(storage.join(dataset_root, CARD), texts[0].encode())
            written.append(storage.join(dataset_root, CARD))
        if texts[1] is not None and _ours(storage.join(dataset_root, TIMM_INFO), f'"generator": "{GENERATOR}'):
            storage.write_bytes_atomic(storage.join(dataset_root, TIMM_INFO), texts[1].encode())
            written.append(storage.join(dataset_root, TIMM_INFO))
        wrote = texts
    return written


def update_reader_files(dataset_root: str) -> None:
    """:func:`write_reader_files` at the end of a job: the shards are complete and valid without these
    files, so a failure here is logged as a warning, not the job's failure."""
    try:
        for path in write_reader_files(dataset_root):
            log.info("wrote %s", path)
    except (OSError, ValueError, tarfile.TarError) as e:
        log.warning("could not write the dataset card / timm _info.json in %s: %s", dataset_root, e)


def _ours(path: str, mark: str) -> bool:
    """True when ``path`` does not exist or was written by this module (it carries ``mark``)."""
    if not storage.isfile(path):
        return True
    try:
        if mark in storage.read_bytes(path, limit=4096).decode("utf-8", "replace"):
            return True
    except OSError:
        pass
    log.warning("%s was not written by lossyvision: left as it is (delete it to get the generated one)", path)
    return False


def _scan(dataset_root: str, cache: dict) -> list[_Variant]:
    """The complete variants under ``<dataset_root>/<split>/<variant>``, sorted by split then variant."""
    out = []
    for split in storage.listdir(dataset_root, dirs_only=True):
        sdir = storage.join(dataset_root, split)
        for variant in storage.listdir(sdir, dirs_only=True):
            vdir = storage.join(sdir, variant)
            try:
                m = load_manifest(vdir)
            except ManifestError as e:
                log.warning("dataset card: %s; variant left out", e)
                continue
            first = next((s for s in m.get("shards") or [] if s and s.get("count")), None) if m and m.get("complete") else None
            if first is None:  # unfinished, or no image made it
                continue
            ck = (vdir, first.get("sha256") or first["name"])
            if ck not in cache:
                try:
                    cache[ck] = _first_sample(storage.join(vdir, first["name"]))
                except (OSError, tarfile.TarError) as e:
                    log.warning("dataset card: cannot read %s (%s); variant left out", storage.join(vdir, first["name"]), e)
                    continue
            out.append(_Variant(split, variant, m, cache[ck]))
    return out


def _first_sample(path: str) -> dict[str, Any]:
    """Extensions of the first sample's members (its JSON parsed), read from the head of one shard."""
    members: dict[str, Any] = {}
    key = None
    with storage.open_read(path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for ti in tar:
            m = _KEY_EXT.match(ti.name) if ti.isfile() else None
            if not m:
                continue
            if key is not None and m.group(1) != key:
                break
            key, ext = m.group(1), m.group(2)
            members[ext] = None
            if ext == "json":
                try:
                    members[ext] = json.loads(tar.extractfile(ti).read())
                except ValueError:
                    members[ext] = {}
    return members


# -- Hugging Face dataset card ------------------------------------------------------------------------------


def hf_split_name(split: str) -> str:
    """A split name as datasets accepts it (``^\\w+(\\.\\w+)*$``; other characters become ``_``). ``all``
    means the union of all splits there, so the folder split ``all`` (folder, samples) is ``full``."""
    if split == "all":
        return "full"
    s = re.sub(r"[^\w.]", "_", split)
    return s if re.fullmatch(r"\w+(\.\w+)*", s) else re.sub(r"\W", "_", s)


def _fixed_size(crop: dict | None) -> tuple[int, int] | None:
    """(h, w) of every sample when the crop policy fixes it (a crop, or a scale to WxH)."""
    crop = crop or {}
    if crop.get("crop_w") and crop.get("crop_h"):
        return int(crop["crop_h"]), int(crop["crop_w"])
    if crop.get("scale_w") and crop.get("scale_h"):
        return int(crop["scale_h"]), int(crop["scale_w"])
    return None


def _json_type(key: str, value: Any) -> Any:
    if key in _JSON_TYPES:
        return _JSON_TYPES[key]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, str):
        return "string"
    return "float64"  # floats, and nulls: every nullable field written so far is a metric


def _features(entries: list[_Variant]) -> list[dict]:
    """datasets' YAML feature list for one variant over all its splits (members missing in a split are None there)."""
    members: dict[str, Any] = {}
    for e in entries:
        for ext, val in e.members.items():
            if ext == "json":
                members.setdefault("json", {}).update({k: v for k, v in (val or {}).items() if not isinstance(v, (dict, list))})
            else:
                members.setdefault(ext, None)
    classes = next((e.manifest["classes"] for e in entries if e.manifest.get("task") == "classification" and e.manifest.get("classes")),
                   None)
    size = _fixed_size(entries[0].manifest.get("crop"))
    feats: list[dict] = []
    for ext in sorted(members, key=lambda x: (x in ("cls", "json"), x)):
        last = ext.rsplit(".", 1)[-1].lower()
        if ext == "json":
            fields = members["json"]
            feats.append({"name": "json", "struct": [{"name": k, "dtype": _json_type(k, fields[k])} for k in sorted(fields)]})
        elif ext == "cls":
            if classes:
                feats.append({"name": "cls", "dtype": {"class_label": {"names": {str(i): str(c) for i, c in enumerate(classes)}}}})
            else:
                feats.append({"name": "cls", "dtype": "int64"})
        elif last in IMAGE_EXTS:
            feats.append({"name": ext, "dtype": "image"})
        elif last == "npy":  # datasets decodes .npy itself (uint8 HxWx3)
            if size:
                feats.append({"name": ext, "dtype": {"array3_d": {"shape": [size[0], size[1], 3], "dtype": "uint8"}}})
            else:
                feats.append({"name": ext, "list": {"list": {"list": "uint8"}}})
        else:
            feats.append({"name": ext, "dtype": "binary"})
    return feats + [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]


def _by_variant(found: list[_Variant]) -> dict[str, list[_Variant]]:
    by: dict[str, list[_Variant]] = {}
    for v in sorted(found, key=lambda v: (v.variant != "orig", v.variant, v.split)):
        by.setdefault(v.variant, []).append(v)
    return by


def dataset_card(dataset: str, found: list[_Variant]) -> str:
    """The README.md text: YAML front matter for datasets, then a table of what each config holds."""
    configs, infos, rows = [], [], []
    by = _by_variant(found)
    for variant, entries in by.items():
        files, taken = [], {}
        for e in entries:
            hf = hf_split_name(e.split)
            if hf in taken:
                log.warning("dataset card: splits %r and %r both map to the datasets split name %r; %r left out of config %r",
                            taken[hf], e.split, hf, e.split, variant)
                continue
            taken[hf] = e.split
            files.append({"split": hf, "path": f"{e.split}/{variant}/shard-*.tar"})
            means = e.manifest.get("means") or {}
            rows.append((variant, e.split, hf, e.manifest.get("num_samples"), means.get("bpp"), means.get("psnr"), means.get("ssim")))
        cfg: dict[str, Any] = {"config_name": variant, "data_files": files}
        if variant == "orig" or (not configs and "orig" not in by):
            cfg["default"] = True  # load_dataset(folder) without a config name
        configs.append(cfg)
        infos.append({"config_name": variant, "features": _features(entries)})
    meta = {"pretty_name": f"{dataset} (lossyvision shards)", "tags": ["webdataset", "lossyvision"],
            "configs": configs, "dataset_info": infos}
    classes = next((v.manifest.get("classes") for v in found if v.manifest.get("classes")), None)
    example = next((r for r in rows if r[0] != "orig"), rows[0] if rows else ("orig", "val", "val"))
    lines = ["---", _CARD_MARK, *_yaml(meta), "---", "", f"# {dataset}: shards written by lossyvision", "",
             "WebDataset shards (`<split>/<variant>/shard-NNNNNN.tar`): `orig` holds the lossless crops, every other",
             "variant the same crops compressed with one codec setting, in the same order. One config per variant,",
             "one datasets split per folder split:", "",
             "```python", "from datasets import load_dataset", "",
             f'ds = load_dataset("path/to/this/folder", "{example[0]}", split="{example[2]}")', "```", "",
             "| config (variant) | folder | split | images | bpp | PSNR (dB) | SSIM |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for variant, folder, hf, n, bpp, ps, ss in rows:
        lines.append(f"| `{variant}` | `{folder}/{variant}` | `{hf}` | {n} | {_num(bpp, 3)} | {_num(ps, 2)} | {_num(ss, 4)} |")
    lines.append("")
    if classes:
        lines.append(f"`cls` is a `ClassLabel` over {len(classes)} classes.")
    lines += ["Members Pillow opens (`jpg`, `png`, `webp`, `j2k`, `qoi`) are `Image` columns; `npy` crops are arrays",
              "(`ds.with_format(\"numpy\", columns=[\"npy\"], dtype=\"uint8\")`); other bitstreams (`hevc`, `jxl`, `avif`,",
              "`msh`) are `binary`: decode them with lossyvision's codecs or as lossyvision's docs/shards.md describes.",
              "`json` holds each sample's size, bytes and quality (bpp, PSNR, SSIM, MS-SSIM).", "",
              f"Generated by lossyvision {__version__}.", ""]
    return "\n".join(lines)


def _num(v: Any, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _yaml(obj: Any, indent: int = 0) -> list[str]:
    """Block-style YAML of dicts, lists and scalars; strings double-quoted as JSON (valid YAML), so no
    class name or path can change the structure."""
    pad = "  " * indent
    lines: list[str] = []
    items = obj.items() if isinstance(obj, dict) else ((None, v) for v in obj)
    for k, v in items:
        head = f"{pad}- " if k is None else f"{pad}{k if re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', k) else json.dumps(k)}:"
        if isinstance(v, (dict, list)) and v:
            sub = _yaml(v, indent + 1)
            if k is None:
                lines.append(head + sub[0].lstrip())
                lines += sub[1:]
            else:
                lines.append(head)
                lines += sub
        else:
            lines.append(head + ("" if k is None else " ") + _scalar(v))
    return lines


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(str(v))


# -- timm ------------------------------------------------------------------------------------------------


def timm_info(dataset: str, found: list[_Variant]) -> dict | None:
    """timm's ``_info.json`` content (``timm.data.readers.reader_wds``): the labelled variants with a member Pillow
    opens; None when there is none."""
    labelled = [v for v in found if v.manifest.get("task") == "classification" and _pillow_member(v)]
    if not labelled:
        return None
    splits = {}
    for v in sorted(labelled, key=lambda v: (v.split, v.variant)):
        name = f"{v.split}/{v.variant}"
        shards = [s for s in v.manifest["shards"] if s]
        splits[name] = {"name": name, "num_samples": sum(s["count"] for s in shards),
                        "filenames": [f"{name}/{s['name']}" for s in shards], "shard_lengths": [s["count"] for s in shards]}
    classes = next((v.manifest.get("classes") for v in labelled if v.manifest.get("classes")), None)
    info: dict[str, Any] = {"name": dataset, "generator": f"{GENERATOR} {__version__}", "splits": splits}
    if classes:
        info["num_classes"] = len(classes)
        info["classes"] = list(classes)
    return info


def _pillow_member(v: _Variant) -> str | None:
    """The member timm's reader can open with Pillow (its ``input_key``), if the variant has one: the
    uncompressed npy crops and bitstreams such as hevc have none (unless stored with --store-decoded)."""
    return next((ext for ext in sorted(v.members) if ext != "seg.png" and ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS), None)


def _timm_text(dataset: str, found: list[_Variant]) -> str | None:
    info = timm_info(dataset, found)
    return None if info is None else json.dumps(info, indent=1) + "\n"

