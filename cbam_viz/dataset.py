"""Stamp scenes: real-photo object cutouts pasted on real-photo backgrounds, composed deterministically.

`python -m cbam_viz data build --out DIR` downloads seven Debian packages (into `--cache`), selects the
assets, writes a compact versioned **asset pack** to `DIR/pack/` and materializes the fixed `DIR/val/` and
`DIR/test/` splits. Training scenes are composed on the fly from the pack (`SceneDataset`).

Sources (GPL-2+, CC-BY-4.0, CC-BY-SA-3.0/4.0, CC0; attribution in `pack/LICENSE-ATTRIBUTION.txt`):

* objects: `tuxpaint-stamps-default` (`usr/share/tuxpaint/stamps/**.png`, RGBA cutouts, each with a `.txt`
  whose first line is the English description);
* backgrounds: `mate-backgrounds`, `plasma-workspace-wallpapers`, the photo templates of `tuxpaint-data` and the
  photos among `lomiri-wallpapers-16.04` / `-20.04` (`gnome-backgrounds` is downloaded and examined too, but every
  wallpaper in it is a generated pattern or gradient, so none is used).

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

Backgrounds: the photos in `mate-backgrounds`' `nature/` folder, the photographic Plasma wallpapers in
`PLASMA_PHOTOS` and Lomiri wallpapers in `LOMIRI_PHOTOS` (the others are renders/abstract art, checked by eye on
contact sheets), and Tux Paint's photo templates except `TUXPAINT_TEMPLATES_EXCLUDED` (photos whose main subject
is a stamp subject). Lomiri photos whose main subject is a stamp subject (dogs, a bird, paintbrushes) are left out
for the same reason. Each must also have texture (luma std >= 10, mean |Laplacian| >= 1 on a 400 px thumbnail:
rules out flat or gradient images). Each wallpaper goes whole to exactly one of train / val / test, so test
backgrounds are never seen in training.

Scenes (`compose_scene`, `SCENE_VERSION`): a random-resized crop (25-100% of the short side) of a background of
the split with brightness / contrast / saturation jitter and a random mirror; 0-2 distractors; one target
object scaled so its longest side is 20-70% of the image side, mirrored (unless its `.dat` says `nomirror`),
rotated +-15 degrees, with brightness / contrast / saturation jitter, placed at most 10% outside each border.
A distractor may be drawn in front of the target only if at least 70% of the target stays visible; otherwise it
goes behind. Everything comes from `numpy.random.default_rng([seed, split_id, index])`, so the same
(split, index, seed) gives the same pixels in any process. Train labels are drawn uniformly per index; val and
test use `index % n_classes` (balanced).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from cbam_viz.errors import CbamVizError
from cbam_viz.fileio import sha256_file

PACK_FORMAT = "cbam_viz.stamp_pack"
PACK_VERSION = "1.1"
SCENE_VERSION = 2  # bumped whenever compose_scene draws different pixels for the same (pack, split, index, seed)
SPLITS = ("train", "val", "test")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

DEBIAN_PACKAGES = (
    "tuxpaint-stamps-default",
    "mate-backgrounds",
    "gnome-backgrounds",
    "plasma-workspace-wallpapers",
    "tuxpaint-data",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
)
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

PLASMA_PHOTOS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
)
MATE_PHOTO_DIR = "usr/share/backgrounds/mate/nature"
PLASMA_DIR = "usr/share/wallpapers"
TUXPAINT_TEMPLATES_DIR = "usr/share/tuxpaint/templates"
TUXPAINT_TEMPLATES_EXCLUDED = frozenset({"sheep"})  # a flock of sheep: "sheep" is a stamp subject
LOMIRI_DIR = "usr/share/backgrounds"
# Photos only (the rest are renders); friends (dogs), free (a toy bird), Kleiber (a bird) and Picture_1A
# (paintbrushes) are photos of stamp subjects and are left out.
LOMIRI_PHOTOS = {
    "lomiri-wallpapers-16.04": (
        "Bridge_by_Sander_Klootwijk",
        "Dragonfly_by_Bolly",
        "Picture_0B_by_freespace",
        "Wine_by_Jakkub_Mede",
        "aitzgorri_by_Aitzol_Berasategi",
        "analogpattern_by_Peter_Nerlich",
        "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi",
    ),
    "lomiri-wallpapers-20.04": ("Infinite-Sea_by_Aury88",),
}

# --- pack asset sizes -------------------------------------------------------------------------------------------
OBJECT_MAX_SIDE = 256
BACKGROUND_SHORT_SIDE = 448
BACKGROUND_MAX_LONG = 800
BACKGROUND_JPEG_QUALITY = 88

# --- scene parameters -------------------------------------------------------------------------------------------
TARGET_SCALE = (0.20, 0.70)
DISTRACTOR_SCALE = (0.15, 0.45)
MAX_ROTATION = 15.0
JITTER = (0.75, 1.25)
TARGET_OVERFLOW = 0.10
DISTRACTOR_OVERFLOW = 0.30
MIN_TARGET_VISIBLE = 0.70
BG_CROP_SCALE = (0.25, 1.0)
BG_JITTER = (0.7, 1.3)

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cbam_viz"


def _progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    """A tqdm bar on stderr when enabled (and tqdm importable); the bare iterable otherwise."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a runtime dependency
        return iterable
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


# =============================================================================================================
# 1. Obtaining the Debian packages
# =============================================================================================================


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _find_deb(debs: Path, package: str) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def deb_version(deb: Path) -> str:
    """The Version field of a .deb (via dpkg-deb), or the one encoded in its file name."""
    if shutil.which("dpkg-deb"):
        res = _run(["dpkg-deb", "-f", str(deb), "Version"])
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    parts = deb.name.split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 3 else "unknown"


