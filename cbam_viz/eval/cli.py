"""`python -m cbam_viz eval`: accuracy and Grad-CAM localization of both models on the stamp-scenes test split, or
on a folder of photos (`--data DIR` with DIR/<split>/<class>/<image>, see `cbam_viz.eval.photos`).

Per model: top-1, top-5, mean softmax P of the true class, pointing game (the CAM of the true class peaks less than
15 px from the object at 224 px, scaled to the scene size; also as TorchRay's mean of per-class accuracies), energy
in mask, and how often the peak lands on a distractor object instead. Prints a side-by-side table with the paired
difference of CBAM from the baseline (a bootstrap interval, and McNemar's test for 0/1 metrics), the same by object
size (thirds of the scenes by the object's share of the image: a coarse CAM's single peak misses small objects most
easily), the familiarity score's distribution where the checkpoints carry a detector, writes JSON and a
Sec. 4.3-style figure. `--road` adds grad-cam's ROAD faithfulness score of each model's own CAM
(`cbam_viz.eval.faithfulness`) on either data source; `--attention-effects` adds what knocking out each stage's
CBAM gates does to the CBAM model (`cbam_viz.eval.knockouts`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cbam_viz.data.annotations import ORIENTATION_FRAMES
from cbam_viz.errors import CbamVizError
from cbam_viz.eval.photos import run_photos
from cbam_viz.eval.scenes import run_stamps
from cbam_viz.io.checkpoints import load_pair
from cbam_viz.nn.cbam import NEUTRALS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, type=Path,
        help="dataset folder written by `data build`, or a photo folder DIR with DIR/<split>/<class>/<image>",
    )
    parser.add_argument("--split", help="split to evaluate (default: test for stamp scenes, val for photos)")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument(
        "--boxes", type=Path,
        help="photos: ground-truth boxes, a folder of VOC .xml files, a COCO .json or ImageNet's LOC_val_solution.csv",
    )
    boxes.add_argument("--masks", type=Path, help="photos: a folder of PNG masks mirroring the photos' paths")
    parser.add_argument(
        "--annotation-frame", choices=ORIENTATION_FRAMES, default="auto",
        help="photos stored with an EXIF orientation: their boxes/masks were drawn on the stored pixels (stored), "
        "on the photo as shown (upright), or tell by the annotation's recorded size, else stored (auto, default)",
    )
    parser.add_argument(
        "--preprocess", choices=["center", "whole"],
        help="photos: center crop (shorter side to 256/224 of the input, central square; default) or whole-image "
        "resize",
    )
    parser.add_argument("--road", action="store_true", help="also score each CAM's faithfulness with ROAD (slow)")
    parser.add_argument(
        "--attention-effects", nargs="?", const="mean", choices=NEUTRALS, metavar="NEUTRAL",
        help="also knock out each stage's spatial and channel attention of the CBAM model(s): the change of P, top-1, "
        "pointing and energy; each gate is replaced by its per-image mean (mean, default) or its value at "
        "initialisation (init)",
    )
    parser.add_argument("--baseline", type=Path, help="baseline checkpoint (default: bundled)")
    parser.add_argument("--cbam", type=Path, help="CBAM checkpoint (default: bundled)")
    parser.add_argument("--out", type=Path, default=Path("runs/eval"), help="folder for eval.json and the figure")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="evaluate only the first N scenes (quick checks)")
    parser.add_argument("--figure-rows", type=int, default=6, help="scenes in the Sec. 4.3-style figure")
    parser.add_argument(
        "--input-size", type=int,
        help="feed both networks this side in px instead of the one each was trained at (e.g. 224 for 160 px "
        "checkpoints: a 7x7 instead of a 5x5 final map)",
    )
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    if args.input_size is not None and args.input_size < 32:
        raise CbamVizError(f"--input-size must be at least 32 px: ResNet50 downsamples by 32 (got {args.input_size})")
    source, args.split = data_source(args.data, args.split)
    if source == "photos":
        return run_photos(args, load_pair(args.baseline, args.cbam, args.device))
    if args.boxes or args.masks or args.preprocess:
        raise CbamVizError("--boxes, --masks and --preprocess are for photo folders: stamp scenes carry their masks")
    return run_stamps(args)


def data_source(data: Path, split: str | None) -> tuple[str, str]:
    """("stamps" or "photos", split): a split folder with index.jsonl or split.json is stamp scenes (default split
    test), one without is a photo folder DIR/<split>/<class>/<image> (default split val)."""
    if split is None:
        photos = (data / "val").is_dir() and not is_stamp_split(data / "val") and not is_stamp_split(data / "test")
        split = "val" if photos else "test"
    folder = data / split
    if not folder.is_dir():
        raise CbamVizError(
            f"no {split} split in {data}: expected stamp scenes ({folder}/index.jsonl, written by `data build`) or "
            f"photos ({folder}/<class>/<image>)"
        )
    return ("stamps" if is_stamp_split(folder) else "photos"), split


def is_stamp_split(folder: Path) -> bool:
    """Whether `folder` is a split written by `data build` (it has index.jsonl or split.json)."""
    return (folder / "index.jsonl").exists() or (folder / "split.json").exists()
