"""`data imagefolder`: stamp scenes written as an ImageFolder with VOC boxes and masks, read back by the photo path."""

from __future__ import annotations

import filecmp
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import make_stamps
from PIL import Image

from cbam_viz.cli import main as cli_main
from cbam_viz.data.annotations import read_voc
from cbam_viz.data.imagefolder import open_split
from cbam_viz.data.splits import MaterializedSplit
from cbam_viz.data.stamp_imagefolder import mask_box, voc_xml, write_imagefolder
from cbam_viz.eval.metrics import box_mask


@pytest.fixture(scope="module")
def stamps(tmp_path_factory) -> Path:
    return make_stamps(tmp_path_factory.mktemp("stamps"), "test", per_class=2, size=48)


def test_mask_box_is_the_tight_box_in_pixel_edges():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3, 2, 9, 5)
    assert mask_box(np.zeros((4, 4), bool)) is None


def test_voc_box_round_trips_with_its_size_and_place(tmp_path):
    mask = np.zeros((120, 100), bool)
    mask[30:90, 20:70] = True  # 50 px wide, 60 px high, from pixel (20, 30) to pixel (69, 89)
    (tmp_path / "a.xml").write_bytes(voc_xml("a.jpg", (100, 120), [("cat", mask_box(mask))]))
    bndbox = ElementTree.parse(tmp_path / "a.xml").getroot().find("object/bndbox")
    assert [int(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")] == [21, 31, 70, 90]  # 1-based, inclusive
    (name, x0, y0, x1, y1), = read_voc(tmp_path / "a.xml").boxes
    assert (name, x0, y0, x1, y1) == ("cat", 20, 30, 70, 90) and (x1 - x0, y1 - y0) == (50, 60)
    assert np.array_equal(box_mask((x0, y0, x1, y1), mask.shape), mask)


def test_val_files_are_the_split_unchanged_with_boxes_from_the_masks(stamps, tmp_path):
    out = tmp_path / "if"
    counts = write_imagefolder(stamps, out, val_from="test", train_per_class=2, size=40)
    assert counts == {"val": 6, "train": 6}
    scenes = MaterializedSplit(stamps, "test")
    split = open_split(out, "val")
    assert split.classes == sorted(scenes.class_names)
    for i, rec in enumerate(scenes.records):
        image = out / "val" / rec["class_name"] / f"{i:06d}.jpg"
        assert filecmp.cmp(image, scenes.root / rec["file"], shallow=False)
        mask = np.asarray(Image.open(out / "masks" / "val" / rec["class_name"] / f"{i:06d}.png").convert("L")) > 127
        assert np.array_equal(mask, scenes[i].mask)
        xml = ElementTree.parse(out / "boxes" / "val" / f"{i:06d}.xml").getroot()
        assert xml.findtext("filename") == f"{i:06d}.jpg" and xml.findtext("object/name") == rec["class_name"]
        (_, *box), = read_voc(out / "boxes" / "val" / f"{i:06d}.xml").boxes
        assert tuple(box) == mask_box(scenes[i].mask)
    train = open_split(out, "train")
    assert len(train) == 6 and sorted(s.label for s in train.samples) == [0, 0, 1, 1, 2, 2]
    assert Image.open(train.samples[0].path).size == (40, 40)


def test_cli_writes_and_refuses_bad_counts(stamps, tmp_path, capsys):
    assert cli_main(["data", "imagefolder", "--from", str(stamps), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "val 6 images" in capsys.readouterr().out
    assert not (tmp_path / "o" / "train").exists()
    assert cli_main(["data", "imagefolder", "--from", str(stamps), "--out", str(tmp_path / "p"), "--train-per-class", "-1"]) == 2
    assert "--train-per-class must be >= 0" in capsys.readouterr().err and not (tmp_path / "p").exists()