def fetch_debian_assets(
    cache: Path, packages: Iterable[str] = DEBIAN_PACKAGES, log: Callable[[str], None] = print
) -> dict[str, dict[str, str]]:
    """Download (`apt-get download`) and extract (`dpkg-deb -x`) each package into `cache`, skipping cached work.

    Returns {package: {"root": extracted dir, "version": Debian version}}. A package whose
    `cache/extracted/<package>/.complete` marker exists is not downloaded or extracted again.
    """
    cache = Path(cache).expanduser()
    debs = cache / "debs"
    extracted = cache / "extracted"
    out: dict[str, dict[str, str]] = {}
    for package in packages:
        root = extracted / package
        marker = root / ".complete"
        if marker.exists():
            out[package] = {"root": str(root), "version": marker.read_text().strip() or "unknown"}
            continue
        debs.mkdir(parents=True, exist_ok=True)
        deb = _find_deb(debs, package)
        if deb is None:
            if not shutil.which("apt-get"):
                raise CbamVizError(
                    f"apt-get not found: `data build` downloads the Debian package {package!r} with apt-get. "
                    f"Run it on Debian/Ubuntu, or copy {package}_*.deb into {debs} (or pass --pack with an "
                    "existing asset pack)."
                )
            log(f"downloading {package} (apt-get download) into {debs}")
            res = _run(["apt-get", "download", package], cwd=debs)
            deb = _find_deb(debs, package)
            if res.returncode != 0 or deb is None:
                detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
                raise CbamVizError(
                    f"`apt-get download {package}` failed: {' / '.join(detail) or 'no .deb was written'}. "
                    "Run `apt-get update` (as root) and check that the Debian mirror is reachable, or copy "
                    f"{package}_*.deb into {debs}."
                )
        if not shutil.which("dpkg-deb"):
            raise CbamVizError(
                f"dpkg-deb not found: it is needed to unpack {deb.name}. Install it with `apt-get install dpkg` "
                "(it ships with every Debian/Ubuntu system)."
            )
        log(f"extracting {deb.name}")
        tmp = extracted / f".{package}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        res = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CbamVizError(
                f"`dpkg-deb -x {deb}` failed: {res.stderr.strip()[-300:]}. Delete the file and run the build "
                "again to download it anew."
            )
        version = deb_version(deb)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        marker.write_text(version + "\n")
        out[package] = {"root": str(root), "version": version}
    return out


# =============================================================================================================
# 2. Selecting real-photo stamps
# =============================================================================================================


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
        for p in _progress(paths, progress, desc="judging stamps", unit="stamp")
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


# =============================================================================================================
# 3. Selecting backgrounds
# =============================================================================================================


def background_texture(image: Image.Image) -> tuple[float, float]:
    """(luma std, mean |Laplacian|) on a <= 400 px thumbnail: low values mean a flat or gradient image."""
    thumb = image.convert("L")
    thumb.thumbnail((400, 400))
    g = np.asarray(thumb, dtype=np.float32)
    lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
    return float(g.std()), float(lap.mean())


