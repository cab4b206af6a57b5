"""Ground-truth boxes or masks for photo folders, read from the formats ImageNet, Pascal VOC and COCO ship.

`load_annotations(boxes=PATH)` reads, by what PATH is: a folder of Pascal VOC XML files (ImageNet's bbox format,
one `<object><name>…</name><bndbox>…</bndbox></object>` per box), a COCO instances `.json` (`bbox` = x, y, w, h;
category names are the class names), or ImageNet's `LOC_val_solution.csv` (`ImageId,PredictionString` with
`synset x0 y0 x1 y1` repeated). `load_annotations(masks=DIR)` reads PNG masks (non-zero = object) mirroring the
image paths. Boxes are (class name, x0, y0, x1, y1) in the pixels of the image the annotation was made on, as
0-based pixel edges (x1, y1 end-exclusive: a box 50 px wide has x1 - x0 = 50); VOC's 1-based inclusive pixel
indices are converted on reading (x0 = xmin - 1, x1 = xmax), COCO's x, y, w, h already are edges.

Photos stored sideways with an EXIF orientation load upright (`images.load_image`), so their annotations are
turned with them (`ImageAnnotation.upright`). Frame rule (`ORIENTATION_FRAMES`): "stored" = the annotation was
drawn on the pixels as stored in the file (ImageNet, VOC and tools that read pixels without EXIF), "upright" = on
the photo as a viewer shows it; "auto" takes the frame whose portrait/landscape shape matches the annotation's
recorded size (VOC `<size>`, COCO width/height, a mask's shape) and "stored" where that cannot tell.

Matching rule: an image is known by its path under the split folder without extension (`n01440764/x_293`); its
annotation is the one stored under that key (a VOC file's path under the folder without `.xml`, a COCO
`file_name` without extension, a mask's path without `.png`), or else the one stored under its file stem alone
(flat layouts: the CSV's `ImageId`, a flat folder of val XMLs or masks).
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from cbam_viz.errors import CbamVizError

Box = tuple[str, float, float, float, float]  # (class name, x0, y0, x1, y1)
ORIENTATION_FRAMES = ("auto", "stored", "upright")
EXIF_TRANSPOSE = {  # EXIF orientation -> the turn that shows the stored pixels upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = frozenset({5, 6, 7, 8})


class AnnotationError(CbamVizError):
    """A malformed annotation file: the message names the file and the line or element."""


@dataclass(frozen=True)
class ImageAnnotation:
    """One image's ground truth: boxes (with the (width, height) they were drawn on, when the file says), or a
    boolean mask of the object."""

    boxes: tuple[Box, ...] = ()
    size: tuple[int, int] | None = None
    mask: np.ndarray | None = field(default=None, compare=False)

    def boxes_at(self, size: tuple[int, int]) -> list[Box]:
        """The boxes in the pixels of an image of `size` (W, H): rescaled when the file says they were drawn on an
        image of another size (a resized copy of the dataset)."""
        if self.size is None or tuple(self.size) == tuple(size):
            return list(self.boxes)
        sx, sy = size[0] / self.size[0], size[1] / self.size[1]
        return [(name, x0 * sx, y0 * sy, x1 * sx, y1 * sy) for name, x0, y0, x1, y1 in self.boxes]

    def upright(self, orientation: int, stored: tuple[int, int], frame: str = "auto") -> ImageAnnotation | None:
        """This annotation turned as a photo stored at `stored` (W, H) with EXIF `orientation` is turned when it
        loads, or None when it needs no turn (no orientation, or drawn upright by the module's frame rule)."""
        method = EXIF_TRANSPOSE.get(orientation)
        if method is None or frame == "upright":
            return None
        drawn = self.size if self.mask is None else (self.mask.shape[1], self.mask.shape[0])
        if frame == "auto" and drawn is not None and orientation in SWAPS_AXES and _portrait(stored) != _portrait(
            drawn
        ):
            return None  # its shape is the upright photo's: drawn on the photo as shown
        if self.mask is not None:
            turned = np.asarray(Image.fromarray(self.mask).transpose(method))
            return ImageAnnotation(mask=turned)
        w, h = drawn or stored
        boxes = []
        for name, x0, y0, x1, y1 in self.boxes:
            (a, b), (c, d) = _turn_point(method, x0, y0, w, h), _turn_point(method, x1, y1, w, h)
            boxes.append((name, min(a, c), min(b, d), max(a, c), max(b, d)))
        size = None if self.size is None else ((h, w) if orientation in SWAPS_AXES else (w, h))
        return ImageAnnotation(tuple(boxes), size)


def _portrait(size: tuple[int, int]) -> bool:
    return size[1] > size[0]


def _turn_point(method: Image.Transpose, x: float, y: float, w: float, h: float) -> tuple[float, float]:
    """Where the point (x, y) of a w x h image lands after `method` (pixel edges, not centres)."""
    turns = {
        Image.Transpose.FLIP_LEFT_RIGHT: (w - x, y),
        Image.Transpose.FLIP_TOP_BOTTOM: (x, h - y),
        Image.Transpose.ROTATE_180: (w - x, h - y),
        Image.Transpose.ROTATE_90: (y, w - x),
        Image.Transpose.ROTATE_270: (h - y, x),
        Image.Transpose.TRANSPOSE: (y, x),
        Image.Transpose.TRANSVERSE: (h - y, w - x),
    }
    return turns[method]


@dataclass
class Annotations:
    """Annotations of a photo folder, looked up by image key (see the module's matching rule)."""

    kind: str  # "voc", "coco", "imagenet-csv" or "masks"
    source: Path
    boxes: dict[str, ImageAnnotation] = field(default_factory=dict)

    def lookup(self, key: str) -> ImageAnnotation | None:
        """The annotation of the image with this key (path without extension), or None when it has none."""
        stem = PurePosixPath(key).name
        if self.kind == "masks":
            for candidate in (key, stem):
                path = self.source / f"{candidate}.png"
                if path.is_file():
                    return ImageAnnotation(mask=read_mask(path))
            return None
        return self.boxes.get(key) or self.boxes.get(stem)


def load_annotations(boxes: Path | None = None, masks: Path | None = None) -> Annotations:
    """Read boxes (VOC folder, COCO .json or ImageNet .csv, told apart by the path) or a folder of PNG masks."""
    if (boxes is None) == (masks is None):
        raise CbamVizError("give either boxes or masks")
    if masks is not None:
        if not masks.is_dir():
            raise CbamVizError(f"--masks {masks}: not a folder")
        return Annotations("masks", masks)
    if boxes.is_dir():
        return Annotations("voc", boxes, read_voc_folder(boxes))
    if not boxes.is_file():
        raise CbamVizError(f"--boxes {boxes}: no such file or folder")
    readers = {".json": ("coco", read_coco), ".csv": ("imagenet-csv", read_imagenet_csv)}
    if boxes.suffix.lower() not in readers:
        raise CbamVizError(
            f"--boxes {boxes}: expected a folder of VOC .xml files, a COCO .json or ImageNet's LOC_val_solution.csv"
        )
    kind, reader = readers[boxes.suffix.lower()]
    return Annotations(kind, boxes, reader(boxes))


def read_voc_folder(folder: Path) -> dict[str, ImageAnnotation]:
    """Every `*.xml` under `folder` (recursively), keyed by its path under the folder without `.xml`."""
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise AnnotationError(f"{folder}: no .xml annotation files in this folder")
    return {path.relative_to(folder).with_suffix("").as_posix(): read_voc(path) for path in files}


def read_voc(path: Path) -> ImageAnnotation:
    """One Pascal VOC / ImageNet bbox XML file: its `<size>` and every `<object>`'s name and `<bndbox>`, the box's
    1-based inclusive pixel indices turned into the module's 0-based edges (xmin 1, xmax W: the whole width)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise AnnotationError(f"{path}: not valid XML ({err})") from None
    size = None
    if (node := root.find("size")) is not None:
        width, height = (_number(path, node, tag, f"<size><{tag}>") for tag in ("width", "height"))
        size = (int(width), int(height))
    boxes = []
    for k, obj in enumerate(root.iter("object"), start=1):
        where = f"<object> #{k}"
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if not name or bndbox is None:
            raise AnnotationError(f"{path}: {where} needs a <name> and a <bndbox>")
        xmin, ymin, xmax, ymax = (_number(path, bndbox, tag, f"{where} <bndbox><{tag}>")
                                  for tag in ("xmin", "ymin", "xmax", "ymax"))
        if not (xmax >= xmin and ymax >= ymin):
            raise AnnotationError(f"{path}: {where}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has no area")
        boxes.append((name, xmin - 1, ymin - 1, xmax, ymax))
    return ImageAnnotation(tuple(boxes), size)


def read_coco(path: Path) -> dict[str, ImageAnnotation]:
    """A COCO instances file, keyed by each image's `file_name` without extension; `bbox` is x, y, w, h."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        entries = data["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    except (KeyError, TypeError, ValueError) as err:
        raise AnnotationError(f"{path}: needs 'images' (id, file_name), 'categories' (id, name) and 'annotations' "
                              f"lists ({type(err).__name__}: {err})") from None
    boxes: dict[int, list[Box]] = {image_id: [] for image_id in images}
    for k, entry in enumerate(entries):
        where = f"annotations[{k}]"
        try:
            image_id, category, (x, y, w, h) = int(entry["image_id"]), int(entry["category_id"]), entry["bbox"]
            x, y, w, h = (float(v) for v in (x, y, w, h))
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"{path}: {where} needs image_id, category_id and bbox [x, y, w, h]") from None
        if image_id not in images or category not in categories:
            raise AnnotationError(f"{path}: {where} names image {image_id} or category {category}, not listed")
        boxes[image_id].append(_box(path, where, categories[category], x, y, x + w, y + h))
    return {
        PurePosixPath(str(im["file_name"])).with_suffix("").as_posix(): ImageAnnotation(
            tuple(boxes[image_id]), _coco_size(im)
        )
        for image_id, im in images.items()
    }


