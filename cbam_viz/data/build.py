"""`python -m cbam_viz data build`: the stamp-scenes asset pack from the Debian packages, and its fixed splits.

`python -m cbam_viz data build --out DIR` downloads seven Debian packages (into `--cache`), selects the
assets, writes a compact versioned **asset pack** to `DIR/pack/` and materializes the fixed `DIR/val/` and
`DIR/test/` splits. Training scenes are composed on the fly from the pack (`SceneDataset`).

Sources (GPL-2+, CC-BY-4.0, CC-BY-SA-3.0/4.0, CC0; attribution in `pack/LICENSE-ATTRIBUTION.txt`):

* objects: `tuxpaint-stamps-default` (`usr/share/tuxpaint/stamps/**.png`, RGBA cutouts, each with a `.txt`
  whose first line is the English description);
* backgrounds: `mate-backgrounds`, `plasma-workspace-wallpapers`, the photo templates of `tuxpaint-data` and the
  photos among `lomiri-wallpapers-16.04` / `-20.04` (`gnome-backgrounds` is downloaded and examined too, but every
  wallpaper in it is a generated pattern or gradient, so none is used).

The steps live in the modules of `cbam_viz.data`: `debian` (download and extract), `stamps` (which stamps are
photos, their names), `backgrounds` (which wallpapers), `pack` (the asset pack), `scenes` (composing a scene) and
`splits` (the materialized val / test splits).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from cbam_viz.data import stamp_imagefolder
from cbam_viz.data.backgrounds import (
    PLASMA_DIR,
    background_texture,
    find_background_photos,
    prepare_background,
    split_counts,
)
from cbam_viz.data.debian import DEBIAN_PACKAGES, DEFAULT_CACHE, fetch_debian_assets
from cbam_viz.data.pack import SPLITS, AssetPack, PackBackground, PackObject, write_pack
from cbam_viz.data.progress import progress_bar
from cbam_viz.data.splits import materialize_split
from cbam_viz.data.stamps import (
    NAME_OVERRIDES,
    STAMPS_SUBDIR,
    StampCandidate,
    class_name_from_description,
    group_duplicates,
    prepare_object,
    scan_stamps,
)
from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import atomic_dir


def _plasma_attribution(source: str, root: Path) -> str:
    """A Plasma wallpaper's name, authors and license, from its own metadata.json."""
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
    classes, distractors, n_subjects = _stamp_objects(photos, seed, max_classes, distractor_fraction, progress)
    bgs = _backgrounds(roots, progress, log)
    counts = split_counts(len(bgs))
    perm = np.random.default_rng([int(seed) % (1 << 64), 4242]).permutation(len(bgs))
    shuffled = [bgs[i] for i in perm]
    split_bgs = {
        "test": sorted(shuffled[:counts["test"]], key=lambda b: b.name),
        "val": sorted(shuffled[counts["test"]:counts["test"] + counts["val"]], key=lambda b: b.name),
        "train": sorted(shuffled[counts["test"] + counts["val"]:], key=lambda b: b.name),
    }
    rejected: dict[str, int] = {}
    for c in judged:
        if not c.accepted:
            rejected[c.reason] = rejected.get(c.reason, 0) + 1
    extra = {
        "sources": {pkg: assets[pkg]["version"] for pkg in sorted(assets)},
        "seed": int(seed),
        "selection": {"stamps_total": len(judged), "stamps_photo": len(photos), "subjects": n_subjects,
                      "rejected": dict(sorted(rejected.items())), "distractor_fraction": distractor_fraction,
                      "max_classes": max_classes},
    }
    pack_hash = write_pack(out, classes, distractors, split_bgs, _attribution(assets, roots, bgs), extra)
    return {"pack_hash": pack_hash, "classes": len(classes), "distractors": len(distractors),
            "photos": len(photos), "stamps": len(judged), "backgrounds": {s: len(v) for s, v in split_bgs.items()}}


def _stamp_objects(
    photos: list[StampCandidate], seed: int, max_classes: int | None, distractor_fraction: float, progress: bool
) -> tuple[list[PackObject], list[PackObject], int]:
    """The photo stamps as (classes, distractors, number of subjects): near-duplicates are one subject, subjects
    of one name one object, and about `distractor_fraction` of the subjects, chosen by name, are distractors."""
    images = [prepare_object(c.path) for c in progress_bar(photos, progress, desc="preparing objects", unit="stamp")]
    subjects = []  # (base name, [photo indices])
    for g in group_duplicates(images):
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

    return objects_for(class_bases), objects_for(distractor_names), len(subjects)


def _backgrounds(roots: dict[str, Path], progress: bool, log: Callable[[str], None]) -> list[PackBackground]:
    """The candidate photo wallpapers that have texture, prepared at the pack's size, with their attribution."""
    bgs = []
    for cand in progress_bar(find_background_photos(roots), progress, desc="preparing backgrounds", unit="image"):
        img = prepare_background(Path(cand["path"]))
        std, lap = background_texture(img)
        if std < 10 or lap < 1.0:
            log(f"background {cand['name']}: skipped (flat or gradient: std {std:.1f}, laplacian {lap:.2f})")
            continue
        attribution = (_plasma_attribution(cand["source"], roots[cand["package"]])
                       if cand["package"] == "plasma-workspace-wallpapers" else "see the package copyright")
        bgs.append(PackBackground(cand["name"], img, cand["source"], cand["package"], attribution))
    return bgs


def _attribution(assets: dict[str, dict[str, str]], roots: dict[str, Path], bgs: list[PackBackground]) -> str:
    """LICENSE-ATTRIBUTION.txt: what was used from each package, and each package's copyright file verbatim."""
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
    return "".join(parts)


def _dir_size(path: Path) -> int:
    """Bytes of all files below `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


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
    stamp_imagefolder.add_arguments(sub)


def run(args: argparse.Namespace) -> int:
    """CLI entry point of `python -m cbam_viz data`."""
    command = getattr(args, "data_command", None)
    if command == "imagefolder":
        return stamp_imagefolder.run(args)
    if command != "build":
        raise CbamVizError("usage: python -m cbam_viz data build --out DIR | data imagefolder --from DIR --out OUT")
    return _run_build(args)


def _run_build(args: argparse.Namespace) -> int:
    """`data build`: the pack (built, or copied with --pack), then the materialized val and test splits."""
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
            with atomic_dir(pack_dir) as tmp:
                shutil.copytree(src.root, tmp, dirs_exist_ok=True)
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