def find_background_photos(roots: dict[str, Path]) -> list[dict[str, str]]:
    """Candidate photo wallpapers: [{"name", "package", "path", "source"}], sorted by name."""
    found: list[dict[str, str]] = []
    mate = roots.get("mate-backgrounds")
    if mate is not None:
        for path in sorted((Path(mate) / MATE_PHOTO_DIR).glob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") and not re.search(r"_\d+x\d+\.", path.name):
                found.append({"name": f"mate-{_slug(path.stem)}", "package": "mate-backgrounds", "path": str(path),
                              "source": path.relative_to(mate).as_posix()})
    plasma = roots.get("plasma-workspace-wallpapers")
    if plasma is not None:
        for name in PLASMA_PHOTOS:
            best: tuple[int, Path] | None = None
            for path in (Path(plasma) / PLASMA_DIR / name / "contents" / "images").glob("*"):
                m = re.match(r"(\d+)x(\d+)\.(jpe?g|png|webp)$", path.name, re.I)
                if m and int(m[1]) >= int(m[2]) and (best is None or int(m[1]) * int(m[2]) > best[0]):
                    best = (int(m[1]) * int(m[2]), path)
            if best is not None:
                found.append({"name": f"plasma-{_slug(name)}", "package": "plasma-workspace-wallpapers",
                              "path": str(best[1]), "source": best[1].relative_to(plasma).as_posix()})
    tuxpaint = roots.get("tuxpaint-data")
    if tuxpaint is not None:
        for path in sorted((Path(tuxpaint) / TUXPAINT_TEMPLATES_DIR).glob("*.jpg")):
            if path.stem not in TUXPAINT_TEMPLATES_EXCLUDED:
                found.append({"name": f"tuxpaint-{_slug(path.stem)}", "package": "tuxpaint-data", "path": str(path),
                              "source": path.relative_to(tuxpaint).as_posix()})
    for package, stems in LOMIRI_PHOTOS.items():
        root = roots.get(package)
        for stem in stems if root is not None else ():
            path = Path(root) / LOMIRI_DIR / f"{stem}.jpg"
            if path.is_file():
                found.append({"name": f"lomiri-{_slug(stem.split('_by_')[0])}", "package": package,
                              "path": str(path), "source": path.relative_to(root).as_posix()})
    return sorted(found, key=lambda b: b["name"])


def prepare_background(path: Path) -> Image.Image:
    """A wallpaper downscaled so its short side is BACKGROUND_SHORT_SIDE, long side centre-cropped to the cap."""
    with Image.open(path) as im:
        im.draft("RGB", (BACKGROUND_SHORT_SIDE * 2, BACKGROUND_SHORT_SIDE * 2))
        rgb = im.convert("RGB")
    scale = BACKGROUND_SHORT_SIDE / min(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.LANCZOS)
    w, h = rgb.size
    if w > BACKGROUND_MAX_LONG:
        x = (w - BACKGROUND_MAX_LONG) // 2
        rgb = rgb.crop((x, 0, x + BACKGROUND_MAX_LONG, h))
    if h > BACKGROUND_MAX_LONG:
        y = (h - BACKGROUND_MAX_LONG) // 2
        rgb = rgb.crop((0, y, w, y + BACKGROUND_MAX_LONG))
    return rgb


def split_counts(n: int) -> dict[str, int]:
    """How many backgrounds go to each split (test ~22%, val ~13%, at least one each, the rest train)."""
    if n < 3:
        raise CbamVizError(f"only {n} background photo(s) found; at least 3 are needed for train/val/test")
    test = max(1, round(0.22 * n))
    val = max(1, round(0.13 * n))
    return {"train": n - test - val, "val": val, "test": test}


# =============================================================================================================
# 4. Writing an asset pack
# =============================================================================================================


@dataclass
class PackObject:
    """One object of a pack being written: its name, image(s) and provenance."""

    name: str
    images: list[Image.Image]
    sources: list[str]
    description: str
    mirror_ok: bool = True
    package: str = ""


@dataclass
class PackBackground:
    name: str
    image: Image.Image
    source: str
    package: str = ""
    attribution: str = ""


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def manifest_bytes(manifest: dict) -> bytes:
    """The canonical serialization of a manifest; the pack hash is the sha256 of exactly these bytes."""
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_pack(
    out: Path,
    classes: list[PackObject],
    distractors: list[PackObject],
    backgrounds: dict[str, list[PackBackground]],
    attribution: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write an asset pack to `out` (replacing it) and return its pack hash.

    Layout: manifest.json, PACK_HASH, LICENSE-ATTRIBUTION.txt, objects/*.png (classes), distractors/*.png,
    backgrounds/<split>/*.jpg. The manifest lists every other file with its sha256.
    """
    out = Path(out)
    if not classes:
        raise CbamVizError("an asset pack needs at least one class")
    if not distractors:
        raise CbamVizError("an asset pack needs at least one distractor")
    for split in SPLITS:
        if not backgrounds.get(split):
            raise CbamVizError(f"an asset pack needs at least one {split} background")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: dict[str, str] = {}

    def put(rel: str, data: bytes) -> str:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = _sha256_bytes(data)
        return rel

    def objects_entry(objs: list[PackObject], folder: str, prefix: str) -> list[dict]:
        entries = []
        for i, obj in enumerate(objs):
            names = []
            for k, im in enumerate(obj.images):
                suffix = f"-{k + 1}" if len(obj.images) > 1 else ""
                names.append(put(f"{folder}/{prefix}{i:03d}-{_slug(obj.name)}{suffix}.png", _png_bytes(im)))
            entries.append({"id": i, "name": obj.name, "files": names, "sources": obj.sources,
                            "description": obj.description, "mirror": obj.mirror_ok, "package": obj.package})
        return entries

    manifest: dict[str, Any] = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "classes": objects_entry(classes, "objects", "c"),
        "distractors": objects_entry(distractors, "distractors", "d"),
        "backgrounds": {},
    }
    for split in SPLITS:
        entries = []
        for bg in backgrounds[split]:
            rel = put(f"backgrounds/{split}/{_slug(bg.name)}.jpg", _jpeg_bytes(bg.image, BACKGROUND_JPEG_QUALITY))
            entries.append({"name": bg.name, "file": rel, "source": bg.source, "package": bg.package,
                            "attribution": bg.attribution})
        manifest["backgrounds"][split] = entries
    put("LICENSE-ATTRIBUTION.txt", attribution.encode("utf-8"))
    manifest["files"] = dict(sorted(files.items()))
    manifest.update(extra or {})
    data = manifest_bytes(manifest)
    (tmp / "manifest.json").write_bytes(data)
    pack_hash = _sha256_bytes(data)
    (tmp / "PACK_HASH").write_text(pack_hash + "\n")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return pack_hash


def _shape_image(kind: str, side: int, color: tuple[int, int, int], rng: np.random.Generator, texture: bool) -> Image.Image:
    """A synthetic RGBA 'stamp': a filled shape, optionally with a little noise texture."""
    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    m = side // 10
    fill = color + (255,)
    if kind == "circle":
        d.ellipse((m, m, side - m, side - m), fill=fill)
    elif kind == "square":
        d.rectangle((m, m, side - m, side - m), fill=fill)
    elif kind == "triangle":
        d.polygon([(side // 2, m), (side - m, side - m), (m, side - m)], fill=fill)
    elif kind == "diamond":
        d.polygon([(side // 2, m), (side - m, side // 2), (side // 2, side - m), (m, side // 2)], fill=fill)
    elif kind == "bar":
        d.rectangle((m, side // 3, side - m, 2 * side // 3), fill=fill)
    elif kind == "ring":
        d.ellipse((m, m, side - m, side - m), fill=fill)
        d.ellipse((side // 3, side // 3, 2 * side // 3, 2 * side // 3), fill=(0, 0, 0, 0))
    else:  # cross
        d.rectangle((side // 3, m, 2 * side // 3, side - m), fill=fill)
        d.rectangle((m, side // 3, side - m, 2 * side // 3), fill=fill)
    if texture:
        arr = np.array(im)
        noise = rng.integers(-25, 26, size=arr.shape[:2] + (3,))
        arr[..., :3] = np.clip(arr[..., :3].astype(int) + noise, 0, 255).astype(np.uint8)
        arr[arr[..., 3] == 0, :3] = 0
        im = Image.fromarray(arr, "RGBA")
    return im


SYNTHETIC_SHAPES = ("circle", "square", "triangle", "diamond", "bar", "ring", "cross")


def make_synthetic_pack(
    root: str | Path,
    n_classes: int = 5,
    n_distractors: int = 3,
    backgrounds_per_split: tuple[int, int, int] = (3, 2, 2),
    seed: int = 0,
    class_colors: list[tuple[int, int, int]] | None = None,
    object_side: int = 96,
    background_size: tuple[int, int] = (192, 144),
    texture: bool = False,
) -> Path:
    """Write a tiny synthetic asset pack (shapes on noise/gradient backgrounds) to `root`; return `root`.

    For tests and smoke runs of the training code: no download. Classes are shapes in `class_colors` (default:
    distinct saturated hues), distractors are green shapes, backgrounds have a red channel <= 80, so a pure-red
    target is easy to find in an image.
    """
    rng = np.random.default_rng([seed, 99])
    root = Path(root)
    if class_colors is None:
        hues = [(230, 30, 30), (240, 200, 20), (200, 40, 220), (250, 130, 20), (240, 240, 240), (130, 90, 40)]
        class_colors = [hues[i % len(hues)] for i in range(n_classes)]
    classes = []
    for i in range(n_classes):
        kind = SYNTHETIC_SHAPES[i % len(SYNTHETIC_SHAPES)]
        name = f"{kind} {i}"
        img = _shape_image(kind, object_side, tuple(class_colors[i]), rng, texture)
        classes.append(PackObject(name, [img], [f"synthetic/{_slug(name)}"], f"A synthetic {kind}.", True, "synthetic"))
    distractors = []
    for i in range(n_distractors):
        kind = SYNTHETIC_SHAPES[(i + 3) % len(SYNTHETIC_SHAPES)]
        img = _shape_image(kind, object_side * 3 // 4, (20, 160 + 20 * (i % 4), 40), rng, texture)
        distractors.append(PackObject(f"green {kind} {i}", [img], [f"synthetic/distractor-{i}"], "A green shape.", True, "synthetic"))
    backgrounds: dict[str, list[PackBackground]] = {}
    w, h = background_size
    k = 0
    for split, count in zip(SPLITS, backgrounds_per_split):
        backgrounds[split] = []
        for _ in range(count):
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            base = np.stack([
                np.full((h, w), 20 + 10 * (k % 5), np.float32),
                60 + 120 * xx / w + 20 * np.sin(yy / (7 + k)),
                60 + 120 * yy / h,
            ], -1)
            arr = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255)
            arr[..., 0] = np.clip(arr[..., 0], 0, 80)
            backgrounds[split].append(PackBackground(f"synthetic-{split}-{k}", Image.fromarray(arr.astype(np.uint8), "RGB"),
                                                     f"synthetic/{split}/{k}", "synthetic"))
            k += 1
    write_pack(root, classes, distractors, backgrounds, "Synthetic test assets generated by cbam_viz.dataset; no license applies.\n",
               extra={"sources": {"synthetic": str(seed)}, "seed": seed})
    return root


# =============================================================================================================
# 5. Loading an asset pack
# =============================================================================================================


class AssetPack:
    """A loaded asset pack: manifest plus lazily decoded images, cached per process (not pickled)."""

    def __init__(self, root: Path, manifest: dict, pack_hash: str):
        self.root = Path(root)
        self.manifest = manifest
        self.pack_hash = pack_hash
        self.version = str(manifest.get("version", ""))
        self.class_names: list[str] = [c["name"] for c in manifest["classes"]]
        self.distractor_names: list[str] = [d["name"] for d in manifest["distractors"]]
        self.backgrounds: dict[str, list[str]] = {s: [b["file"] for b in manifest["backgrounds"][s]] for s in SPLITS}
        self._cache: dict[str, Image.Image] = {}

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> "AssetPack":
        """Load the pack at `root` (the pack folder, or a `data build --out` folder that holds `pack/`).

        With verify, every file's sha256 is checked against the manifest. Raises CbamVizError when the pack is
        missing, unreadable, of another format, or any file is missing or corrupt.
        """
        root = Path(root).expanduser()
        if not (root / "manifest.json").exists() and (root / "pack" / "manifest.json").exists():
            root = root / "pack"
        hint = "build one with `python -m cbam_viz data build --out DIR` and pass DIR or DIR/pack"
        mpath = root / "manifest.json"
        if not mpath.exists():
            raise CbamVizError(f"no asset pack at {root} (manifest.json missing): {hint}")
        data = mpath.read_bytes()
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CbamVizError(f"asset pack at {root} is corrupt: manifest.json is not valid JSON ({err}); {hint}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
            raise CbamVizError(f"{mpath} is not a cbam_viz stamp asset pack manifest; {hint}")
        major = str(manifest.get("version", "")).split(".")[0]
        if major != PACK_VERSION.split(".")[0]:
            raise CbamVizError(
                f"asset pack at {root} has format version {manifest.get('version')!r}, this code reads "
                f"{PACK_VERSION}: rebuild it with `python -m cbam_viz data build`"
            )
        try:
            for key in ("classes", "distractors", "files"):
                if not manifest[key]:
                    raise KeyError(key)
            for split in SPLITS:
                if not manifest["backgrounds"][split]:
                    raise KeyError(f"backgrounds.{split}")
        except (KeyError, TypeError) as err:
            raise CbamVizError(f"asset pack at {root} is corrupt: manifest has no {err}; {hint}") from None
        pack_hash = _sha256_bytes(data)
        hash_file = root / "PACK_HASH"
        if hash_file.exists() and hash_file.read_text().strip() != pack_hash:
            raise CbamVizError(f"asset pack at {root} is corrupt: PACK_HASH does not match manifest.json; {hint}")
        files: dict[str, str] = manifest["files"]
        needed = {f for c in manifest["classes"] + manifest["distractors"] for f in c["files"]}
        needed |= {b["file"] for s in SPLITS for b in manifest["backgrounds"][s]}
        for rel in sorted(needed | set(files)):
            path = root / rel
            if rel not in files:
                raise CbamVizError(f"asset pack at {root} is corrupt: {rel} is not listed in the manifest's files")
            if not path.is_file():
                raise CbamVizError(f"asset pack at {root} is incomplete: {rel} is missing; {hint}")
            if verify and sha256_file(path) != files[rel]:
                raise CbamVizError(f"asset pack at {root} is corrupt: {rel} does not match its sha256; {hint}")
        return cls(root, manifest, pack_hash)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = {}  # decoded images stay in the process that decoded them
        return state

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def _image(self, rel: str, mode: str) -> Image.Image:
        im = self._cache.get(rel)
        if im is None:
            try:
                with Image.open(self.root / rel) as f:
                    im = f.convert(mode)
            except OSError as err:
                raise CbamVizError(f"asset pack at {self.root}: cannot read {rel} ({err}); rebuild the pack") from None
            self._cache[rel] = im
        return im

    def object_images(self, label: int) -> list[Image.Image]:
        """Decoded RGBA image(s) of class `label`."""
        return [self._image(f, "RGBA") for f in self.manifest["classes"][label]["files"]]

    def distractor_images(self, i: int) -> list[Image.Image]:
        return [self._image(f, "RGBA") for f in self.manifest["distractors"][i]["files"]]

    def background_image(self, split: str, i: int) -> Image.Image:
        return self._image(self.backgrounds[split][i], "RGB")

    def preload(self) -> None:
        """Decode every image now (e.g. before timing)."""
        for i in range(self.n_classes):
            self.object_images(i)
        for i in range(len(self.distractor_names)):
            self.distractor_images(i)
        for split in SPLITS:
            for i in range(len(self.backgrounds[split])):
                self.background_image(split, i)


# =============================================================================================================
# 6. Composing scenes
# =============================================================================================================


@dataclass
class Scene:
    """A composed scene: RGB image, the visible-target mask, its label and the distractors' visible masks."""

    image: Image.Image
    mask: np.ndarray
    label: int
    distractor_masks: list[np.ndarray] = field(default_factory=list)
    bbox: tuple[int, int, int, int] | None = None  # target mask bounding box (x0, y0, x1, y1), end-exclusive
    info: dict[str, Any] = field(default_factory=dict)


def _jitter(image: Image.Image, b: float, c: float, s: float) -> Image.Image:
    """Brightness, contrast (about the mean of the opaque pixels) and saturation jitter of an RGBA or RGB image."""
    arr = np.asarray(image)
    rgb = arr[..., :3].astype(np.float32) * b
    opaque = arr[..., 3] > 127 if image.mode == "RGBA" else np.ones(arr.shape[:2], bool)
    mean = rgb[opaque].mean(0) if opaque.any() else rgb.reshape(-1, 3).mean(0)
    rgb = (rgb - mean.mean()) * c + mean.mean()
    gray = (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    rgb = gray + (rgb - gray) * s
    out = arr.copy()
    out[..., :3] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, image.mode)


def _transform_object(
    src: Image.Image, longest: float, rng: np.random.Generator, mirror_ok: bool
) -> tuple[Image.Image, dict[str, Any]]:
    """Scale (longest side), jitter, mirror and rotate an RGBA object; always draws the same random numbers."""
    flip = rng.random() < 0.5
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    b, c, s = (float(v) for v in rng.uniform(JITTER[0], JITTER[1], size=3))
    scale = longest / max(src.size)
    size = (max(1, round(src.width * scale)), max(1, round(src.height * scale)))
    im = src.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0 if scale < 0.5 else None)
    im = _jitter(im, b, c, s)
    flip = flip and mirror_ok
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    return im, {"longest": size[0] if size[0] >= size[1] else size[1], "flip": flip, "angle": round(angle, 3),
                "jitter": [round(b, 3), round(c, 3), round(s, 3)]}


def _placed_mask(alpha: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """A size x size bool mask with `alpha > 127` pasted at (x, y), clipped to the canvas."""
    out = np.zeros((size, size), bool)
    h, w = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = alpha[y0 - y:y1 - y, x0 - x:x1 - x] > 127
    return out


def _background_crop(bg: Image.Image, size: int, rng: np.random.Generator) -> tuple[Image.Image, list[float]]:
    """Random-resized crop (25-100% of the short side, aspect 3:4..4:3) of `bg`, resized to size x size, mirrored
    at random, with brightness / contrast / saturation jitter."""
    W, H = bg.size
    side = min(W, H) * rng.uniform(*BG_CROP_SCALE)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(W, side * math.sqrt(ratio))
    h = min(H, side / math.sqrt(ratio))
    x = rng.uniform(0, W - w)
    y = rng.uniform(0, H - h)
    flip = rng.random() < 0.5
    b, c, s = (float(v) for v in rng.uniform(BG_JITTER[0], BG_JITTER[1], size=3))
    box = (x, y, x + w, y + h)
    im = bg.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0 if w > 3 * size else None)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _jitter(im, b, c, s), [round(v, 2) for v in box]


def _check_split(split: str) -> None:
    if split not in SPLIT_IDS:
        raise CbamVizError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def scene_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator behind scene (split, index, seed): independent of any global state."""
    _check_split(split)
    if index < 0:
        raise IndexError(f"scene index must be >= 0, got {index}")
    return np.random.default_rng([int(seed) % (1 << 64), SPLIT_IDS[split], int(index)])


def _place_object(
    variants: list[Image.Image],
    scale: tuple[float, float],
    overflow: float,
    mirror_ok: bool,
    size: int,
    rng: np.random.Generator,
) -> tuple[int, Image.Image, dict[str, Any], tuple[int, int], np.ndarray]:
    """Pick a variant, transform it to `scale` x size (longest side) and place it, up to `overflow` of it off the
    canvas; returns (variant, image, transform info, (x, y), mask). Draws its random numbers in a fixed order."""
    variant = int(rng.integers(len(variants)))
    longest = rng.uniform(*scale) * size
    image, info = _transform_object(variants[variant], longest, rng, mirror_ok)
    w, h = image.size
    x = int(round(rng.uniform(-overflow * w, size - (1 - overflow) * w)))
    y = int(round(rng.uniform(-overflow * h, size - (1 - overflow) * h)))
    return variant, image, info, (x, y), _placed_mask(np.asarray(image.getchannel("A")), x, y, size)


def compose_scene(
    pack: AssetPack,
    split: str,
    index: int,
    size: int,
    seed: int = 0,
    target_scale: tuple[float, float] = TARGET_SCALE,
) -> Scene:
    """Compose scene `index` of `split` at size x size pixels; identical for the same (split, index, seed).
    `target_scale` (the target's longest side as a fraction of `size`) lets training draw other object sizes."""
    if size < 16:
        raise CbamVizError(f"scene size must be at least 16 px, got {size}")
    rng = scene_rng(split, index, seed)
    n_classes = pack.n_classes
    label = int(rng.integers(n_classes))
    if split != "train":
        label = int(index % n_classes)
    backgrounds = pack.backgrounds[split]
    bg_i = int(rng.integers(len(backgrounds)))
    canvas, crop_box = _background_crop(pack.background_image(split, bg_i), size, rng)

    mirror_ok = bool(pack.manifest["classes"][label].get("mirror", True))
    variant, target, t_info, (tx, ty), t_mask = _place_object(
        pack.object_images(label), target_scale, TARGET_OVERFLOW, mirror_ok, size, rng
    )

    # distractors
    n_dist = int(rng.integers(0, 3))
    dists = []
    for _ in range(n_dist):
        d_i = int(rng.integers(len(pack.distractor_names)))
        d_mirror = bool(pack.manifest["distractors"][d_i].get("mirror", True))
        _, d_img, _, d_xy, d_mask = _place_object(
            pack.distractor_images(d_i), DISTRACTOR_SCALE, DISTRACTOR_OVERFLOW, d_mirror, size, rng
        )
        front = bool(rng.random() < 0.5)
        dists.append({"id": d_i, "img": d_img, "xy": d_xy, "front": front, "mask": d_mask})

    # a front distractor must leave >= 70% of the target visible, else it goes behind
    full = int(t_mask.sum())
    visible = t_mask.copy()
    for d in dists:
        if d["front"]:
            after = visible & ~d["mask"]
            if full and after.sum() < MIN_TARGET_VISIBLE * full:
                d["front"] = False
            else:
                visible = after
    layers = [(k + 2, d) for k, d in enumerate(dists) if not d["front"]]
    layers.append((1, {"img": target, "xy": (tx, ty), "mask": t_mask}))
    layers += [(k + 2, d) for k, d in enumerate(dists) if d["front"]]
    labels = np.zeros((size, size), np.uint8)
    for code, layer in layers:
        canvas.paste(layer["img"], layer["xy"], layer["img"])
        labels[layer["mask"]] = code
    mask = labels == 1
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else None
    info = {
        "split": split, "index": int(index), "seed": int(seed), "background": backgrounds[bg_i], "crop": crop_box,
        "target": {**t_info, "variant": variant, "xy": [tx, ty], "visible_px": int(mask.sum()), "full_px": full},
        "distractors": [{"id": d["id"], "name": pack.distractor_names[d["id"]], "front": d["front"]} for d in dists],
    }
    return Scene(canvas, mask, label, [labels == k + 2 for k in range(len(dists))], bbox, info)


UNKNOWN_STREAM = 7  # keeps the random numbers of unknown-subject scenes apart from those of the split's scenes


def compose_unknown_scene(pack: AssetPack, split: str, index: int, size: int, seed: int = 0) -> Image.Image:
    """A scene composed like `split`'s but showing none of the classes: a held-out (distractor) subject where the
    target would stand, at the target's size, and 0-2 more distractors; identical for the same arguments."""
    _check_split(split)
    rng = np.random.default_rng([int(seed) % (1 << 64), SPLIT_IDS[split], int(index), UNKNOWN_STREAM])
    backgrounds = pack.backgrounds[split]
    canvas, _ = _background_crop(pack.background_image(split, int(rng.integers(len(backgrounds)))), size, rng)
    for j in range(1 + int(rng.integers(0, 3))):
        d_i = int(rng.integers(len(pack.distractor_names)))
        mirror_ok = bool(pack.manifest["distractors"][d_i].get("mirror", True))
        scale, overflow = (TARGET_SCALE, TARGET_OVERFLOW) if j == 0 else (DISTRACTOR_SCALE, DISTRACTOR_OVERFLOW)
        _, image, _, xy, _ = _place_object(pack.distractor_images(d_i), scale, overflow, mirror_ok, size, rng)
        canvas.paste(image, xy, image)
    return canvas


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 CHW tensor."""
    arr = np.asarray(image.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class SceneDataset(Dataset):
    """`length` scenes of `split` composed on the fly; item i is (transform(image) or uint8 CHW tensor, label).

    Pickles cheaply: the pack's decoded-image cache is dropped, so each DataLoader worker decodes what it uses once.
    """

    def __init__(
        self,
        pack: AssetPack | str | Path,
        split: str,
        size: int,
        length: int,
        seed: int = 0,
        transform=None,
        target_scale: tuple[float, float] = TARGET_SCALE,
    ):
        _check_split(split)
        self.pack = pack if isinstance(pack, AssetPack) else AssetPack.load(pack)
        self.split = split
        self.size = int(size)
        self.length = int(length)
        self.seed = int(seed)
        self.transform = transform
        self.target_scale = (float(target_scale[0]), float(target_scale[1]))

    @property
    def class_names(self) -> list[str]:
        return self.pack.class_names

    @property
    def pack_hash(self) -> str:
        return self.pack.pack_hash

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> Scene:
        return compose_scene(self.pack, self.split, i, self.size, self.seed, self.target_scale)

    def __getitem__(self, i: int):
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"scene {i} out of range for {self.length} scenes")
        scene = self.scene(i)
        image = self.transform(scene.image) if self.transform is not None else image_to_tensor(scene.image)
        return image, scene.label


# =============================================================================================================
# 7. Materialized val / test splits
# =============================================================================================================


def materialize_split(
    pack: AssetPack,
    out_dir: str | Path,
    split: str,
    per_class: int,
    size: int = 224,
    seed: int = 0,
    image_format: str = "jpg",
    progress: bool = False,
) -> Path:
    """Write scenes 0 .. per_class * n_classes - 1 of `split` (balanced classes) to out_dir/<split>/.

    Files: images/NNNNNN.jpg|png, masks/NNNNNN.png (1-bit target mask), distractors/NNNNNN.png (L: 0 = none,
    k = visible pixels of distractor k, only for scenes with distractors), index.jsonl (one JSON object per scene)
    and split.json (pack hash, class names, size, seed). Replaces an existing folder; byte-identical for the
    same pack, seed, size and format.
    """
    _check_split(split)
    if image_format not in ("jpg", "png"):
        raise CbamVizError(f"image format must be jpg or png, not {image_format!r}")
    if per_class < 1:
        raise CbamVizError(f"scenes per class must be at least 1 for the {split} split")
    out = Path(out_dir) / split
    tmp = Path(out_dir) / f".{split}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "masks", "distractors"):
        (tmp / sub).mkdir(parents=True)
    n = per_class * pack.n_classes
    lines = []
    for i in _progress(range(n), progress, desc=f"writing {split} scenes", unit="scene"):
        scene = compose_scene(pack, split, i, size, seed)
        stem = f"{i:06d}"
        img_rel = f"images/{stem}.{image_format}"
        if image_format == "jpg":
            scene.image.save(tmp / img_rel, format="JPEG", quality=92)
        else:
            scene.image.save(tmp / img_rel, format="PNG", compress_level=6)
        mask_rel = f"masks/{stem}.png"
        Image.fromarray(scene.mask).convert("1").save(tmp / mask_rel, format="PNG", optimize=True)
        dist_rel = None
        if scene.distractor_masks:
            lab = np.zeros((size, size), np.uint8)
            for k, m in enumerate(scene.distractor_masks):
                lab[m] = k + 1
            dist_rel = f"distractors/{stem}.png"
            Image.fromarray(lab, "L").save(tmp / dist_rel, format="PNG", optimize=True)
        lines.append(json.dumps({
            "index": i, "file": img_rel, "mask": mask_rel, "distractor_mask": dist_rel, "label": scene.label,
            "class_name": pack.class_names[scene.label], "bbox": list(scene.bbox) if scene.bbox else None,
            "distractors": len(scene.distractor_masks),
            "distractor_names": [d["name"] for d in scene.info["distractors"]],
            "target_visible_px": scene.info["target"]["visible_px"], "background": scene.info["background"],
        }, sort_keys=True))
    (tmp / "index.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {"split": split, "size": size, "seed": seed, "count": n, "per_class": per_class,
            "image_format": image_format, "pack_hash": pack.pack_hash, "pack_version": pack.version,
            "scene_version": SCENE_VERSION,
            "class_names": pack.class_names, "distractor_names": pack.distractor_names}
    (tmp / "split.json").write_text(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class MaterializedSplit(Dataset):
    """A split written by `data build` (DIR/<split>/index.jsonl + images/masks); item i is a Scene."""

    def __init__(self, root: str | Path, split: str):
        _check_split(split)
        self.root = Path(root).expanduser() / split
        index = self.root / "index.jsonl"
        meta_path = self.root / "split.json"
        if not index.exists() or not meta_path.exists():
            raise CbamVizError(
                f"no materialized {split} split at {self.root} (index.jsonl or split.json missing): run "
                f"`python -m cbam_viz data build --out {Path(root)}`"
            )
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            self.records = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise CbamVizError(f"materialized {split} split at {self.root} is corrupt ({err}); run `data build` again") from None
        self.split = split
        self.class_names: list[str] = list(self.meta["class_names"])
        self.pack_hash: str = self.meta["pack_hash"]
        self.size: int = int(self.meta["size"])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r["label"] for r in self.records]

    def __getitem__(self, i: int) -> Scene:
        rec = self.records[i]
        try:
            with Image.open(self.root / rec["file"]) as f:
                image = f.convert("RGB")
            with Image.open(self.root / rec["mask"]) as f:
                mask = np.asarray(f.convert("L")) > 127
            dmasks: list[np.ndarray] = []
            if rec.get("distractor_mask"):
                with Image.open(self.root / rec["distractor_mask"]) as f:
                    lab = np.asarray(f.convert("L"))
                dmasks = [lab == k + 1 for k in range(rec["distractors"])]
        except OSError as err:
            raise CbamVizError(f"materialized {self.split} split at {self.root}: cannot read scene {i} ({err})") from None
        return Scene(image, mask, int(rec["label"]), dmasks, tuple(rec["bbox"]) if rec.get("bbox") else None, dict(rec))


# =============================================================================================================
# 8. Building the real pack from the Debian packages
# =============================================================================================================


def _plasma_attribution(source: str, root: Path) -> str:
    meta = root / PLASMA_DIR / source.split("/")[3] / "metadata.json"
    try:
        plugin = json.loads(meta.read_text(encoding="utf-8"))["KPlugin"]
        authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
        return f"{plugin.get('Name', '')} by {authors} ({plugin.get('License', 'see package copyright')})"
    except (OSError, KeyError, ValueError):
        return "see the package copyright"


def build_pack_from_debian(
    assets: dict[str, dict[str, str]],
    out: Path,
    seed: int = 0,
    max_classes: int | None = None,
    distractor_fraction: float = 0.18,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Select stamps and backgrounds from the extracted packages and write the pack to `out`; return a summary."""
    if not 0.05 <= distractor_fraction <= 0.5:
        raise CbamVizError("--distractor-fraction must be between 0.05 and 0.5")
    roots = {k: Path(v["root"]) for k, v in assets.items()}
    stamps_root = roots["tuxpaint-stamps-default"] / STAMPS_SUBDIR
    if not stamps_root.is_dir():
        raise CbamVizError(f"{stamps_root} not found: the tuxpaint-stamps-default package looks incomplete")
    judged = scan_stamps(stamps_root, progress)
    photos = [c for c in judged if c.accepted]
    log(f"stamps: {len(judged)} PNGs, {len(photos)} pass the real-photo rule")
    images = [prepare_object(c.path) for c in _progress(photos, progress, desc="preparing objects", unit="stamp")]
    groups = group_duplicates(images)
    subjects = []  # (base name, [photo indices])
    for g in groups:
        first = photos[g[0]]
        base = NAME_OVERRIDES.get(first.rel) or class_name_from_description(first.description, Path(first.rel).stem)
        subjects.append((base, g))
    by_name: dict[str, list[int]] = {}
    for si, (base, _) in enumerate(subjects):
        by_name.setdefault(base, []).append(si)
    names = sorted(by_name)
    rng = np.random.default_rng([int(seed) % (1 << 64), 1717])
    order = [names[i] for i in rng.permutation(len(names))]
    target_d = math.ceil(distractor_fraction * len(subjects))
    distractor_names: set[str] = set()
    n_d = 0
    for name in order:
        if n_d >= target_d:
            break
        distractor_names.add(name)
        n_d += len(by_name[name])
    class_bases = [n for n in order if n not in distractor_names]
    if max_classes is not None:
        if max_classes < 2:
            raise CbamVizError("--classes must be at least 2")
        class_bases = class_bases[:max_classes]

    def objects_for(bases: Iterable[str]) -> list[PackObject]:
        """One object per name; every photo of its subjects is a variant."""
        objs = []
        for base in sorted(bases):
            idx = sorted((i for si in by_name[base] for i in subjects[si][1]), key=lambda i: photos[i].rel)
            objs.append(PackObject(base, [images[i] for i in idx], [photos[i].rel for i in idx],
                                   photos[idx[0]].description, all(photos[i].mirror_ok for i in idx),
                                   "tuxpaint-stamps-default"))
        return objs

    classes = objects_for(class_bases)
    distractors = objects_for(distractor_names)

    # backgrounds
    bgs = []
    for cand in _progress(find_background_photos(roots), progress, desc="preparing backgrounds", unit="image"):
        img = prepare_background(Path(cand["path"]))
        std, lap = background_texture(img)
        if std < 10 or lap < 1.0:
            log(f"background {cand['name']}: skipped (flat or gradient: std {std:.1f}, laplacian {lap:.2f})")
            continue
        attribution = (_plasma_attribution(cand["source"], roots[cand["package"]])
                       if cand["package"] == "plasma-workspace-wallpapers" else "see the package copyright")
        bgs.append(PackBackground(cand["name"], img, cand["source"], cand["package"], attribution))
    counts = split_counts(len(bgs))
    perm = np.random.default_rng([int(seed) % (1 << 64), 4242]).permutation(len(bgs))
    shuffled = [bgs[i] for i in perm]
    split_bgs = {
        "test": sorted(shuffled[:counts["test"]], key=lambda b: b.name),
        "val": sorted(shuffled[counts["test"]:counts["test"] + counts["val"]], key=lambda b: b.name),
        "train": sorted(shuffled[counts["test"] + counts["val"]:], key=lambda b: b.name),
    }

    # attribution
    used = {"tuxpaint-stamps-default"} | {b.package for b in bgs}
    parts = [
        "CBAM Grad-CAM Studio stamp-scenes asset pack: license and attribution\n",
        "Every image in this pack is derived (cropped, rescaled, re-encoded) from the Debian packages below. "
        "Each package's copyright file follows verbatim; for Plasma wallpapers the author and license named in "
        "each wallpaper's own metadata.json are listed too. The stamps of tuxpaint-stamps-default are GPL-2+ "
        "(Copyright 2002-2022 Bill Kendrick and the Tux Paint contributors); the stamp files used are listed "
        "in manifest.json (classes[].sources, distractors[].sources).\n",
    ]
    for pkg in DEBIAN_PACKAGES:
        if pkg not in assets:
            continue
        note = "" if pkg in used else " (examined, no file used)"
        parts.append(f"\n{'=' * 78}\nPackage: {pkg} {assets[pkg]['version']}{note}\n{'=' * 78}\n")
        if pkg in used:
            if pkg == "plasma-workspace-wallpapers":
                parts.append("Wallpapers used:\n" + "".join(
                    f"  {b.source}: {b.attribution}\n" for b in bgs if b.package == pkg) + "\n")
            elif pkg != "tuxpaint-stamps-default":
                parts.append("Photos used (author and license per file in the copyright file below):\n" + "".join(
                    f"  {b.source}\n" for b in bgs if b.package == pkg) + "\n")
            copyright_file = roots[pkg] / "usr/share/doc" / pkg / "copyright"
            parts.append(copyright_file.read_text(encoding="utf-8", errors="replace") if copyright_file.exists()
                         else "(copyright file missing from the package)\n")
    rejected: dict[str, int] = {}
    for c in judged:
        if not c.accepted:
            rejected[c.reason] = rejected.get(c.reason, 0) + 1
    extra = {
        "sources": {pkg: assets[pkg]["version"] for pkg in sorted(assets)},
        "seed": int(seed),
        "selection": {"stamps_total": len(judged), "stamps_photo": len(photos), "subjects": len(subjects),
                      "rejected": dict(sorted(rejected.items())), "distractor_fraction": distractor_fraction,
                      "max_classes": max_classes},
    }
    pack_hash = write_pack(out, classes, distractors, split_bgs, "".join(parts), extra)
    return {"pack_hash": pack_hash, "classes": len(classes), "distractors": len(distractors),
            "photos": len(photos), "stamps": len(judged), "backgrounds": {s: len(v) for s, v in split_bgs.items()}}


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# =============================================================================================================
# 9. CLI
# =============================================================================================================


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`data build`: the asset pack and the fixed val/test splits."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    b = sub.add_parser(
        "build",
        help="download the Debian assets, write DIR/pack and the fixed DIR/val and DIR/test splits",
        description="Download tuxpaint-stamps-default and six wallpaper/photo packages with apt-get (cached), select "
        "real-photo stamps and backgrounds, write the asset pack to DIR/pack and materialize DIR/val and DIR/test. "
        "With --pack, reuse an existing asset pack instead (no download; e.g. on a machine without network).",
    )
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (pack/, val/, test/)")
    b.add_argument("--cache", default=str(DEFAULT_CACHE), metavar="DIR",
                   help="where the .deb files are downloaded and extracted (default: %(default)s)")
    b.add_argument("--pack", metavar="PATH", help="use this existing asset pack instead of building one")
    b.add_argument("--seed", type=int, default=0, help="seed for the class/distractor/background choice and the scenes")
    b.add_argument("--classes", type=int, default=None, metavar="N", help="at most N classes (default: all)")
    b.add_argument("--distractor-fraction", type=float, default=0.18,
                   help="share of the photo subjects held out as distractors (default: %(default)s)")
    b.add_argument("--test-per-class", type=int, default=20, help="test scenes per class (default: %(default)s)")
    b.add_argument("--val-per-class", type=int, default=5, help="val scenes per class (default: %(default)s)")
    b.add_argument("--size", type=int, default=224, help="side of the materialized scenes in px (default: %(default)s)")
    b.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                   help="image format of the materialized scenes (masks are always PNG; default: %(default)s)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "build":
        raise CbamVizError("usage: python -m cbam_viz data build --out DIR")
    return _run_build(args)


def _run_build(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    progress = not args.no_progress
    if args.test_per_class < 1 or args.val_per_class < 1:
        raise CbamVizError("--test-per-class and --val-per-class must be at least 1")
    if args.size < 32:
        raise CbamVizError("--size must be at least 32")
    pack_dir = out / "pack"
    if args.pack:
        src = AssetPack.load(args.pack)
        out.mkdir(parents=True, exist_ok=True)
        if src.root.resolve() != pack_dir.resolve():
            tmp = out / ".pack.copy"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src.root, tmp)
            shutil.rmtree(pack_dir, ignore_errors=True)
            tmp.rename(pack_dir)
        print(f"using asset pack {src.root} ({src.pack_hash[:12]})", file=sys.stderr)
    else:
        out.mkdir(parents=True, exist_ok=True)
        assets = fetch_debian_assets(Path(args.cache), log=lambda m: print(m, file=sys.stderr))
        summary = build_pack_from_debian(assets, pack_dir, seed=args.seed, max_classes=args.classes,
                                         distractor_fraction=args.distractor_fraction, progress=progress,
                                         log=lambda m: print(m, file=sys.stderr))
        print(f"pack: {summary['classes']} classes, {summary['distractors']} distractors, backgrounds "
              + ", ".join(f"{k} {v}" for k, v in summary["backgrounds"].items()), file=sys.stderr)
    pack = AssetPack.load(pack_dir)
    for split, per_class in (("val", args.val_per_class), ("test", args.test_per_class)):
        materialize_split(pack, out, split, per_class, args.size, args.seed, args.image_format, progress)
    size_mb = _dir_size(pack_dir) / 1e6
    print(f"asset pack: {pack_dir} ({size_mb:.1f} MB, version {pack.version}, hash {pack.pack_hash})")
    print(f"classes: {pack.n_classes}, distractors: {len(pack.distractor_names)}, backgrounds: "
          + ", ".join(f"{s} {len(pack.backgrounds[s])}" for s in SPLITS))
    print(f"val: {args.val_per_class * pack.n_classes} scenes, test: {args.test_per_class * pack.n_classes} scenes "
          f"({args.size} px) in {out}")
    return 0
