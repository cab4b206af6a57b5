"""Stamp scenes (cbam_viz.data): asset packs, deterministic scene composition, materialized splits, `data build`.

Everything runs on synthetic assets made here (a synthetic pack, and a fake extracted Debian cache for the
build path); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cbam_viz.data import build, debian
from cbam_viz.data.backgrounds import (
    LOMIRI_DIR,
    LOMIRI_PHOTOS,
    MATE_PHOTO_DIR,
    PLASMA_DIR,
    PLASMA_PHOTOS,
    TUXPAINT_TEMPLATES_DIR,
)
from cbam_viz.data.debian import DEBIAN_PACKAGES, fetch_debian_assets
from cbam_viz.data.pack import SPLITS, AssetPack
from cbam_viz.data.scenes import (
    _SCALED,
    MAX_ROTATION,
    MIN_TARGET_VISIBLE,
    SCALED_CACHE_BYTES,
    TARGET_SCALE,
    SceneDataset,
    _jitter,
    _resized,
    compose_scene,
)
from cbam_viz.data.splits import MaterializedSplit, materialize_split
from cbam_viz.data.stamps import FLAT_MAX, FLAT_PHOTO, STAMPS_SUBDIR, class_name_from_description, photo_statistics
from cbam_viz.data.synthetic import make_synthetic_pack
from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import atomic_dir

RED = (255, 0, 0)
N_CLASSES = 4


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory) -> Path:
    """A synthetic pack: 4 pure-red shape classes, 3 green distractors, noise/gradient backgrounds with R <= 80."""
    root = tmp_path_factory.mktemp("pack") / "pack"
    return make_synthetic_pack(root, n_classes=N_CLASSES, n_distractors=3, class_colors=[RED] * N_CLASSES)


@pytest.fixture(scope="module")
def pack(pack_dir) -> AssetPack:
    return AssetPack.load(pack_dir)


def shift_or(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    out = mask.copy()
    padded = np.pad(mask, r)
    h, w = mask.shape
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    return ~shift_or(~mask, r)


# --- composition ------------------------------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_scenes(pack, pack_dir):
    fresh = AssetPack.load(pack_dir)  # a separate instance with its own (empty) image cache
    for split in SPLITS:
        a = compose_scene(pack, split, 7, 96, seed=3)
        b = compose_scene(fresh, split, 7, 96, seed=3)
        assert a.image.mode == "RGB" and a.image.size == (96, 96)
        assert a.mask.dtype == bool and a.mask.shape == (96, 96)
        assert a.image.tobytes() == b.image.tobytes()
        assert np.array_equal(a.mask, b.mask) and a.label == b.label
        assert len(a.distractor_masks) == len(b.distractor_masks)
        assert all(np.array_equal(x, y) for x, y in zip(a.distractor_masks, b.distractor_masks))
    base = compose_scene(pack, "train", 7, 96, seed=3)
    assert compose_scene(pack, "train", 8, 96, seed=3).image.tobytes() != base.image.tobytes()
    assert compose_scene(pack, "train", 7, 96, seed=4).image.tobytes() != base.image.tobytes()
    assert compose_scene(pack, "val", 7, 96, seed=3).image.tobytes() != base.image.tobytes()


def textbook_jitter(image: Image.Image, b: float, c: float, s: float) -> np.ndarray:
    """The scene jitter written plainly (new arrays, `mean(0)` over the opaque pixels): what _jitter must equal."""
    arr = np.asarray(image)
    rgb = arr[..., :3].astype(np.float32) * b
    opaque = arr[..., 3] > 127 if image.mode == "RGBA" else np.ones(arr.shape[:2], bool)
    mean = rgb[opaque].mean(0) if opaque.any() else rgb.reshape(-1, 3).mean(0)
    rgb = (rgb - mean.mean()) * c + mean.mean()
    gray = (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    rgb = gray + (rgb - gray) * s
    out = arr.copy()
    out[..., :3] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return out


def test_scene_jitter_equals_its_plain_definition_bit_for_bit():
    rng = np.random.default_rng(5)
    for k in range(120):
        mode = ("RGB", "RGBA")[k % 2]
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        if mode == "RGBA":
            arr[..., 3] = (0, 255, 128)[k % 3] if k % 4 == 1 else arr[..., 3]  # none, all or half opaque too
        b, c, s = (float(v) for v in rng.uniform(0.7, 1.3, 3))
        image = Image.fromarray(arr, mode)
        np.testing.assert_array_equal(np.asarray(_jitter(image, b, c, s)), textbook_jitter(image, b, c, s))


def test_resized_stamps_are_reused_unless_their_id_came_back_on_another_image():
    rng = np.random.default_rng(2)
    src, other = (Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA") for _ in range(2))
    first = _resized(src, (20, 16), None)
    assert _resized(src, (20, 16), None) is first
    np.testing.assert_array_equal(np.asarray(first), np.asarray(src.resize((20, 16), Image.Resampling.BILINEAR)))
    assert _SCALED.budget == SCALED_CACHE_BYTES and 0 < _SCALED.weight <= SCALED_CACHE_BYTES
    _SCALED.put((id(other), (20, 16), None), (src, first))  # an id reused by another image
    np.testing.assert_array_equal(np.asarray(_resized(other, (20, 16), None)),
                                  np.asarray(other.resize((20, 16), Image.Resampling.BILINEAR)))


def test_mask_is_exactly_where_the_target_was_drawn(pack):
    seen_distractor = False
    for i in range(30):
        s = compose_scene(pack, "train", i, 96, seed=1)
        img = np.asarray(s.image).astype(int)
        red = (img[..., 0] > 140) & (img[..., 1] < 0.45 * img[..., 0]) & (img[..., 2] < 0.45 * img[..., 0])
        inner = erode(s.mask, 1)
        assert s.mask.sum() > 0 and inner.sum() > 0
        assert red[inner].all(), f"scene {i}: target mask covers non-target pixels"
        assert not red[~shift_or(s.mask, 2)].any(), f"scene {i}: target colour outside the mask"
        x0, y0, x1, y1 = s.bbox
        ys, xs = np.nonzero(s.mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for k, m in enumerate(s.distractor_masks):
            assert m.dtype == bool and m.shape == s.mask.shape
            assert not (m & s.mask).any()
            assert all(not (m & o).any() for o in s.distractor_masks[k + 1:])
            core = erode(m, 1)
            if core.any():
                seen_distractor = True
                green = img[..., 1] > img[..., 0] + 40
                assert green[core].mean() > 0.95
    assert seen_distractor


def test_target_scale_and_visibility(pack):
    size = 128
    longest = []
    for i in range(60):
        s = compose_scene(pack, "train", i, size, seed=2)
        t = s.info["target"]
        longest.append(t["longest"])
        assert TARGET_SCALE[0] * size - 1 <= t["longest"] <= TARGET_SCALE[1] * size + 1
        assert abs(t["angle"]) <= MAX_ROTATION
        # a front distractor never hides more than 30% of the target
        assert s.mask.sum() >= MIN_TARGET_VISIBLE * t["full_px"] - 1
        assert s.mask.sum() >= 0.5 * (0.2 * size) ** 2 * 0.3  # never a sliver
    assert min(longest) < 0.3 * size and max(longest) > 0.6 * size
    assert any(compose_scene(pack, "train", i, size, seed=2).info["target"]["flip"] for i in range(20))


def test_training_can_draw_other_target_sizes(pack):
    """`target_scale` changes only the target's size: the scene's class, background and crop stay those of the
    default scene, and SceneDataset hands the range to every scene it composes."""
    size, small = 128, (0.10, 0.15)
    data = SceneDataset(pack, "train", size, length=30, seed=2, target_scale=small)
    for i in range(30):
        default, scene = compose_scene(pack, "train", i, size, seed=2), data.scene(i)
        assert small[0] * size - 1 <= scene.info["target"]["longest"] <= small[1] * size + 1
        assert (scene.label, scene.info["background"], scene.info["crop"]) == (
            default.label, default.info["background"], default.info["crop"]
        )


def test_backgrounds_are_disjoint_between_splits(pack, pack_dir):
    files = {s: set(pack.backgrounds[s]) for s in SPLITS}
    assert all(files[s] for s in SPLITS)
    assert not (files["train"] & files["val"]) and not (files["train"] & files["test"]) and not (files["val"] & files["test"])
    digests = {s: {hashlib.sha256((pack_dir / f).read_bytes()).hexdigest() for f in files[s]} for s in SPLITS}
    assert not (digests["train"] & digests["test"]) and not (digests["train"] & digests["val"])
    for split in SPLITS:
        for i in range(10):
            assert compose_scene(pack, split, i, 64).info["background"] in files[split]


def test_distractors_are_never_classes(pack):
    m = pack.manifest
    class_files = {f for c in m["classes"] for f in c["files"]}
    distractor_files = {f for d in m["distractors"] for f in d["files"]}
    assert class_files and distractor_files and not (class_files & distractor_files)
    assert not set(pack.class_names) & set(pack.distractor_names)
    labels = [compose_scene(pack, "train", i, 48).label for i in range(40)]
    assert set(labels) == set(range(N_CLASSES))  # uniform over classes, all of them reached
    assert [compose_scene(pack, "test", i, 48).label for i in range(8)] == [i % N_CLASSES for i in range(8)]


def test_scene_dataset_items_and_cheap_pickle(pack, pack_dir):
    data = SceneDataset(pack_dir, "train", size=40, length=5, seed=1)
    img, label = data[2]
    assert img.dtype == torch.uint8 and img.shape == (3, 40, 40) and 0 <= label < N_CLASSES
    scene = compose_scene(pack, "train", 2, 40, seed=1)
    assert torch.equal(img, torch.from_numpy(np.array(scene.image)).permute(2, 0, 1))
    assert len(data) == 5 and data.class_names == pack.class_names
    with pytest.raises(IndexError):
        data[5]
    assert len(pickle.dumps(data)) < 20_000  # decoded images are not pickled
    t = SceneDataset(pack, "val", size=40, length=2, transform=lambda im: im.size)
    assert t[0] == ((40, 40), 0)


def test_dataloader_workers_give_the_same_batches(pack_dir):
    data = SceneDataset(pack_dir, "train", size=48, length=12, seed=5)
    single = list(torch.utils.data.DataLoader(data, batch_size=4, num_workers=0))
    multi = list(torch.utils.data.DataLoader(data, batch_size=4, num_workers=2))
    assert len(single) == len(multi) == 3
    for (xa, ya), (xb, yb) in zip(single, multi):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --- materialized splits -----------------------------------------------------------------------------------------


def test_materialized_split_round_trips(pack, tmp_path):
    out = materialize_split(pack, tmp_path, "test", per_class=2, size=64, seed=4, image_format="png")
    first_index = (out / "index.jsonl").read_bytes()
    split = MaterializedSplit(tmp_path, "test")
    assert len(split) == 2 * N_CLASSES
    assert split.class_names == pack.class_names and split.pack_hash == pack.pack_hash
    assert sorted(split.labels) == sorted(list(range(N_CLASSES)) * 2)
    for i in range(len(split)):
        got, want = split[i], compose_scene(pack, "test", i, 64, seed=4)
        assert got.image.tobytes() == want.image.tobytes()  # PNG is lossless
        assert np.array_equal(got.mask, want.mask) and got.label == want.label
        assert len(got.distractor_masks) == len(want.distractor_masks)
        assert all(np.array_equal(a, b) for a, b in zip(got.distractor_masks, want.distractor_masks))
        rec = split.records[i]
        assert rec["class_name"] == pack.class_names[rec["label"]] and tuple(rec["bbox"]) == want.bbox
    materialize_split(pack, tmp_path, "test", per_class=2, size=64, seed=4, image_format="png")
    assert (out / "index.jsonl").read_bytes() == first_index
    jpg = materialize_split(pack, tmp_path / "j", "val", per_class=1, size=64, seed=4)
    s0 = MaterializedSplit(tmp_path / "j", "val")[0]
    want = compose_scene(pack, "val", 0, 64, seed=4)
    assert (jpg / "images" / "000000.jpg").exists() and np.array_equal(s0.mask, want.mask)
    assert np.abs(np.asarray(s0.image, int) - np.asarray(want.image, int)).mean() < 6


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(CbamVizError, match="data build"):
        MaterializedSplit(tmp_path, "val")


# --- loading errors ----------------------------------------------------------------------------------------------


def test_load_errors_on_missing_or_corrupt_pack(pack_dir, tmp_path):
    with pytest.raises(CbamVizError, match="data build"):
        AssetPack.load(tmp_path / "nothing")
    import shutil

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(pack_dir, dst)
        return dst

    bad_json = copy("badjson")
    (bad_json / "manifest.json").write_text("{not json")
    with pytest.raises(CbamVizError, match="corrupt"):
        AssetPack.load(bad_json)

    tampered = copy("tampered")
    obj = next(iter(sorted((tampered / "objects").glob("*.png"))))
    obj.write_bytes(obj.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CbamVizError, match="sha256"):
        AssetPack.load(tampered)

    missing = copy("missing")
    next(iter((missing / "backgrounds" / "test").glob("*.jpg"))).unlink()
    with pytest.raises(CbamVizError, match="missing"):
        AssetPack.load(missing)

    other = copy("other")
    (other / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CbamVizError, match="not a cbam_viz"):
        AssetPack.load(other)
    # the build folder itself (holding pack/) is accepted too
    assert AssetPack.load(pack_dir.parent).pack_hash == AssetPack.load(pack_dir).pack_hash


# --- the build path, on a fake extracted Debian cache -------------------------------------------------------------


def _photo_stamp(rng: np.random.Generator, w: int, h: int, hue: tuple[int, int, int]) -> Image.Image:
    alpha = Image.new("L", (w, h), 0)
    ImageDraw.Draw(alpha).ellipse((2, 2, w - 3, h - 3), fill=255)
    noise = rng.normal(0, 22, size=(h, w, 3)) + np.array(hue)
    rgb = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "RGB")
    rgb.putalpha(alpha)
    return rgb


def _flat_stamp(w: int, h: int) -> Image.Image:
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((2, 2, w - 3, h - 3), fill=(250, 200, 0, 255), outline=(0, 0, 0, 255), width=3)
    return im


def make_fake_cache(cache: Path) -> None:
    """An extracted-package cache like fetch_debian_assets leaves, with a few photo-like and clip-art stamps."""
    rng = np.random.default_rng(0)
    ext = cache / "extracted"
    for pkg in DEBIAN_PACKAGES:
        (ext / pkg / "usr/share/doc" / pkg).mkdir(parents=True)
        (ext / pkg / "usr/share/doc" / pkg / "copyright").write_text(f"Files: *\nCopyright: test {pkg}\nLicense: GPL-2+\n")
        (ext / pkg / ".complete").write_text("1.0-test\n")
    stamps = ext / "tuxpaint-stamps-default" / STAMPS_SUBDIR

    def stamp(rel: str, image: Image.Image, text: str | None = "A thing.", svg: bool = False) -> None:
        path = stamps / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        if text is not None:
            path.with_suffix(".txt").write_text(f"{text}\nfr.utf8=Une chose.\n", encoding="utf-8")
        if svg:
            path.with_suffix(".svg").write_text("<svg/>")

    animals = ["zebra", "lion", "owl", "frog", "goat", "crow", "hippo", "mouse", "yak", "bison", "koala"]
    for i, name in enumerate(animals):
        hue = tuple(int(v) for v in rng.integers(40, 220, size=3))
        stamp(f"animals/{name}.png", _photo_stamp(rng, 90 + 3 * i, 70 + 2 * i, hue), f"A {name} (an animal).")
    # a second, different photo of a zebra: a variant of the zebra class, not a class of its own
    stamp("animals/zebra-2.png", _photo_stamp(rng, 60, 100, (200, 60, 60)), "A zebra (another one).")
    stamp("animals/clipart.png", _flat_stamp(90, 90), "A drawn sun.")
    stamp("animals/cartoon/toon.png", _photo_stamp(rng, 90, 90, (100, 100, 100)), "A cartoon.")
    stamp("symbols/letter.png", _photo_stamp(rng, 90, 90, (100, 100, 100)), "A letter.")
    stamp("animals/vector.png", _photo_stamp(rng, 90, 90, (100, 100, 100)), "A vector.", svg=True)
    stamp("animals/zebra_mirror.png", _photo_stamp(rng, 90, 90, (100, 100, 100)), None)
    stamp("animals/tiny.png", _photo_stamp(rng, 30, 30, (100, 100, 100)), "A tiny thing.")
    mate = ext / "mate-backgrounds" / MATE_PHOTO_DIR
    mate.mkdir(parents=True)
    for i in range(4):
        arr = rng.normal(120, 40, size=(300, 480, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(mate / f"Photo{i}.jpg", quality=90)
    Image.new("RGB", (480, 300), (40, 80, 160)).save(mate / "Flat.jpg")  # flat: rejected
    plasma = ext / "plasma-workspace-wallpapers" / PLASMA_DIR
    for name in PLASMA_PHOTOS[:2]:
        images = plasma / name / "contents" / "images"
        images.mkdir(parents=True)
        for w, h in ((640, 400), (320, 200)):
            arr = rng.normal(100, 50, size=(h, w, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(images / f"{w}x{h}.jpg", quality=90)
        meta = {"KPlugin": {"Name": name, "License": "GPL-2+", "Authors": [{"Name": "Someone"}]}}
        (plasma / name / "metadata.json").write_text(json.dumps(meta))
    templates = ext / "tuxpaint-data" / TUXPAINT_TEMPLATES_DIR
    templates.mkdir(parents=True)
    for stem in ("cliff", "sheep"):  # sheep is excluded by name
        arr = rng.normal(110, 45, size=(240, 360, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(templates / f"{stem}.jpg", quality=90)
    for package, stems in LOMIRI_PHOTOS.items():
        folder = ext / package / LOMIRI_DIR
        folder.mkdir(parents=True)
        for stem in (stems[0], "render_by_Someone"):  # only the listed photo is used
            arr = rng.normal(90, 45, size=(240, 360, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{stem}.jpg", quality=90)


def build_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    build.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_data_build_on_a_fake_debian_cache(tmp_path, capsys):
    cache = tmp_path / "cache"
    make_fake_cache(cache)
    out = tmp_path / "out"
    argv = ["build", "--out", str(out), "--cache", str(cache), "--size", "48", "--test-per-class", "2",
            "--val-per-class", "1", "--no-progress", "--seed", "3"]  # fmt: skip
    assert build.run(build_args(*argv)) == 0
    pack = AssetPack.load(out / "pack")
    m = pack.manifest
    sources = {s for o in m["classes"] + m["distractors"] for s in o["sources"]}
    assert sources == {f"animals/{n}.png" for n in ["zebra", "zebra-2", "lion", "owl", "frog", "goat", "crow",
                                                     "hippo", "mouse", "yak", "bison", "koala"]}
    assert len(m["distractors"]) >= 0.15 * 11 and len(m["classes"]) + len(m["distractors"]) == 11
    zebra = [o for o in m["classes"] + m["distractors"] if o["name"] == "zebra"]  # name from the description
    assert len(zebra) == 1 and zebra[0]["sources"] == ["animals/zebra-2.png", "animals/zebra.png"]
    assert len(zebra[0]["files"]) == 2
    bgs = {s: {b["name"] for b in m["backgrounds"][s]} for s in SPLITS}
    all_bgs = set().union(*bgs.values())
    assert len(all_bgs) == 9 and "mate-flat" not in all_bgs and "tuxpaint-sheep" not in all_bgs
    assert {"tuxpaint-cliff", "lomiri-bridge", "lomiri-infinite-sea"} <= all_bgs
    assert not (bgs["train"] & bgs["test"]) and not (bgs["train"] & bgs["val"]) and not (bgs["val"] & bgs["test"])
    license_text = (out / "pack" / "LICENSE-ATTRIBUTION.txt").read_text()
    assert "Copyright: test tuxpaint-stamps-default" in license_text and "Someone" in license_text
    assert "Copyright: test lomiri-wallpapers-16.04" in license_text and "Bridge_by_Sander_Klootwijk.jpg" in license_text
    test = MaterializedSplit(out, "test")
    assert len(test) == 2 * pack.n_classes and test.pack_hash == pack.pack_hash and test[0].image.size == (48, 48)
    index = (out / "test" / "index.jsonl").read_bytes()
    assert "classes:" in capsys.readouterr().out
    # same seed again: identical pack hash and index files
    assert build.run(build_args(*argv)) == 0
    assert AssetPack.load(out / "pack").pack_hash == pack.pack_hash
    assert (out / "test" / "index.jsonl").read_bytes() == index
    # --pack reuses an existing pack without touching the cache
    other = tmp_path / "other"
    assert build.run(build_args("build", "--out", str(other), "--pack", str(out / "pack"), "--cache",
                             str(tmp_path / "nowhere"), "--size", "48", "--test-per-class", "2",
                             "--val-per-class", "1", "--no-progress", "--seed", "3")) == 0
    assert (other / "test" / "index.jsonl").read_bytes() == index


def test_fetch_explains_missing_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(CbamVizError, match="apt-get"):
        fetch_debian_assets(tmp_path, ["tuxpaint-stamps-default"], log=lambda m: None)


def test_fetch_explains_failed_download(tmp_path, monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(debian, "_run", lambda cmd, cwd=None: subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package"))
    with pytest.raises(CbamVizError, match="apt-get update"):
        fetch_debian_assets(tmp_path, ["tuxpaint-stamps-default"], log=lambda m: None)


# --- selection helpers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "description,name",
    [
        ("A peacock (a male peafowl).", "peacock"),
        ("An albino peahen (a female peafowl, or peacock).", "albino peahen"),
        ("A Seville orange, also called a bitter orange.", "seville orange"),
        ("A ripe, red tomato!", "ripe red tomato"),
        ("A stethoscope lets your doctor listen to your heart and lungs.", "stethoscope"),
        ("A pair of binoculars.", "binoculars"),
        ("A plumber\u2019s wrench.", "plumbers wrench"),
        ("A \u201cFuji\u201d apple.", "fuji apple"),
        ("Mars\u2014the red planet. It\u2019s just beyond earth.", "mars"),
    ],
)
def test_class_name_from_description(description, name):
    assert class_name_from_description(description) == name


def test_photo_statistics_separate_photos_from_clip_art():
    rng = np.random.default_rng(0)
    photo = photo_statistics(_photo_stamp(rng, 80, 80, (120, 90, 60)))
    clip = photo_statistics(_flat_stamp(80, 80))
    assert photo["flat"] < FLAT_PHOTO and clip["flat"] >= FLAT_MAX


def test_atomic_dir_replaces_a_folder_only_on_success(tmp_path):
    target = tmp_path / "split"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["split"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_fetch_downloads_extracts_and_then_uses_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd=None):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{cmd[2]}_1.2-3_all.deb").write_bytes(b"deb")
        elif cmd[:2] == ["dpkg-deb", "-x"]:
            if "broken" in cmd[2]:
                return subprocess.CompletedProcess(cmd, 2, "", "dpkg-deb: error: not a Debian archive")
            (Path(cmd[3]) / "usr").mkdir()
            (Path(cmd[3]) / "usr" / "file").write_text("content")
        elif cmd[:2] == ["dpkg-deb", "-f"]:
            return subprocess.CompletedProcess(cmd, 0, "1.2-3\n", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(debian.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(debian, "_run", fake_run)
    got = fetch_debian_assets(tmp_path, ["tuxpaint-data"], log=lambda m: None)
    root = tmp_path / "extracted" / "tuxpaint-data"
    assert got == {"tuxpaint-data": {"root": str(root), "version": "1.2-3"}}
    assert (root / "usr" / "file").read_text() == "content" and (root / ".complete").read_text() == "1.2-3\n"
    assert [c for c in calls if c[0] == "apt-get"] == [["apt-get", "download"]]
    calls.clear()
    assert fetch_debian_assets(tmp_path, ["tuxpaint-data"], log=lambda m: None) == got and calls == []
    with pytest.raises(CbamVizError, match="not a Debian archive"):
        fetch_debian_assets(tmp_path, ["broken-package"], log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "extracted").iterdir()) == ["tuxpaint-data"]  # nothing half-written