def read_imagenet_csv(path: Path) -> dict[str, ImageAnnotation]:
    """ImageNet's LOC_val_solution.csv: per line an ImageId and `synset x0 y0 x1 y1` repeated, keyed by ImageId."""
    out: dict[str, ImageAnnotation] = {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise AnnotationError(f"{path}: line 1 must be the header 'ImageId,PredictionString'")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            tokens = row[1].split() if len(row) == 2 else []
            if not tokens or len(tokens) % 5:
                raise AnnotationError(f"{path}: line {line} must be 'ImageId,name x0 y0 x1 y1 [name x0 y0 x1 y1 ...]'")
            boxes = []
            for k in range(0, len(tokens), 5):
                try:
                    coords = [float(v) for v in tokens[k + 1 : k + 5]]
                except ValueError:
                    raise AnnotationError(
                        f"{path}: line {line}: box {k // 5 + 1} has a non-numeric coordinate"
                    ) from None
                boxes.append(_box(path, f"line {line}", tokens[k], *coords))
            out[row[0].strip()] = ImageAnnotation(tuple(boxes))
    return out


def read_mask(path: Path) -> np.ndarray:
    """A PNG mask as a boolean (H, W) array: any non-zero pixel is object."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 0
    except (OSError, ValueError) as err:
        raise AnnotationError(f"{path}: not a readable PNG mask ({err})") from None


def _number(path: Path, parent: ET.Element, tag: str, where: str) -> float:
    text = parent.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: {where} must be a number (got {text!r})") from None


def _box(path: Path, where: str, name: str, x0: float, y0: float, x1: float, y1: float) -> Box:
    if not (x1 > x0 and y1 > y0):
        raise AnnotationError(f"{path}: {where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no area")
    return (name, x0, y0, x1, y1)


def _coco_size(image: dict) -> tuple[int, int] | None:
    return (int(image["width"]), int(image["height"])) if "width" in image and "height" in image else None
