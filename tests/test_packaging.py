"""Lean packaging: the core commands import no optional package, a missing extra is one line naming
it, `pip check` is clean, and the sdist and the wheel hold what they should."""

from __future__ import annotations

import configparser
import email
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What the extras bring (top-level module names); the core never imports them.
OPTIONAL = ("segmentation_models_pytorch", "timm", "huggingface_hub", "cityscapesscripts", "h5py", "compressai",
            "torch_geometric", "pytorch_msssim", "datasets", "s3fs", "gcsfs", "brisque")

#: Run first in each child: imports of the ``BLOCKED`` modules fail as if they were not installed.
BLOCKER = textwrap.dedent("""
    import importlib.abc, json, sys

    class _Block(importlib.abc.MetaPathFinder):
        def __init__(self, names):
            self.names, self.tried = set(names), set()

        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in self.names:
                self.tried.add(top)
                raise ModuleNotFoundError(f"No module named {top!r}", name=top)
            return None

    BLOCK = _Block(BLOCKED)
    sys.meta_path.insert(0, BLOCK)
""")


def _child(code: str, blocked: tuple[str, ...], tmp_path: Path, timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter with ``blocked`` imports failing; it prints one JSON line last."""
    script = f"BLOCKED = {list(blocked)!r}\n{BLOCKER}\n{textwrap.dedent(code)}"
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_core_commands_import_no_optional_package(tmp_path):
    """codecs, encode, prepare-shards, rate-report and the shard loaders work with every optional
    package unimportable, and none of those is imported (nor even tried) on the way."""
    out = _child("""
        import numpy as np, imagecodecs
        from lossyvision.cli import main

        def run(*args):
            try:
                main(list(args), standalone_mode=False)
                return 0
            except SystemExit as e:
                return e.code

        rng = np.random.default_rng(0)
        img = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
        open("img.png", "wb").write(imagecodecs.png_encode(img))
        codes = {
            "codecs": run("codecs", "--json"),
            "encode": run("encode", "img.png", "--codec", "jpeg", "--quality", "50", "--json"),
            "prepare-shards": run("prepare-shards", "--dataset", "samples", "--out", "shards", "--codec", "jpeg",
                                  "--quality", "50", "--limit", "2", "--executor", "local", "--workers", "1", "-q"),
            "rate-report": run("rate-report", "shards"),
        }
        import lossyvision.pipelines.stream  # noqa: F401 - the loaders' implementation, imported on its own
        from lossyvision.data import ShardDataset, make_loader, variant_dir

        ds = ShardDataset(variant_dir("shards/samples", "jpeg-q50", split="all"), shuffle=False)
        n = sum(len(keys) for _, _, keys in make_loader(ds, 2, 0))
        print(json.dumps({"codes": codes, "samples": n, "tried": sorted(BLOCK.tried),
                          "loaded": sorted(m for m in BLOCKED if m in sys.modules)}))
    """, OPTIONAL, tmp_path)
    assert out["codes"] == {"codecs": 0, "encode": 0, "prepare-shards": 0, "rate-report": 0}
    assert out["samples"] == 2
    assert out["loaded"] == [] and out["tried"] == []


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    """Each optional feature, reached through its real code path with its package unimportable, stops
    with a message that names the pip command; the CLI prints it as one line and exits 1."""
    (tmp_path / "cs" / "leftImg8bit" / "train").mkdir(parents=True)
    out = _child("""
        import numpy as np
        from click.testing import CliRunner
        from lossyvision.extras import MissingExtra
        from lossyvision import codecs, storage
        from lossyvision.cli import main

        msgs = {}
        def catch(name, fn, kind=MissingExtra):
            try:
                fn()
                msgs[name] = "no error"
            except kind as e:
                msgs[name] = str(e)

        from lossyvision.train import segmentation, teacher_cache, restoration
        from lossyvision.eval import segmentation as eval_seg
        catch("segmentation", lambda: segmentation.build_model("resnet18"))
        catch("teacher cache", lambda: teacher_cache.open_cache("x.h5", {}))
        import torch
        catch("ms-ssim", lambda: restoration.ms_ssim_loss(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)))
        catch("pandas", lambda: eval_seg.write_report([], "report"))
        catch("gcs", lambda: storage.listdir("gs://bucket/shards"))
        catch("msh", lambda: codecs.create("msh", 1, weights="untrained").encode(np.zeros((64, 64, 3), np.uint8)),
              codecs.CodecError)
        r = CliRunner().invoke(main, ["prepare-shards", "--dataset", "cityscapes", "--src", "cs", "--split", "train",
                                      "--out", "o"])
        print(json.dumps({"msgs": msgs, "cli": {"code": r.exit_code, "output": r.output}}))
    """, ("segmentation_models_pytorch", "h5py", "pytorch_msssim", "pandas", "gcsfs", "compressai", "cityscapesscripts"),
        tmp_path)
    m = out["msgs"]
    assert m["segmentation"].endswith("needs segmentation-models-pytorch: pip install 'lossyvision[segmentation]'")
    assert m["teacher cache"].endswith("needs h5py: pip install 'lossyvision[train]'")
    assert m["ms-ssim"].endswith("needs pytorch-msssim: pip install 'lossyvision[segmentation]'")
    assert m["pandas"].endswith("needs pandas: pip install 'lossyvision[segmentation]'")
    assert "pip install 'lossyvision[gcs]'" in m["gcs"]
    assert "pip install --no-deps compressai==1.2.8" in m["msh"] and "lossyvision[msh]" in m["msh"]
    cli = out["cli"]
    assert cli["code"] == 1
    assert cli["output"].strip() == ("Error: --dataset cityscapes needs cityscapesscripts: "
                                     "pip install 'lossyvision[cityscapes]'")


#: The one line `pip check` may print: CompressAI 1.2.8's wheel declares numpy<2 although its
#: entropy coder and mbt2018_mean run on numpy 2 (tests/codecs/test_msh.py); the Makefile installs it
#: with --no-deps, and setup.cfg (the msh extra) says why it is not declared.
COMPRESSAI_NUMPY = re.compile(r"compressai 1\.2\.8 has requirement numpy<2\.0,>=1\.21\.0, but you have numpy 2[\d.]*\.")


def test_pip_check_is_clean():
    p = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    problems = [ln for ln in p.stdout.splitlines() if ln.strip() and not COMPRESSAI_NUMPY.fullmatch(ln.strip())]
    assert p.returncode == 0 or p.stdout.strip(), p.stderr  # pip ran (exit 1 with no report: pip itself failed)
    assert problems == [], p.stdout


def _copy_tree(dst: Path) -> Path:
    """The working tree without build outputs, so the build leaves the checkout untouched."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                  ".hypothesis", "demo-out", "out")
    shutil.copytree(ROOT, dst, ignore=skip)
    return dst


