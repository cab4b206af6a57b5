"""Batch export: Grad-CAM overlays (and raw CAMs) of both models for files, folders or globs, with a manifest.

    python -m cbam_viz export photos/ 'more/**/*.jpg' --out cams/ [--shard K/N] [--save-raw] ...

Outputs go to `<out>/<model>/<id>.png` (and `.npy` with --save-raw), where `<id>` is the image's path relative
to the common root of the inputs with every folder and file name sanitised (so nothing can leave --out), and a
short hash of the original relative path appended whenever sanitising changed a name or two names would
collide (same stem, case-insensitive file systems). Every file is written atomically; each finished image's
rows are appended, fsync'd, to a journal (the hidden `.manifest.progress.jsonl`, removed when the run finishes;
with sharding, the shard's `manifest.shard-K-of-N.jsonl`); `manifest.jsonl` and `manifest.csv` are (re)generated
from the manifest and all journals at the end (see `cbam_viz.export.merge`). A rerun skips every (image, model)
whose row says it succeeded with the same settings and whose files exist, so a killed run resumes where it
stopped; unreadable images become error rows and are retried on the next run. Files in input folders without an
image extension are skipped, and the closing summary line counts and names them.

`--shard K/N` (or RANK/WORLD_SIZE under torchrun) exports images K, K+N, K+2N, ... of the sorted input list,
so a Slurm array, a Kubernetes indexed job or torchrun ranks each run the same command into one --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbam_viz.cam.engine import LAYERS, METHODS, check_method_layer
from cbam_viz.cam.render import COLORMAPS, check_colormap
from cbam_viz.cli import standalone
from cbam_viz.devices import resolve_device
from cbam_viz.errors import CbamVizError
from cbam_viz.export.batch import DEFAULT_MAX_SIDE, Settings, export, load_models, parse_models, parse_shard
from cbam_viz.export.discover import find_inputs
from cbam_viz.io.checkpoints import MODEL_KEYS
from cbam_viz.io.weights import BUNDLED, WEIGHTS_ENV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reruns resume)")
    parser.add_argument("--method", default="gradcam", help=f"CAM method: {', '.join(METHODS)} (default gradcam)")
    parser.add_argument("--layer", default="layer4", help=f"layer to explain: {', '.join(LAYERS)} (default layer4)")
    parser.add_argument("--target", default="top1", help="class to explain: top1, a class name or an index")
    parser.add_argument("--models", default=",".join(MODEL_KEYS), help="which models: baseline,cbam (default both)")
    for key in MODEL_KEYS:
        bundled = f"the bundled {BUNDLED[key].file_name}, looked for in ${WEIGHTS_ENV}, then the checkout's weights/"
        parser.add_argument(f"--{key}", metavar="PATH", help=f"{key} checkpoint (default: {bundled})")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--size", type=int, help=f"overlays' max side (default: the image's, at most {DEFAULT_MAX_SIDE})"
    )
    parser.add_argument("--opacity", type=float, default=0.5, help="heatmap opacity 0..1 (default 0.5)")
    parser.add_argument("--colormap", default="jet", help=f"matplotlib colormap, e.g. {', '.join(COLORMAPS)}")
    parser.add_argument("--save-raw", action="store_true", help="also save each raw CAM as .npy (T, h, w) float32")
    parser.add_argument(
        "--shard", metavar="K/N", help="export only slice K of N (default: RANK/WORLD_SIZE under torchrun, else all)"
    )
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> Settings:
    method, layer = check_method_layer(args.method, args.layer)
    if args.batch_size < 1:
        raise CbamVizError("--batch-size must be at least 1")
    if args.workers < 1:
        raise CbamVizError("--workers must be at least 1")
    if args.size is not None and args.size < 1:
        raise CbamVizError("--size must be a positive number of pixels")
    if not 0.0 <= args.opacity <= 1.0:
        raise CbamVizError("--opacity must be between 0 and 1")
    check_colormap(args.colormap)
    return Settings(
        method=method,
        layer=layer,
        target=str(args.target),
        max_side=args.size or DEFAULT_MAX_SIDE,
        opacity=args.opacity,
        colormap=args.colormap,
        save_raw=args.save_raw,
        batch_size=args.batch_size,
        workers=args.workers,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    shard = parse_shard(args.shard)
    keys = parse_models(args.models)
    device = resolve_device(args.device)
    items, skipped = find_inputs(args.inputs, exclude=args.out)  # bad inputs fail before the models load
    models = load_models(keys, {"baseline": args.baseline, "cbam": args.cbam}, device, settings)
    try:
        summary = export(items, args.out, models, settings, shard, progress=not args.no_progress)
    except OSError as err:  # disk full, read-only or vanished output folder: finished work stays, none half-written
        reason = err.strerror or str(err)
        raise CbamVizError(
            f"cannot write the export to {args.out}: {reason}. Images already finished are complete and kept; "
            "nothing half-written is left. Free space or fix the folder, then rerun the same command to continue."
        ) from None
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    counts = [
        f"{summary.exported - summary.errors} image(s) exported{where}",
        f"{summary.skipped} already done",
        f"{summary.errors} unreadable (error rows in the manifest; retried on the next run)",
    ]
    if skipped:
        counts.append(skipped.describe())
    print(f"{', '.join(counts)} -> {Path(args.out)}")
    if shard[1] > 1 and not summary.merged:
        print(f"when every shard has finished: python -m cbam_viz merge {Path(args.out)}")
    if summary.exported and summary.errors == summary.exported and not summary.skipped:
        print(
            f"error: none of the {summary.errors} input image(s) could be read; the manifest's error column says why",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`export` on its own, with the CLI's error handling (tests; `python -m cbam_viz.export.cli`)."""
    return standalone(sys.modules[__name__], argv, "python -m cbam_viz export")


if __name__ == "__main__":
    sys.exit(main())
