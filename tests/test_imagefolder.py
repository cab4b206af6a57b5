"""Photo folders (cbam_viz.data.imagefolder, .transforms, .source): ImageFolder and ImageNet layouts, class order
and names, unreadable images, preprocessing, and `train --data` on photos with exact resume.

Everything runs on tiny images written here, at 32 px with batches of 4, on the CPU.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.models import ResNet50_Weights
from torchvision.transforms.v2 import functional as TF

from cbam_viz import train as tr
from cbam_viz.data import imagefolder as photos
from cbam_viz.data.source import DataError, open_data
from cbam_viz.data.transforms import eval_transform
from cbam_viz.errors import CbamVizError
from cbam_viz.io.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
BATCH = 4
STEPS = 4
# Upper and lower case and punctuation: ImageFolder sorts by code point ("Zebra" before "ant").
CLASSES = {"ant": (230, 30, 30), "Zebra": (30, 200, 40), "bee-2": (40, 60, 230)}
BROKEN = "ant/broken.jpg"
CMYK = "bee-2/cmyk.jpg"


def photo(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (56, 40)) -> Image.Image:
    """A noisy image of one colour with a grey band, so crops and flips change its pixels."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    pixels[:, : size[0] // 4] = 128
    return Image.fromarray(pixels)


def write_classes(folder: Path, per_class: int, seed: int) -> None:
    """per_class images per class, alternately JPEG and PNG."""
    for c, (name, colour) in enumerate(CLASSES.items()):
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            suffix = ".jpg" if k % 2 == 0 else ".png"
            photo(colour, seed + 10 * c + k).save(folder / name / f"img{k}{suffix}")


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory) -> Path:
    """train/ (3 classes x 3 images, plus one unreadable JPEG and one CMYK JPEG) and val/ (2 per class)."""
    root = tmp_path_factory.mktemp("photos")
    write_classes(root / "train", 3, 0)
    write_classes(root / "val", 2, 100)
    (root / "train" / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("CMYK", (48, 40), (0, 255, 255, 0)).save(root / "train" / CMYK, quality=95)  # pure red
    return root


def test_class_and_sample_order_are_imagefolders(photo_root):
    split = photos.open_split(photo_root, "train")
    reference = ImageFolder(str(photo_root / "train"))
    assert split.classes == reference.classes == ["Zebra", "ant", "bee-2"]
    assert split.class_names == split.classes  # no mapping file: the folder names
    assert [(s.path, s.label) for s in split.samples] == reference.samples
    assert split.layout == "imagefolder" and all(s.boxes == () for s in split.samples)
    val = photos.open_split(photo_root, "val", split.classes)
    assert len(val) == 6 and [s.label for s in val.samples] == [0, 0, 1, 1, 2, 2]


def test_unreadable_image_is_replaced_by_the_next_of_its_class(photo_root):
    split = photos.open_split(photo_root, "train")
    broken = next(i for i, s in enumerate(split.samples) if s.rel == BROKEN)
    members = split.members(split.samples[broken].label)
    assert split.note(broken) == ""  # not met yet
    image, used = split.load_readable(broken)
    assert used == members[(members.index(broken) + 1) % len(members)]
    assert np.array_equal(np.asarray(image), np.asarray(split.load(used)))
    assert split.load_readable(broken)[1] == used and list(split.unreadable) == [BROKEN]
    assert split.note(broken).startswith(f"{BROKEN} (") and split.note(used) == ""
    # a training item that replaced it names it; an evaluation item is zeros with the UNREADABLE label
    stream = photos.PhotoTrainStream(split, SIZE, length=len(split), seed=0)
    i = next(i for i in range(len(split)) if stream.sample_index(i) == broken)
    assert stream[i][1] == split.samples[broken].label and stream[i][2] == split.note(broken)
    pixels, label, note = photos.PhotoDataset(split, SIZE, "center")[broken]
    assert label == photos.UNREADABLE and note.startswith(BROKEN) and not pixels.any()
    assert photos.PhotoDataset(split, SIZE, "center")[used][2] == ""
    line = photos.unreadable_line("train", [f"f{k}.jpg (bad)" for k in range(5)], "left out")
    assert line == "train: 5 unreadable image(s) left out: f0.jpg (bad); f1.jpg (bad); f2.jpg (bad) ..."


def test_cmyk_jpeg_decodes_as_rgb(photo_root):
    split = photos.open_split(photo_root, "train")
    i = next(i for i, s in enumerate(split.samples) if s.rel == CMYK)
    image, label, note = photos.PhotoDataset(split, SIZE, "whole")[i]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert split.classes[label] == "bee-2" and not note
    red, green, blue = image.float().mean(dim=(1, 2)).tolist()
    assert red > 200 and green < 50 and blue < 50


def test_training_items_depend_on_seed_and_index_alone(photo_root):
    split = photos.open_split(photo_root, "train")
    stream = photos.PhotoTrainStream(split, SIZE, length=30, seed=3, augment="trivialaugment")
    copy = pickle.loads(pickle.dumps(stream))
    torch.manual_seed(123)  # the global generator does not matter, and is left as it was
    state = torch.get_rng_state()
    for i in (0, 7, 29, 12):
        a, b = stream[i], copy[i]
        assert a[0].shape == (3, SIZE, SIZE) and a[0].dtype == torch.uint8
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert torch.equal(torch.get_rng_state(), state)
    # each epoch shows every sample once, in its own order
    n = len(split)
    epochs = [[stream.sample_index(i) for i in range(e * n, (e + 1) * n)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(n)) and epochs[0] != epochs[1]
    other = photos.PhotoTrainStream(split, SIZE, length=30, seed=4)
    assert not torch.equal(stream[0][0], other[0][0])
    with pytest.raises(IndexError):
        stream[30]


def test_eval_preprocessing_center_and_whole():
    image = photo((200, 100, 50), 0, size=(80, 40))
    whole = eval_transform(SIZE, "whole")(image)
    assert torch.equal(whole, TF.resize(TF.pil_to_tensor(image), [SIZE, SIZE], antialias=True))  # as the app does
    center = eval_transform(SIZE, "center")(image)
    short = round(SIZE * 256 / 224)
    want = TF.center_crop(TF.resize(TF.pil_to_tensor(image), short, antialias=True), [SIZE, SIZE])
    assert center.shape == (3, SIZE, SIZE) and torch.equal(center, want)
    assert not torch.equal(center, whole)
    with pytest.raises(CbamVizError, match="preprocess must be one of center, whole"):
        photos.PhotoDataset(photos.PhotoSplit(Path("."), "val", "imagefolder", [], [], []), SIZE, "crop")


def write_flat_val(root: Path) -> dict[str, tuple[str, list[tuple[int, int, int, int]]]]:
    """train/ with synset folders, val/ flat with LOC_val_solution.csv in the root; returns what the CSV says."""
    synsets = {"n01440764": (230, 30, 30), "n01443537": (30, 200, 40)}
    truth = {
        "ILSVRC2012_val_00000002": ("n01443537", [(3, 4, 20, 30)]),
        "ILSVRC2012_val_00000001": ("n01440764", [(1, 2, 30, 25), (5, 6, 7, 8)]),
        "ILSVRC2012_val_00000003": ("n01440764", [(0, 0, 55, 39)]),
    }
    for k, (synset, colour) in enumerate(synsets.items()):
        (root / "train" / synset).mkdir(parents=True)
        for j in range(2):
            photo(colour, 10 * k + j).save(root / "train" / synset / f"{synset}_{j}.JPEG")
    (root / "val").mkdir()
    lines = ["ImageId,PredictionString"]
    for image_id, (synset, boxes) in truth.items():
        photo(synsets[synset], 50).save(root / "val" / f"{image_id}.JPEG")
        lines.append(f"{image_id}," + " ".join(f"{synset} {x0} {y0} {x1} {y1}" for x0, y0, x1, y1 in boxes) + " ")
    lines.append("ILSVRC2012_val_00000099,n01440764 1 1 2 2")  # a row without its image: ignored
    (root / photos.SOLUTION_CSV).write_text("\n".join(lines) + "\n")
    return truth


def test_imagenet_flat_val_labels_boxes_and_mapping_names(tmp_path):
    truth = write_flat_val(tmp_path)
    mapping = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
    (tmp_path / "LOC_synset_mapping.txt").write_text(mapping)
    train = photos.open_split(tmp_path, "train")
    val = photos.open_split(tmp_path, "val", train.classes)
    assert val.layout == "imagenet-flat" and train.class_names == val.class_names == ["tench", "goldfish"]
    assert [s.rel for s in val.samples] == [f"ILSVRC2012_val_0000000{k}.JPEG" for k in (1, 2, 3)]
    for sample in val.samples:
        synset, boxes = truth[Path(sample.rel).stem]
        assert train.classes[sample.label] == synset
        assert sample.boxes == tuple(tuple(float(v) for v in box) for box in boxes)
    data = open_data(tmp_path)
    assert data.class_names == ["tench", "goldfish"] and data.info["class_ids"] == ["n01440764", "n01443537"]
    assert data.info["layout"] == {"train": "imagefolder", "val": "imagenet-flat"}
    items = data.val_split(SIZE, 0, 1)
    assert len(items) == 3 and [item[1] for item in items] == [0, 1, 0]
    assert items[0][0].shape == (3, SIZE, SIZE) and [item[2] for item in items] == ["", "", ""]
    assert [item[1] for item in data.val_split(SIZE, 1, 2)] == [1]  # rank 1 of 2: every second image
    # words.txt (tab-separated) works the same; the ids stay the class ids
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    (tmp_path / "words.txt").write_text("n01440764\ttench, Tinca tinca\n")
    assert photos.open_split(tmp_path, "train").class_names == ["tench", "n01443537"]


def test_a_solution_file_with_a_bad_prediction_string_is_a_clear_error(tmp_path):
    write_flat_val(tmp_path)
    csv = tmp_path / photos.SOLUTION_CSV
    csv.write_text(csv.read_text().replace("n01443537 3 4 20 30", "n01443537 3 4"))
    with pytest.raises(photos.PhotoFolderError, match=r"line \d: PredictionString must be groups"):
        open_data(tmp_path)


def test_1000_synsets_take_torchvisions_imagenet_names(tmp_path):
    synsets = [f"n{k:08d}" for k in range(1000)]
    assert photos.readable_names(tmp_path, synsets) == ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert photos.readable_names(tmp_path, synsets[:999]) == synsets[:999]  # not ImageNet-1k: the ids


def test_unrecognised_layout_lists_layouts_and_contents(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        open_data(tmp_path)
    message = str(err.value)
    assert "It holds images/, notes.txt." in message
    assert "stamp scenes" in message and "ImageFolder" in message and photos.SOLUTION_CSV in message
    with pytest.raises(DataError, match="It does not exist"):
        open_data(tmp_path / "nowhere")
    (tmp_path / "train" / "a").mkdir(parents=True)
    photo((1, 2, 3), 0).save(tmp_path / "train" / "a" / "x.png")
    with pytest.raises(photos.PhotoFolderError, match="has no val/ folder"):
        open_data(tmp_path)


def test_a_class_without_a_readable_image_is_an_error(tmp_path):
    write_classes(tmp_path / "train", 1, 0)
    write_classes(tmp_path / "val", 1, 0)
    for path in (tmp_path / "train" / "Zebra").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(photos.PhotoFolderError, match="class 'Zebra' .* has no readable image"):
        open_data(tmp_path)
    (tmp_path / "train" / "fly").mkdir()  # no image at all: torchvision's own check, as a clear error
    with pytest.raises(photos.PhotoFolderError, match="Found no valid file for the classes fly"):
        open_data(tmp_path)
    (tmp_path / "train" / "fly").rmdir()
    (tmp_path / "val" / "wasp").mkdir()
    with pytest.raises(photos.PhotoFolderError, match="class folders that train/ lacks: wasp"):
        photos.open_split(tmp_path, "val", photos.open_split(tmp_path, "train").classes)


def parse(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tr.add_arguments(parser)
    return parser.parse_args(args)


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--out", str(out), "--steps", str(STEPS), "--batch-size", str(BATCH), "--size",
        str(SIZE), "--eval-every", str(3 * BATCH), "--workers", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_training_on_a_photo_folder_writes_loadable_checkpoints(photo_root, tmp_path, capsys):
    data, out = tmp_path / "photos", tmp_path / "run"
    shutil.copytree(photo_root, data)
    (data / "val" / "ant" / "bad.png").write_bytes(b"not a png")
    result = tr.train(parse(argv(data, out, "--arch", "resnet50-cbam")))
    assert result.completed and len(result.history) == 2 and result.history[-1]["val_images"] == 6
    # each split's unreadable files: counted and named once, though both validations met them
    lines = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{data / 'train'}: 1 unreadable image(s) replaced by the next readable image of "
                               f"their class: {BROKEN} (broken.jpg is truncated or corrupt")
    assert lines[1].startswith(f"{data / 'val'}: 1 unreadable image(s) left out of validation: ant/bad.png "
                               "(bad.png is not an image file")
    loaded = load_checkpoint(out / tr.FINAL)
    meta = loaded.meta
    assert meta.arch == "resnet50-cbam" and meta.class_names == ["Zebra", "ant", "bee-2"] and meta.input_size == SIZE
    assert meta.dataset["name"] == "image folder" and meta.dataset["train_images"] == 11
    assert meta.dataset["val_preprocess"] == "center" and len(meta.dataset["files_hash"]) == 64
    assert "class_ids" not in meta.dataset  # the names are the ids
    assert meta.recipe["augment"] == "none" and "RandomResizedCrop" in meta.recipe["augmentation"]
    logits = loaded.model(torch.zeros(1, 3, SIZE, SIZE))
    assert logits.shape == (1, 3)


def test_resume_on_a_photo_folder_is_exact(photo_root, tmp_path):
    extra = ("--arch", "resnet50", "--augment", "trivialaugment")
    straight = tr.train(parse(argv(photo_root, tmp_path / "straight", *extra)))
    out = tmp_path / "run"
    first = tr.train(parse(argv(photo_root, out, *extra)), stop_after=STEPS // 2)
    assert not first.completed and first.step == STEPS // 2
    second = tr.train(parse(["--out", str(out), "--workers", "1", "--device", "cpu"]))
    assert second.completed and second.config.augment == "trivialaugment"
    state, resumed = straight.model.state_dict(), second.model.state_dict()
    assert [k for k in state if not torch.equal(state[k], resumed[k])] == []
    key = ("images", "step", "lr", "train_loss", "train_acc", "val_top1", "val_top5", "val_images")
    assert [[r[k] for k in key] for r in second.history] == [[r[k] for k in key] for r in straight.history]
    assert load_checkpoint(out / tr.FINAL).meta.recipe["augment"] == "trivialaugment"
    with pytest.raises(CbamVizError, match=r"--augment randaugment \(the run has trivialaugment\)"):
        tr.train(parse(argv(photo_root, out, "--augment", "randaugment")))


def test_photo_only_and_scene_only_options_are_refused_elsewhere(photo_root, tmp_path):
    (tmp_path / "scenes" / "pack").mkdir(parents=True)
    (tmp_path / "scenes" / "val").mkdir()
    with pytest.raises(DataError, match="--augment randaugment is for photo folders"):
        open_data(tmp_path / "scenes", "randaugment")
    with pytest.raises(CbamVizError, match="--target-scale sizes the targets of stamp scenes"):
        tr.train(parse(argv(photo_root, tmp_path / "run", "--arch", "resnet50", "--target-scale", "0.1", "0.3")))
    assert not (tmp_path / "run").exists()