def _build(kind: str, src: Path, out: Path) -> Path:
    """setuptools' PEP 517 backend in a child, as pip or `python -m build` call it (no network)."""
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    p = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return out / p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """The sdist built from a copy of the tree, and the wheel built from that unpacked sdist."""
    tmp = tmp_path_factory.mktemp("dist")
    sdist = _build("sdist", _copy_tree(tmp / "tree"), tmp)
    with tarfile.open(sdist) as t:
        t.extractall(tmp / "unpacked", filter="data")
    wheel = _build("wheel", next((tmp / "unpacked").iterdir()), tmp)
    return sdist, wheel


def test_sdist_holds_docs_tools_tests_and_license(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for f in ("LICENSE", "README.md", "Makefile", "MANIFEST.in", "setup.cfg", "pyproject.toml", ".ci/run",
              "docs/shards.md", "tools/cluster/README.md", "tools/repro/README.md", "tests/test_packaging.py",
              "tests/conftest.py", "lossyvision/py.typed", "lossyvision/extras.py"):
        assert f in names, f
    tracked = subprocess.run(["git", "ls-files", "docs", "tools", ".ci"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0:  # every tracked doc and tool is in (outside a git checkout there is nothing to compare)
        assert set(tracked.stdout.split()) <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_ships_py_typed_and_license_and_no_exact_torch_pin(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(z.read(meta_name).decode())
    assert "lossyvision/py.typed" in names and "lossyvision/extras.py" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "docs/"))]
    assert [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]  # licenses/LICENSE in setuptools >= 77
    assert "Copyright (c) 2026 the lossyvision authors" in (ROOT / "LICENSE").read_text()

    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    by_name = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower(): r for r in core}
    for pkg in ("torch", "torchvision"):
        assert pkg in by_name and "==" not in by_name[pkg], by_name.get(pkg)
    assert not [r for r in requires if r.lower().startswith(("torch ", "torchvision ", "torch==", "torchvision=="))
                and "==" in r]
    for heavy in ("segmentation-models-pytorch", "timm", "huggingface-hub", "cityscapesscripts", "h5py", "compressai",
                  "pandas", "s3fs", "gcsfs"):
        assert heavy not in by_name, f"{heavy} is in the core install"
    assert not [r for r in requires if r.lower().startswith("compressai")], "compressai is installed by hand (setup.cfg)"
    extras = set(meta.get_all("Provides-Extra"))
    assert {"train", "segmentation", "cityscapes", "s3", "gcs", "msh", "readers", "all", "test"} <= extras


def test_readme_documents_every_extra():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("Install without the Makefile"):]
    for extra in extras:
        assert f"`[{extra}]`" in table, extra
