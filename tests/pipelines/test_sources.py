import os

import numpy as np
import pytest
from PIL import Image

from lossyvision.pipelines.crops import IMAGENET, CropError, parse_crop
from lossyvision.pipelines.sources import SourceError, cityscapes_lut, create_source, make_key, source_names

from ..conftest import WNIDS, make_imagenet


def test_registry_lists_sources():
    assert {"imagenet", "cityscapes", "folder", "samples"} <= set(source_names())
    with pytest.raises(SourceError, match="unknown dataset 'imgnet'; choose one of"):
        create_source("imgnet", "/tmp", "val")


def test_keys_are_stable_and_tar_safe():
    assert make_key("train/n01440764/n01440764_10026.JPEG") == "train/n01440764/n01440764_10026"
    assert make_key("../a b/c.d.png") == "a_b/c_d"
    assert make_key("/abs/x.jpg") == "abs/x"
    for k in (make_key("a/../../b.png"), make_key("./x.y.z.jpeg")):
        assert ".." not in k and not k.startswith("/") and "." not in k


def test_imagenet_train_classes_follow_sorted_wnids(imagenet_root):
    src = create_source("imagenet", imagenet_root, "train")
    items = src.items()
    assert len(items) == 9 and [it.key for it in items] == sorted(it.key for it in items)
    assert src.classes == sorted(WNIDS)
    for it in items:
        assert it.label == sorted(WNIDS).index(it.key.split("/")[1])


@pytest.mark.parametrize("form", ["folders", "loc", "devkit"])
def test_imagenet_val_forms_give_the_same_labels(tmp_path, form):
    root = make_imagenet(str(tmp_path / form), val_form=form, odd=False)
    src = create_source("imagenet", root, "val")
    items = src.items()
    assert len(items) == 9
    labels = sorted(it.label for it in items)
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # same image number -> same class in every layout (the fixture assigns classes in order)
    by_num = {int(it.key.rsplit("_", 1)[1]): it.label for it in items}
    assert by_num[10] == 0 and by_num[13] == 1 and by_num[18] == 2


def test_odd_inputs_load_as_rgb_or_fail_clearly(imagenet_root):
    src = create_source("imagenet", imagenet_root, "val")
    odd = {it.key.rsplit("/", 1)[1]: it for it in src.items() if "odd" in it.key}
    for name in ("odd0001", "odd0002", "odd0003", "odd0004"):  # CMYK, grey, PNG+alpha, 16-bit PNG
        rgb, label = src.load(odd[name])
        assert rgb.dtype == np.uint8 and rgb.shape == (260, 300, 3) and label == 0
    g, _ = src.load(odd["odd0002"])
    assert np.array_equal(g[..., 0], g[..., 2])
    g16, _ = src.load(odd["odd0004"])
    assert g16.max() > 200  # scaled from 16 bit, not truncated to the high byte's noise
    with pytest.raises(SourceError, match="truncated|decode"):
        src.load(odd["odd0005"])
    with pytest.raises(SourceError, match="zero-byte"):
        src.load(odd["odd0006"])


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        create_source("imagenet", str(tmp_path), "val")


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root):
    from cityscapesscripts.helpers.labels import id2label

    src = create_source("cityscapes", cityscapes_root, "train")
    items = src.items()
    assert len(items) == 4 and items[0].key == "aachen/aachen_000000_000019"
    rgb, lab = src.load(items[0])
    assert lab.shape == rgb.shape[:2] and lab.dtype == np.uint8
    from PIL import Image

    ids = np.asarray(Image.open(os.path.join(cityscapes_root, items[0].label)))
    for i in np.unique(ids):
        t = id2label[int(i)].trainId
        assert set(np.unique(lab[ids == i])) == {t if 0 <= t < 255 else 255}
    assert cityscapes_lut()[7] == 0 and cityscapes_lut()[26] == 13 and cityscapes_lut()[1] == 255


def test_samples_are_real_photos():
    src = create_source("samples", None, "all")
    items = src.items()
    assert len(items) >= 10
    rgb, label = src.load(items[0])
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and label is None


def test_imagenet_crop_matches_torchvision(photo):
    import torch
    from PIL import Image
    from torchvision import transforms

    a = np.asarray(Image.fromarray(photo).resize((300, 260)))
    ours, _ = IMAGENET(a)
    tv = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224)])
    theirs = np.asarray(tv(Image.fromarray(a)))
    assert ours.shape == (224, 224, 3) and np.array_equal(ours, theirs)
    del torch


@pytest.mark.parametrize("spec", ["full", "crop:128x64", "crop:100x50+10+20", "scale:0.5", "scale:96x48", "imagenet"])
def test_label_maps_follow_crops_with_nearest(cityscapes_root, spec):
    src = create_source("cityscapes", cityscapes_root, "train")
    rgb, lab = src.load(src.items()[1])
    policy = parse_crop(spec)
    r2, l2 = policy(rgb, lab)
    assert r2.shape[:2] == l2.shape
    assert set(np.unique(l2)) <= set(np.unique(lab))  # nearest: no new label values


def test_bad_crops():
    with pytest.raises(CropError, match="unknown crop policy"):
        parse_crop("centre")
    with pytest.raises(CropError, match="larger than the image"):
        parse_crop("crop:400x400")(np.zeros((100, 100, 3), np.uint8))


def test_folder_split_takes_only_that_subfolder_when_it_exists(tmp_path):
    from lossyvision.pipelines.sources import SourceError, create_source

    for split in ("train", "val"):
        (tmp_path / split / "c0").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / "c0" / f"{split}-a.png")
    train = create_source("folder", str(tmp_path), "train").items()
    assert [it.key for it in train] == ["c0/train-a"] and train[0].ref == "train/c0/train-a.png"
    assert sorted(it.key for it in create_source("folder", str(tmp_path), "all").items()) == [
        "train/c0/train-a", "val/c0/val-a"]
    # no such subfolder: every image, the split only names the output folder (as before)
    assert len(create_source("folder", str(tmp_path), "test").items()) == 2
