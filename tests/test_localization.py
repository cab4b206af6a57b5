"""Photo evaluation: annotation parsers (good and malformed files), box and mask framing for both preprocessings,
ROAD on a tiny model, and `eval` end to end on a tiny generated ImageFolder with VOC boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbam_viz.cam.engine import run_models
from cbam_viz.cli import main
from cbam_viz.data.annotations import EXIF_TRANSPOSE, AnnotationError, ImageAnnotation, load_annotations
from cbam_viz.errors import CbamVizError
from cbam_viz.eval.faithfulness import road_scores
from cbam_viz.eval.framing import frame_boxes, frame_geometry, frame_image, frame_mask
from cbam_viz.eval.metrics import box_mask, class_mean
from cbam_viz.eval.photos import photo_samples
from tests.conftest import CLASS_NAMES, random_image


def voc_xml(name: str, boxes: list[tuple], size: tuple[int, int] | None = (48, 40)) -> str:
    objects = "".join(
        f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for label, x0, y0, x1, y1 in boxes
    )
    size_tag = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>{name}</filename>{size_tag}{objects}</annotation>"


# ---- annotation parsers ----


def test_voc_folder_keys_by_relative_path_and_falls_back_to_the_stem(tmp_path):
    (tmp_path / "n01").mkdir()
    (tmp_path / "n01" / "a_1.xml").write_text(voc_xml("a_1", [("n01", 1, 2, 30, 20), ("n02", 5, 5, 5, 9)]))
    (tmp_path / "flat_7.xml").write_text(voc_xml("flat_7", [("n02", 1, 1, 10, 10)], size=None))
    annotations = load_annotations(boxes=tmp_path)
    assert annotations.kind == "voc"
    found = annotations.lookup("n01/a_1")  # VOC's 1-based inclusive indices, read as 0-based pixel edges
    assert found.boxes == (("n01", 0.0, 1.0, 30.0, 20.0), ("n02", 4.0, 4.0, 5.0, 9.0)) and found.size == (48, 40)
    assert annotations.lookup("n02/flat_7").boxes == (("n02", 0.0, 0.0, 10.0, 10.0),)  # flat file: by stem
    assert annotations.lookup("n01/missing") is None


def test_voc_box_from_1_to_the_size_covers_the_whole_image(tmp_path):
    (tmp_path / "all.xml").write_text(voc_xml("all", [("cat", 1, 1, 48, 40)], size=(48, 40)))
    annotation = load_annotations(boxes=tmp_path).lookup("all")
    assert annotation.boxes == (("cat", 0.0, 0.0, 48.0, 40.0),)
    assert box_mask(annotation.boxes[0][1:], (40, 48)).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation><object>", "not valid XML"),
        (voc_xml("x", [("cat", 1, 2, "oops", 20)]), "<object> #1 <bndbox><xmax> must be a number (got 'oops')"),
        ("<annotation><object><name>cat</name></object></annotation>", "<object> #1 needs a <name> and a <bndbox>"),
        (voc_xml("x", [("cat", 1, 2, 30, 20), ("cat", 9, 9, 4, 20)]), "<object> #2: box (9, 9, 4, 20) has no area"),
    ],
)
def test_malformed_voc_names_file_and_element(tmp_path, text, message):
    (tmp_path / "bad_1.xml").write_text(text)
    with pytest.raises(AnnotationError, match="bad_1.xml") as err:
        load_annotations(boxes=tmp_path)
    assert message in str(err.value)


def test_empty_voc_folder_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match="no .xml annotation files"):
        load_annotations(boxes=tmp_path)


def coco(annotations: list[dict]) -> dict:
    return {
        "images": [{"id": 1, "file_name": "cat/c_1.jpg", "width": 48, "height": 40},
                   {"id": 2, "file_name": "d_2.png"}],
        "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
        "annotations": annotations,
    }


def test_coco_converts_xywh_and_maps_categories_by_name(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco([
        {"image_id": 1, "category_id": 17, "bbox": [4, 5, 10, 20]},
        {"image_id": 1, "category_id": 18, "bbox": [0, 0, 1.5, 2]},
    ])))
    annotations = load_annotations(boxes=path)
    assert annotations.kind == "coco"
    first = annotations.lookup("cat/c_1")
    assert first.boxes == (("cat", 4.0, 5.0, 14.0, 25.0), ("dog", 0.0, 0.0, 1.5, 2.0)) and first.size == (48, 40)
    assert annotations.lookup("dog/d_2").boxes == ()  # listed without boxes: annotated, nothing in it


def test_imagenet_csv_reads_several_boxes_per_line(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text("ImageId,PredictionString\n"
                    "ILSVRC2012_val_00000001,n01751748 111 108 441 193 n01751748 0 10 30 40 \n"
                    "ILSVRC2012_val_00000002,n09193705 5 6 7 8\n")
    annotations = load_annotations(boxes=path)
    assert annotations.kind == "imagenet-csv"
    assert annotations.lookup("n01751748/ILSVRC2012_val_00000001").boxes == (
        ("n01751748", 111.0, 108.0, 441.0, 193.0), ("n01751748", 0.0, 10.0, 30.0, 40.0))
    assert annotations.lookup("n09193705/ILSVRC2012_val_00000002").size is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("instances.json", "{not json", "not valid JSON"),
        ("instances.json", json.dumps({"images": []}), "needs 'images' (id, file_name), 'categories' (id, name) and 'annotations'"),
        ("instances.json", json.dumps(coco([{"image_id": 1, "category_id": 17}])), "annotations[0] needs image_id, category_id and bbox"),
        ("instances.json", json.dumps(coco([{"image_id": 1, "category_id": 17, "bbox": [0, 0, 1, 1]},
                          {"image_id": 9, "category_id": 17, "bbox": [0, 0, 1, 1]}])), "annotations[1] names image 9"),
        ("instances.json", json.dumps(coco([{"image_id": 1, "category_id": 17, "bbox": [0, 0, 0, 5]}])), "annotations[0]: box"),
        ("LOC_val_solution.csv", "Id,Boxes\nx,n1 1 2 3 4\n", "line 1 must be the header"),
        ("LOC_val_solution.csv", "ImageId,PredictionString\nx,n1 1 2 3 4\ny,n1 1 2 3\n", "line 3 must be 'ImageId,name x0 y0 x1 y1"),
        ("LOC_val_solution.csv", "ImageId,PredictionString\nx,n1 1 2 3 4 n2 1 b 3 4\n", "line 2: box 2 has a non-numeric coordinate"),
    ],
)
def test_malformed_coco_and_csv_name_file_and_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AnnotationError, match=name) as err:
        load_annotations(boxes=path)
    assert message in str(err.value)


def test_masks_mirror_the_image_paths(tmp_path):
    (tmp_path / "cat").mkdir()
    pixels = np.zeros((10, 12), np.uint8)
    pixels[2:5, 3:7] = 255
    Image.fromarray(pixels).save(tmp_path / "cat" / "c_1.png")
    Image.fromarray(pixels[::-1]).save(tmp_path / "flat_2.png")
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    annotations = load_annotations(masks=tmp_path)
    mask = annotations.lookup("cat/c_1").mask
    assert mask.shape == (10, 12) and mask.sum() == 12 and mask[2:5, 3:7].all()
    assert annotations.lookup("dog/flat_2").mask[5:8, 3:7].all()  # flat folder: by stem
    assert annotations.lookup("cat/none") is None
    with pytest.raises(AnnotationError, match="broken.png: not a readable PNG mask"):
        annotations.lookup("cat/broken")


def test_loader_tells_formats_apart_and_refuses_others(tmp_path):
    with pytest.raises(CbamVizError, match="expected a folder of VOC .xml files, a COCO .json"):
        (tmp_path / "boxes.txt").write_text("x")
        load_annotations(boxes=tmp_path / "boxes.txt")
    with pytest.raises(CbamVizError, match="no such file or folder"):
        load_annotations(boxes=tmp_path / "missing.json")
    with pytest.raises(CbamVizError, match="not a folder"):
        load_annotations(masks=tmp_path / "boxes.txt")


def test_boxes_drawn_on_another_size_are_rescaled_to_the_image():
    annotation = ImageAnnotation((("cat", 10, 20, 30, 40),), size=(100, 50))
    assert annotation.boxes_at((100, 50)) == [("cat", 10, 20, 30, 40)]
    assert annotation.boxes_at((200, 25)) == [("cat", 20.0, 10.0, 60.0, 20.0)]


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("orientation", range(2, 9))
def test_annotations_turn_with_the_exif_orientation_as_the_pixels_do(orientation):
    stored = np.zeros((40, 48), bool)  # a 48x40 photo as stored, the object at x 5..17, y 9..30
    stored[9:30, 5:17] = True
    method = EXIF_TRANSPOSE[orientation]
    upright = np.asarray(Image.fromarray(stored).transpose(method))
    turned = ImageAnnotation((("cat", 5, 9, 17, 30),), size=(48, 40)).upright(orientation, (48, 40))
    assert turned.boxes == (("cat", *bbox_of(upright)),)
    assert turned.size == (upright.shape[1], upright.shape[0])
    half = ImageAnnotation((("cat", 2.5, 4.5, 8.5, 15),), size=(24, 20)).upright(orientation, (48, 40))
    assert [2 * v for v in half.boxes[0][1:]] == list(bbox_of(upright))  # drawn on a half-size copy
    np.testing.assert_array_equal(ImageAnnotation(mask=stored).upright(orientation, (48, 40)).mask, upright)


def test_annotations_drawn_upright_or_on_unturned_photos_stay_as_they_are():
    sideways = ImageAnnotation((("cat", 1, 2, 3, 4),), size=(40, 48))  # portrait: the upright shape for 6
    assert sideways.upright(6, (48, 40)) is None
    assert sideways.upright(6, (48, 40), frame="stored").size == (48, 40)
    assert ImageAnnotation((("cat", 1, 2, 3, 4),), size=(48, 40)).upright(6, (48, 40), frame="upright") is None
    assert ImageAnnotation((("cat", 1, 2, 3, 4),)).upright(1, (48, 40)) is None
    no_size = ImageAnnotation((("cat", 1, 2, 3, 4),)).upright(6, (48, 40))  # ImageNet's CSV: stored pixels
    assert no_size.boxes == (("cat", 36, 1, 38, 3),) and no_size.size is None


def test_eval_turns_the_box_of_an_exif_rotated_photo_with_it(tmp_path, tiny_checkpoints, capsys):
    stored = np.zeros((40, 48, 3), np.uint8)  # stored landscape, shown portrait (EXIF 6: turn 90 clockwise)
    stored[9:30, 5:17] = 255
    folder = tmp_path / "photos" / "val" / "red square"
    folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "turned.jpg", quality=100, exif=exif)
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "turned.xml").write_text(voc_xml("turned", [("red square", 6, 10, 17, 30)], (48, 40)))
    samples = photo_samples(tmp_path / "photos", "val")
    image = samples.image(0)
    assert image.size == (40, 48)
    annotation = load_annotations(tmp_path / "boxes").lookup(samples.key(0))
    turned = samples.upright_annotation(0, annotation, image, "auto")
    assert turned.boxes == (("red square", *bbox_of(np.asarray(image.convert("L")) > 127)),)
    code = main(["eval", "--data", str(tmp_path / "photos"), "--boxes", str(tmp_path / "boxes"),
                 "--baseline", str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"]),
                 "--out", str(tmp_path / "eval"), "--figure-rows", "1"])
    assert code == 0 and "1 turned with their photo's EXIF orientation" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["annotations"]["turned_with_exif"] == 1


# ---- framing: boxes, masks and pixels stay aligned ----


def test_whole_image_resize_scales_x_and_y_apart():
    assert frame_geometry((200, 100), "whole", 50) == (50, 50, 0, 0)
    assert frame_boxes([("cat", 20, 10, 100, 60)], (200, 100), "whole", 50) == [("cat", 5.0, 5.0, 25.0, 30.0)]


def test_center_crop_shifts_clips_and_drops_boxes():
    # 400x200 to 224: the shorter side goes to 256 (scale 1.28), 512x256, crop from (144, 16)
    assert frame_geometry((400, 200), "center", 224) == (512, 256, 144, 16)
    boxes = [("cat", 0, 0, 200, 100), ("cat", 0, 0, 100, 50), ("dog", 150, 50, 250, 150)]
    assert frame_boxes(boxes, (400, 200), "center", 224) == [
        ("cat", 0.0, 0.0, 112.0, 112.0),  # clipped at the crop's left and top edges
        # (0, 0, 100, 50) lands at x < 0: cropped away, dropped
        ("dog", 48.0, 48.0, 176.0, 176.0),
    ]


@pytest.mark.parametrize("mode", ["center", "whole"])
def test_framed_boxes_masks_and_pixels_agree(mode):
    size, box = (90, 60), (30, 12, 70, 50)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    mask = box_mask(box, (size[1], size[0]))
    pixels[mask] = 255
    framed = np.asarray(frame_image(Image.fromarray(pixels), mode, 64))[..., 0] > 127
    (_, *moved), = frame_boxes([("x", *box)], size, mode, 64)
    expected = box_mask(tuple(moved), (64, 64))
    assert framed.shape == (64, 64)
    assert (framed != expected).mean() < 0.03  # only the anti-aliased edge may differ
    assert (frame_mask(mask, mode, 64) != expected).mean() < 0.03


# ---- ROAD ----


@pytest.mark.slow
def test_road_runs_on_a_tiny_model_and_is_reproducible(tiny_models):
    loaded = tiny_models["cbam"]
    images = [random_image(3), random_image(4)]
    results = [c.results["cbam"] for c in run_models(images, {"cbam": loaded}, max_side=None)]
    scores = road_scores(loaded, images, results)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert np.all(np.abs(scores) <= 1.0)  # half a difference of two probability drops
    assert np.array_equal(road_scores(loaded, images, results), scores)  # the imputation noise is seeded


# ---- eval end to end on a tiny ImageFolder ----


def make_photo_folder(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """root/photos/val/<class>/<class>_<k>.jpg (48x40 noise) and VOC boxes root/boxes/... for all but the last
    photo of each class; the first class's first photo also gets a box of another class only."""
    for c, name in enumerate(classes):
        folder, boxes = root / "photos" / "val" / name, root / "boxes" / name
        folder.mkdir(parents=True)
        boxes.mkdir(parents=True)
        for k in range(per_class):
            stem = f"{name.replace(' ', '_')}_{k}"
            random_image(10 * c + k, (48, 40)).save(folder / f"{stem}.jpg")
            if k < per_class - 1:
                label = classes[(c + 1) % len(classes)] if (c, k) == (0, 0) else name
                (boxes / f"{stem}.xml").write_text(voc_xml(stem, [(label, 4, 6, 30, 34), ("unknown", 0, 0, 9, 9)]))
    return root


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory) -> Path:
    return make_photo_folder(tmp_path_factory.mktemp("photos"), CLASS_NAMES[:3])


