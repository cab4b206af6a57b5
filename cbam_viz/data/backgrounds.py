"""Selecting the photo wallpapers that stamp scenes are composed on.

Backgrounds: the photos in `mate-backgrounds`' `nature/` folder, the photographic Plasma wallpapers in
`PLASMA_PHOTOS` and Lomiri wallpapers in `LOMIRI_PHOTOS` (the others are renders/abstract art, checked by eye on
contact sheets), and Tux Paint's photo templates except `TUXPAINT_TEMPLATES_EXCLUDED` (photos whose main subject
is a stamp subject). Lomiri photos whose main subject is a stamp subject (dogs, a bird, paintbrushes) are left out
for the same reason. Each must also have texture (luma std >= 10, mean |Laplacian| >= 1 on a 400 px thumbnail:
rules out flat or gradient images). Each wallpaper goes whole to exactly one of train / val / test, so test
backgrounds are never seen in training.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from cbam_viz.data.pack import slug
from cbam_viz.errors import CbamVizError

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


BACKGROUND_SHORT_SIDE = 448
BACKGROUND_MAX_LONG = 800


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
                found.append({"name": f"mate-{slug(path.stem)}", "package": "mate-backgrounds", "path": str(path),
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
                found.append({"name": f"plasma-{slug(name)}", "package": "plasma-workspace-wallpapers",
                              "path": str(best[1]), "source": best[1].relative_to(plasma).as_posix()})
    tuxpaint = roots.get("tuxpaint-data")
    if tuxpaint is not None:
        for path in sorted((Path(tuxpaint) / TUXPAINT_TEMPLATES_DIR).glob("*.jpg")):
            if path.stem not in TUXPAINT_TEMPLATES_EXCLUDED:
                found.append({"name": f"tuxpaint-{slug(path.stem)}", "package": "tuxpaint-data", "path": str(path),
                              "source": path.relative_to(tuxpaint).as_posix()})
    for package, stems in LOMIRI_PHOTOS.items():
        root = roots.get(package)
        for stem in stems if root is not None else ():
            path = Path(root) / LOMIRI_DIR / f"{stem}.jpg"
            if path.is_file():
                found.append({"name": f"lomiri-{slug(stem.split('_by_')[0])}", "package": package,
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
