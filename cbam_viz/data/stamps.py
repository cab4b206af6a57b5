"""Selecting the real-photo stamps of `tuxpaint-stamps-default` and naming their subjects.

Which stamps count as real photos (the rule, applied in this order; the first that matches decides):

1. directory: anything under `symbols/` (letters, money, shapes...), `town/flags/`, `town/roadsigns/`, or any
   `cartoon/` folder is out;
2. `*_mirror.png` is out: it is Tux Paint's pre-mirrored copy of another stamp;
3. a stamp that also ships as `.svg` is out (a rasterized vector drawing), and so is one whose `.dat` says
   `colorable` or `tinter=vector` (recolourable line art);
4. a stamp without an English description is out;
5. size: longest side < 44 px or fewer than 800 opaque pixels is out (too small to scale up);
6. image statistics on the opaque (alpha > 127) pixels, at full resolution:
   `flat` = share of horizontally adjacent pixel pairs with exactly the same RGB. Photos have sensor noise and
   JPEG texture (flat < 0.10); clip art has large flat fills (flat 0.4 - 1.0). In between (0.10 <= flat < 0.45)
   a stamp is a photo only if it has fine texture everywhere: `flat3` (share of interior pixels whose 3x3
   neighbourhood spans <= 3 levels) < 0.30 and the median 3x3 span is 8 .. 100 (palette-quantized flower photos
   land here), and it is not under `seasonal/` (where the drawn Easter and Christmas stamps sit);
7. a short deny list, `NOT_PHOTOS`, of drawings that the statistics let through (checked by eye on contact
   sheets of every candidate).

Stamps that are near-duplicates of each other (same photo, possibly mirrored or rescaled; 16x16 signatures
within `DUPLICATE_DISTANCE`) are one subject. Each subject gets a readable name from its description
("A peacock (a male peafowl)." -> "peacock"); distinct photos with the same name (two strawberry stamps) are
variants of one class, so there is one class per subject name. About `--distractor-fraction` (default 18%) of
the subjects, chosen by name with the seed, become **distractors**: they appear in scenes but are never a class.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cbam_viz.data.progress import progress_bar

STAMPS_SUBDIR = "usr/share/tuxpaint/stamps"

# --- selection constants (see the module docstring) ---------------------------------------------------------
EXCLUDED_STAMP_DIRS = ("symbols/", "town/flags/", "town/roadsigns/")
NOT_PHOTOS = frozenset(
    {
        "clothes/button.png",
        "seasonal/christmas/stocking.png",
        "seasonal/easter/bluebird.png",
        "seasonal/easter/bunny.png",
        "seasonal/easter/butterfly.png",
        "seasonal/easter/chick-in-egg.png",
        "seasonal/newyears/party-hat.png",
    }
)
# Descriptions that make a poor class name; the value is used instead.
NAME_OVERRIDES = {
    "animals/birds/rooster.png": "rooster",
    "animals/fish/bluegroper.png": "blue groper",
    "animals/fish/lionfish.png": "lionfish",
    "animals/insects/hoverfly.png": "hoverfly",
    "animals/mammals/bears/toys/edward_bear.png": "teddy bear",
    "animals/mammals/bovines/gnu-baby.png": "baby gnu",
    "animals/mammals/bovines/gnu-baby-stand.png": "baby gnu",
    "animals/mammals/wildboar.png": "wild boars",
    "food/vegetables/broccoli.png": "broccoli",
    "food/vegetables/tomato.png": "tomato",
    "military/ammunition/old_naval_shell.png": "naval shell",
    "military/vehicles/bradley.png": "bradley fighting vehicle",
    "military/vehicles/infantry-stryker.png": "stryker",
    "people/toys/grannysmith.png": "rag doll",
    "plants/flowers/anemone_red.png": "red anemone",
    "plants/flowers/flower9.png": "dewy flower",
    "plants/mushrooms/cep-2.png": "two ceps",
    "plants/trees/rambutan.png": "rambutan tree",
    "seasonal/christmas/German_Christmas_toy.png": "smoking man figurine",
    "space/moon/moon_3qt.png": "gibbous moon",
    "space/spacewalk.png": "astronaut",
    "space/voyager2.png": "voyager 2 probe",
    "town/monuments/inukshuk-photo.png": "inukshuk",
}
MIN_STAMP_SIDE = 44
MIN_STAMP_OPAQUE = 800
FLAT_PHOTO = 0.10
FLAT_MAX = 0.45
DUPLICATE_DISTANCE = 3.0

OBJECT_MAX_SIDE = 256


def read_description(txt: Path) -> str:
    """The English description of a stamp: the first non-empty line that is not a `xx.utf8=` translation."""
    if not txt.exists():
        return ""
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not re.match(r"^[A-Za-z_@]+\.utf8\s*=", line):
            return line
    return ""


_CUT_WORDS = (
    " is ", " are ", " lets ", " gets ", " resembles ", " like ", " makes ", " making ", " from ",
    " used ", " called ", " that ", " which ", " with ", " in ", " at ", " for ", " covered ",
)


def class_name_from_description(description: str, stem: str = "") -> str:
    """A short lower-case subject name from a stamp description ("A peacock (a male peafowl)." -> "peacock")."""
    text = description.strip().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[\u201c\u201d\"]", "", text)
    text = re.sub(r"\([^)]*\)", " ", text)
    text = re.split(r"(?<=[a-z0-9')])\s*[.!?;:](?:\s|$)|\s[-\u2014\u2013]\s|\u2014", text + " ", maxsplit=1)[0]
    text = text.strip(" .!?")
    if "," in text:
        head, tail = text.split(",", 1)
        # "A ripe, red tomato" is an adjective list; "A Seville orange, also called ..." is an apposition.
        text = (head + tail) if len(head.split()) <= 2 and head.split()[0].lower() in ("a", "an") else head
    text = re.sub(r"^(a|an|the|another|some)\s+", "", text.strip(), flags=re.I)
    low = " " + text.lower() + " "
    cuts = [pos for pos in (low.find(word) for word in _CUT_WORDS) if pos > 1]
    text = (low[:min(cuts)] if cuts else low).strip()
    text = re.sub(r"^(pair|bunch|head|plant|string) of\s+", lambda m: "" if m.group(1) != "string" else m.group(0), text)
    text = re.sub(r"[^a-z0-9' -]+", " ", text).replace("'", "")
    text = re.sub(r"\s+", " ", text).strip()
    if not text or len(text.split()) > 4:
        text = re.sub(r"[^a-z0-9]+", " ", re.sub(r"\d+$", "", stem.lower())).strip() or "object"
    return text


def photo_statistics(image: Image.Image) -> dict[str, float]:
    """Flat-colour statistics of the opaque pixels of an RGBA stamp (see the module docstring)."""
    rgba = image.convert("RGBA")
    arr = np.asarray(rgba)
    alpha = arr[..., 3]
    opaque = alpha > 127
    rgb = arr[..., :3].astype(np.int16)
    pairs = opaque[:, 1:] & opaque[:, :-1]
    same = (rgb[:, 1:] == rgb[:, :-1]).all(-1) & pairs
    flat = float(same.sum() / max(int(pairs.sum()), 1))
    inner = np.asarray(Image.fromarray(((alpha > 200) * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(5))) > 0
    rgb_img = Image.fromarray(arr[..., :3])
    span = (
        np.asarray(rgb_img.filter(ImageFilter.MaxFilter(3))).astype(np.int16)
        - np.asarray(rgb_img.filter(ImageFilter.MinFilter(3))).astype(np.int16)
    ).max(-1)
    n_inner = int(inner.sum())
    flat3 = float((span[inner] <= 3).sum() / max(n_inner, 1))
    med_span = float(np.median(span[inner])) if n_inner else 0.0
    return {
        "flat": round(flat, 4),
        "flat3": round(flat3, 4),
        "median_span": med_span,
        "opaque": int(opaque.sum()),
        "width": rgba.width,
        "height": rgba.height,
    }


@dataclass
class StampCandidate:
    """One stamp PNG and the verdict of the real-photo rule."""

    rel: str
    path: Path
    description: str
    accepted: bool
    reason: str
    mirror_ok: bool = True
    stats: dict[str, float] = field(default_factory=dict)


def judge_stamp(rel: str, path: Path) -> StampCandidate:
    """Apply the real-photo rule of the module docstring to one stamp PNG."""
    base = path.with_suffix("")
    dat_words = base.with_suffix(".dat").read_text(errors="replace").split() if base.with_suffix(".dat").exists() else []
    mirror_ok = "nomirror" not in dat_words
    description = read_description(base.with_suffix(".txt"))

    def verdict(ok: bool, reason: str, stats: dict | None = None) -> StampCandidate:
        return StampCandidate(rel, path, description, ok, reason, mirror_ok, stats or {})

    parts = rel.split("/")
    if rel.startswith(EXCLUDED_STAMP_DIRS) or "cartoon" in parts[:-1]:
        return verdict(False, "directory: symbols, flags, road signs or cartoons")
    if base.name.endswith("_mirror"):
        return verdict(False, "pre-mirrored copy of another stamp")
    if base.with_suffix(".svg").exists():
        return verdict(False, "rasterized SVG drawing")
    if "colorable" in dat_words or "tinter=vector" in dat_words:
        return verdict(False, "recolourable line art (.dat)")
    if not description:
        return verdict(False, "no English description")
    try:
        with Image.open(path) as im:
            stats = photo_statistics(im)
    except OSError as err:
        return verdict(False, f"unreadable image: {err}")
    if max(stats["width"], stats["height"]) < MIN_STAMP_SIDE or stats["opaque"] < MIN_STAMP_OPAQUE:
        return verdict(False, "too small", stats)
    if stats["flat"] >= FLAT_MAX:
        return verdict(False, "large flat colour areas (clip art)", stats)
    if stats["flat"] >= FLAT_PHOTO:
        textured = stats["flat3"] < 0.30 and 8 <= stats["median_span"] <= 100
        if not textured or rel.startswith("seasonal/"):
            return verdict(False, "flat colour areas without photo texture", stats)
    if rel in NOT_PHOTOS:
        return verdict(False, "drawing (deny list)", stats)
    return verdict(True, "photo", stats)


def scan_stamps(stamps_root: Path, progress: bool = False) -> list[StampCandidate]:
    """Judge every PNG under the Tux Paint stamps folder, in sorted path order."""
    stamps_root = Path(stamps_root)
    paths = sorted(p for p in stamps_root.rglob("*.png") if p.is_file())
    return [
        judge_stamp(p.relative_to(stamps_root).as_posix(), p)
        for p in progress_bar(paths, progress, desc="judging stamps", unit="stamp")
    ]


def prepare_object(path: Path, max_side: int = OBJECT_MAX_SIDE) -> Image.Image:
    """An RGBA cutout cropped to its visible pixels, longest side <= max_side, RGB zeroed where transparent."""
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    bbox = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if bbox:
        rgba = rgba.crop(bbox)
    scale = max_side / max(rgba.size)
    if scale < 1:
        size = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
        rgba = rgba.resize(size, Image.Resampling.LANCZOS)
    arr = np.array(rgba)
    arr[arr[..., 3] == 0, :3] = 0
    return Image.fromarray(arr, "RGBA")


def _signature(image: Image.Image) -> np.ndarray:
    """16x16 RGB-on-grey plus alpha signature of an RGBA cutout, for near-duplicate detection."""
    rgba = image.convert("RGBA").resize((16, 16), Image.Resampling.BILINEAR)
    canvas = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
    canvas.alpha_composite(rgba)
    return np.concatenate([np.asarray(canvas.convert("RGB"), np.float32), np.asarray(rgba, np.float32)[..., 3:]], -1)


def group_duplicates(objects: list[Image.Image], threshold: float = DUPLICATE_DISTANCE) -> list[list[int]]:
    """Groups of indices whose cutouts are near-duplicates (same photo, maybe mirrored); singletons included."""
    sigs = [_signature(im) for im in objects]
    aspects = [im.width / im.height for im in objects]
    parent = list(range(len(objects)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            if abs(math.log(aspects[i] / aspects[j])) > 0.15:
                continue
            d = min(np.abs(sigs[i] - sigs[j]).mean(), np.abs(sigs[i] - sigs[j][:, ::-1]).mean())
            if d < threshold:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(objects)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())