def test_photo_samples_lists_an_image_folder(photo_root):
    samples = photo_samples(photo_root / "photos", "val")
    assert samples.class_names == sorted(CLASS_NAMES[:3]) and len(samples) == 9
    assert samples.key(0) == "blue bar/blue_bar_0" and samples.labels[:3] == [0, 0, 0]
    assert samples.image(0).size == (48, 40)
    with pytest.raises(CbamVizError, match="has no train/ folder"):
        photo_samples(photo_root / "photos", "train")


def test_eval_on_photos_end_to_end(photo_root, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(photo_root / "photos"), "--boxes", str(photo_root / "boxes"),
                 "--baseline", str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"]),
                 "--out", str(out), "--batch-size", "4", "--figure-rows", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "preprocessing: shorter side resized to 73 px, central 64x64 px crop" in printed
    assert "5 of 9 photos localized against them; 3 have no annotation, 1 no box or mask of their class" in printed
    assert "6 boxes name no class of the folder" in printed
    assert "top-1 localization" in printed and "bootstrap over images" in printed
    assert "pointing game, mean of per-class accuracies (as TorchRay): " in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["count"] == 9 and report["split"] == "val"
    assert report["annotations"]["annotated"] == 5 and report["preprocessing"]["mode"] == "center"
    annotated = [r for r in report["images"] if r["annotated"]]
    assert len(annotated) == 5 and "blue bar/blue_bar_0" in {r["file"] for r in annotated}
    assert "localization" not in next(r for r in report["images"] if r["file"] == "blue bar/blue_bar_2")["cbam"]
    for key in ("baseline", "cbam"):
        summary = report["summary"][key]
        assert summary["top1"] == pytest.approx(np.mean([r[key]["top1"] for r in report["images"]]))
        assert summary["pointing"] == pytest.approx(np.mean([r[key]["pointing"] for r in annotated]))
        assert summary["top1_localization"] <= min(summary["localization"], summary["top1"] * 9 / 5)
        for r in annotated:
            assert r[key]["top1_localization"] == r[key]["localization"] * r[key]["top1"]
        per_class = class_mean([r[key]["pointing"] for r in annotated], [r["label"] for r in annotated])
        assert report["pointing_class_mean"][key] == pytest.approx(per_class)
    for metric, diff in report["cbam_minus_baseline"].items():
        s = report["summary"]
        assert diff["difference"] == pytest.approx(s["cbam"][metric] - s["baseline"][metric])
        assert (diff["p_value"] is None) == (metric in ("mean_p_true", "energy"))
    assert (out / "sec43_figure.png").stat().st_size > 10_000


def test_eval_on_photos_refuses_unknown_classes(tmp_path, tiny_checkpoints, capsys):
    make_photo_folder(tmp_path, ["red square", "purple cone"], per_class=1)
    code = main(["eval", "--data", str(tmp_path / "photos"), "--baseline", str(tiny_checkpoints["baseline"]),
                 "--cbam", str(tiny_checkpoints["cbam"]), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "1 class folder(s)" in err and "purple cone" in err


def test_eval_refuses_boxes_for_stamp_scenes(tmp_path, tiny_checkpoints, capsys):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "index.jsonl").write_text("")
    code = main(["eval", "--data", str(tmp_path), "--boxes", str(tmp_path), "--baseline",
                 str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"])])
    assert code == 2 and "--boxes, --masks and --preprocess are for photo folders" in capsys.readouterr().err


def write_masks(photo_root: Path, out: Path, size: tuple[int, int] = (48, 40)) -> Path:
    """A PNG mask (a 20x16 px object) for the first photo of every class, mirroring the photos' paths."""
    for folder in sorted((photo_root / "photos" / "val").iterdir()):
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((size[1], size[0]), np.uint8)
        pixels[10:26, 8:28] = 255
        Image.fromarray(pixels).save(out / folder.name / f"{folder.name.replace(' ', '_')}_0.png")
    return out


@pytest.mark.slow
def test_eval_on_photos_with_masks_whole_resize_and_road(photo_root, tiny_checkpoints, tmp_path, capsys):
    masks = write_masks(photo_root, tmp_path / "masks")
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(photo_root / "photos"), "--masks", str(masks), "--preprocess", "whole",
                 "--road", "--limit", "2", "--baseline", str(tiny_checkpoints["baseline"]),
                 "--cbam", str(tiny_checkpoints["cbam"]), "--out", str(out), "--figure-rows", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "preprocessing: whole image resized to 64x64 px (aspect ratio not kept)" in printed
    assert "1 of 2 photos localized against them; 1 have no annotation" in printed  # blue_bar_0 has a mask
    assert "ROAD, P (LeRF - MoRF) / 2" in printed and "36 forward passes and 18 imputations per image" in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["annotations"]["kind"] == "masks"
    assert [r["annotated"] for r in report["images"]] == [True, False]
    for key in ("baseline", "cbam"):
        roads = [r[key]["road"] for r in report["images"]]
        assert all(np.isfinite(roads)) and report["summary"][key]["road"] == pytest.approx(np.mean(roads))
    assert report["cbam_minus_baseline"]["road"]["p_value"] is None


def test_eval_names_a_mask_of_the_wrong_size(photo_root, tiny_checkpoints, tmp_path, capsys):
    masks = write_masks(photo_root, tmp_path / "masks", size=(20, 20))
    code = main(["eval", "--data", str(photo_root / "photos"), "--masks", str(masks), "--limit", "1",
                 "--baseline", str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"]),
                 "--out", str(tmp_path / "eval")])
    assert code == 2
    assert "the mask of blue bar/blue_bar_0 is 20x20 px but the photo is 48x40 px" in capsys.readouterr().err


def test_eval_says_what_a_data_folder_should_hold(tmp_path, tiny_checkpoints, capsys):
    code = main(["eval", "--data", str(tmp_path), "--split", "val", "--baseline", str(tiny_checkpoints["baseline"]),
                 "--cbam", str(tiny_checkpoints["cbam"])])
    err = capsys.readouterr().err
    assert code == 2 and f"no val split in {tmp_path}" in err and "<class>/<image>" in err
