"""Stamp scenes written out as an ordinary photo dataset: an ImageFolder with Pascal VOC boxes and masks.

It lets the photo path of `train` and `eval` be checked against the native stamp-scene path on the same images.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image
from tqdm import tqdm

from cbam_viz.data.pack import AssetPack
from cbam_viz.data.progress import progress_bar
from cbam_viz.data.scenes import compose_scene
from cbam_viz.data.splits import MaterializedSplit
from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import atomic_dir


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box (x0, y0, x1, y1; 0-based pixel edges, x1 and y1 end-exclusive, as the annotations module keeps
    boxes) of a boolean mask, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]) -> bytes:
    """A Pascal VOC annotation (ImageNet's bbox format) for one image; each object's box is given as pixel edges
    (`mask_box`) and written as VOC defines it, 1-based and inclusive (`annotations.read_voc` reads it back)."""
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "filename").text = filename
    el = ElementTree.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (*size, 3)):
        ElementTree.SubElement(el, tag).text = str(value)
    for name, box in objects:
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = name
        bnd = ElementTree.SubElement(obj, "bndbox")
        x0, y0, x1, y1 = box
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0 + 1, y0 + 1, x1, y1)):
            ElementTree.SubElement(bnd, tag).text = str(value)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _folder_name(class_name: str) -> str:
    if "/" in class_name or class_name.strip(".") == "":
        raise CbamVizError(f"class name {class_name!r} cannot be a folder name")
    return class_name


def _annotate(out: Path, rel: Path, name: str, mask: np.ndarray, size: tuple[int, int]) -> None:
    """The VOC box file (boxes/<split>/<stem>.xml) and mask (masks/<same path>.png) of one written image."""
    box = mask_box(mask)
    xml = out / "boxes" / rel.parts[0] / f"{rel.stem}.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    xml.write_bytes(voc_xml(rel.name, size, [(name, box)] if box else []))
    mask_path = out / "masks" / rel.with_suffix(".png")
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).convert("1").save(mask_path, format="PNG")


def _write_val(root: Path, split: str, out: Path, progress: bool) -> int:
    """The materialized `split` as out/val/<class>/<index>.<ext>, its image files copied byte for byte."""
    scenes = MaterializedSplit(root, split)
    for i, rec in enumerate(progress_bar(scenes.records, progress, desc=f"writing val from {split}", unit="image")):
        src = scenes.root / rec["file"]
        rel = Path("val") / _folder_name(rec["class_name"]) / f"{int(rec['index']):06d}{src.suffix}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out / rel)
        scene = scenes[i]
        _annotate(out, rel, rec["class_name"], scene.mask, scene.image.size)
    return len(scenes)


def _write_train(pack: AssetPack, per_class: int, size: int, seed: int, out: Path, progress: bool) -> int:
    """The first `per_class` scenes of each class in the training stream, as out/train/<class>/<index>.jpg."""
    left = [per_class] * pack.n_classes
    bar = tqdm(total=per_class * pack.n_classes, disable=not progress, desc="writing train scenes", unit="image")
    written, index = 0, 0
    while any(left):
        scene = compose_scene(pack, "train", index, size, seed)
        if left[scene.label]:
            left[scene.label] -= 1
            name = pack.class_names[scene.label]
            rel = Path("train") / _folder_name(name) / f"{index:06d}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            scene.image.save(out / rel, format="JPEG", quality=92)
            _annotate(out, rel, name, scene.mask, scene.image.size)
            written += 1
            bar.update(1)
        index += 1
    bar.close()
    return written


def write_imagefolder(
    root: str | Path, out: str | Path, val_from: str = "test", train_per_class: int = 0, size: int = 224,
    seed: int = 0, progress: bool = False,
) -> dict:
    """Write a `data build` folder as an ImageFolder (out/train, out/val) with VOC boxes and masks; returns counts.

    val/ holds the materialized `val_from` split's files unchanged, so a checkpoint classifies them exactly as on the
    native path; train/ holds `train_per_class` freshly composed training scenes per class.
    """
    root, out = Path(root), Path(out)
    pack = AssetPack.load(root / "pack")
    with atomic_dir(out) as tmp:
        counts = {"val": _write_val(root, val_from, tmp, progress)}
        if train_per_class > 0:
            counts["train"] = _write_train(pack, train_per_class, size, seed, tmp, progress)
        info = {"source": str(root), "pack_hash": pack.pack_hash, "val_from": val_from, "seed": seed, **counts}
        (tmp / "stamp_imagefolder.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return counts


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """`data imagefolder`: a `data build` folder written out as an ImageFolder with VOC boxes and masks."""
    p = sub.add_parser(
        "imagefolder",
        help="write a data build folder as an ImageFolder (train/, val/) with Pascal VOC boxes and PNG masks",
        description="Write OUT/val/<class>/ from a materialized split (its files unchanged), optionally OUT/train/<class>/ "
        "from freshly composed training scenes, with OUT/boxes/<split>/<stem>.xml (Pascal VOC, from the masks) and "
        "OUT/masks/<split>/<class>/<stem>.png: the stamp scenes as an ordinary photo dataset for train and eval.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="DIR", help="a folder written by `data build`")
    p.add_argument("--out", required=True, metavar="OUT", help="the ImageFolder root to write (replaced)")
    p.add_argument("--val-from", choices=("val", "test"), default="test",
                   help="the materialized split that becomes OUT/val (default: %(default)s)")
    p.add_argument("--train-per-class", type=int, default=0, metavar="N",
                   help="also write N composed training scenes per class to OUT/train (default: %(default)s)")
    p.add_argument("--size", type=int, default=224, help="side of the training scenes in px (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training scenes (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Write the ImageFolder and print what it holds."""
    if args.train_per_class < 0:
        raise CbamVizError(f"--train-per-class must be >= 0 (got {args.train_per_class})")
    counts = write_imagefolder(
        args.source, args.out, args.val_from, args.train_per_class, args.size, args.seed, not args.no_progress
    )
    print(f"{args.out}: " + ", ".join(f"{split} {n} images" for split, n in counts.items()) + " (boxes/, masks/)")
    return 0
