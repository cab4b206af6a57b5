"""`eval` on a folder of photos (an ImageFolder split, DIR/<split>/<class>/<image>): accuracy for every photo,
Grad-CAM localization where boxes or masks exist.

Each photo is brought into one square frame (`cbam_viz.eval.framing`: center crop or whole-image resize) and shown to
both networks; the true class's CAM, upsampled to the frame, is scored against the ground truth carried into the
same frame: pointing game and energy inside the true class's boxes (or mask), and the Grad-CAM paper's
localization (IoU >= 0.5 of the CAM's box with a true-class box), also with top-1 right. Photos without an
annotation, or whose true-class boxes the crop cuts away, count for accuracy only.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cbam_viz.cam.engine import run_models
from cbam_viz.data.annotations import SWAPS_AXES, Annotations, ImageAnnotation, load_annotations
from cbam_viz.data.imagefolder import PhotoSplit, open_split, unreadable_line
from cbam_viz.errors import CbamVizError
from cbam_viz.eval.faithfulness import ROAD_METRIC, road_cost, road_for_batch
from cbam_viz.eval.framing import describe, frame_boxes, frame_image, frame_mask
from cbam_viz.eval.knockouts import attach_effects, report_effects
from cbam_viz.eval.metrics import box_mask, energy_in_mask, localized, mask_boxes, pointing_hit
from cbam_viz.eval.report import figure_rows, format_class_means, format_table, pointing_class_means, write_outputs
from cbam_viz.eval.stats import paired_differences
from cbam_viz.io.checkpoints import LoadedModel, preview_names
from cbam_viz.io.images import ImageError, stored_orientation

ACCURACY_METRICS = (
    ("top1", "top-1 accuracy"),
    ("top5", "top-5 accuracy"),
    ("mean_p_true", "mean P(true class)"),
)
LOCALIZATION_METRICS = (
    ("pointing", "pointing game (true class)"),
    ("energy", "energy in boxes / mask"),
    ("localization", "localization (IoU >= 0.5)"),
    ("top1_localization", "top-1 localization"),
)
PHOTO_BINARY = frozenset({"top1", "top5", "pointing", "localization", "top1_localization"})
GroundTruth = tuple[np.ndarray, list[tuple[float, float, float, float]]]  # (mask, boxes) in the frame


@dataclass
class PhotoSamples:
    """The photos of one split of a photo folder, keyed as annotations find them."""

    split: PhotoSplit

    def __len__(self) -> int:
        return len(self.split)

    @property
    def root(self) -> Path:
        return self.split.root / self.split.name

    @property
    def class_names(self) -> list[str]:
        return self.split.class_names

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.split.samples]

    def key(self, i: int) -> str:
        """The photo's path under the split folder without extension: how annotations find it."""
        return PurePosixPath(self.split.samples[i].rel).with_suffix("").as_posix()

    def image(self, i: int) -> Image.Image:
        return self.split.load(i)

    def upright_annotation(self, i: int, annotation: ImageAnnotation, image: Image.Image, frame: str
                           ) -> ImageAnnotation | None:
        """Photo i's annotation turned as the loader turned the photo by its EXIF orientation (`frame`: the
        annotations module's frame rule), or None when it needs no turn."""
        orientation, stored = stored_orientation(self.split.samples[i].path)
        if orientation in SWAPS_AXES and image.size != (stored[1], stored[0]):
            return None  # the loader could not apply this orientation (unreadable EXIF block): pixels as stored
        return annotation.upright(orientation, stored, frame)


def photo_samples(data: Path, split: str) -> PhotoSamples:
    """The photos of split `split` of the photo folder `data` (ImageFolder or ImageNet's flat layout)."""
    return PhotoSamples(open_split(data, split))


def readable(samples: PhotoSamples, indices: range, unreadable: list[str]) -> list[tuple[int, Image.Image]]:
    """(index, image) of the photos among `indices` that decode; the others' "path (reason)" go to `unreadable`."""
    loaded = []
    for i in indices:
        try:
            loaded.append((i, samples.image(i)))
        except ImageError as err:
            unreadable.append(f"{samples.split.samples[i].rel} ({err})")
    return loaded


def checkpoint_labels(samples: PhotoSamples, models: dict[str, LoadedModel]) -> list[int]:
    """Each dataset class's index in the checkpoints (which must share one class list holding every folder)."""
    names = {key: loaded.meta.class_names for key, loaded in models.items()}
    if names["baseline"] != names["cbam"]:
        raise CbamVizError("the baseline and CBAM checkpoints have different class lists: they cannot be compared")
    missing = [name for name in samples.class_names if name not in names["baseline"]]
    if missing:
        raise CbamVizError(
            f"{len(missing)} class folder(s) of {samples.root} are not classes of the checkpoints "
            f"({preview_names(missing)}); the checkpoints know {preview_names(names['baseline'])}"
        )
    return [names["baseline"].index(name) for name in samples.class_names]


def ground_truth(
    annotation: ImageAnnotation | None, image: Image.Image, name: str, box_names: set[str], mode: str, side: int
) -> GroundTruth | None:
    """The true class's mask and boxes in the frame, or None where there are none (not annotated, or cropped away);
    `name` is the photo's key, for messages; boxes named by any of `box_names` (readable name, folder id) count."""
    if annotation is None:
        return None
    if annotation.mask is not None:
        if annotation.mask.shape != (image.height, image.width):
            raise CbamVizError(f"the mask of {name} is {annotation.mask.shape[1]}x{annotation.mask.shape[0]} px but "
                               f"the photo is {image.width}x{image.height} px")
        mask = frame_mask(annotation.mask, mode, side)
        return (mask, mask_boxes(mask)) if mask.any() else None
    own = [b for b in annotation.boxes_at(image.size) if b[0] in box_names]
    boxes = [tuple(b[1:]) for b in frame_boxes(own, image.size, mode, side)]
    if not boxes:
        return None
    return np.logical_or.reduce([box_mask(b, (side, side)) for b in boxes]), boxes


def photo_scores(probs: np.ndarray, heatmap: np.ndarray, label: int, truth: GroundTruth | None) -> dict[str, float]:
    """One model on one photo: accuracy metrics, and localization metrics where the ground truth is known."""
    order = np.argsort(-probs, kind="stable")
    scores = {"top1": float(order[0] == label), "top5": float(label in order[:5]), "mean_p_true": float(probs[label])}
    if truth is not None:
        mask, boxes = truth
        hit = localized(heatmap, boxes)
        scores.update(pointing=float(pointing_hit(heatmap, mask)), energy=energy_in_mask(heatmap, mask),
                      localization=float(hit), top1_localization=float(hit and scores["top1"] == 1.0))
    return scores


def evaluate_photos(
    samples: PhotoSamples,
    models: dict[str, LoadedModel],
    annotations: Annotations | None,
    frame: tuple[str, int],
    batch_size: int = 32,
    limit: int | None = None,
    input_size: int | None = None,
    road: bool = False,
    orientation_frame: str = "auto",
    attention_effects: str | None = None,
) -> dict:
    """Score both models on the photos (`frame` = (preprocessing, side)); per-photo records plus annotation counts.
    Annotations of EXIF-turned photos are turned with them (`orientation_frame`: see the annotations module).
    `attention_effects` (a neutral value of `knock_out`) adds each CBAM model's knock-outs to the records."""
    count = len(samples) if limit is None else min(limit, len(samples))
    if count <= 0:
        raise CbamVizError(f"no photos to evaluate in {samples.root}")
    labels = checkpoint_labels(samples, models)
    class_set = set(samples.class_names) | set(samples.split.classes)
    stats = {"annotated": 0, "no_annotation": 0, "no_box_in_frame": 0, "boxes_of_unknown_classes": 0,
             "turned_with_exif": 0}
    road_seconds = effects_seconds = 0.0
    records, unreadable = [], []
    for start in tqdm(range(0, count, batch_size), desc="eval", unit="batch"):
        loaded = readable(samples, range(start, min(start + batch_size, count)), unreadable)
        if not loaded:
            continue
        indices, images = [i for i, _ in loaded], [image for _, image in loaded]
        frames = [frame_image(im, *frame) for im in images]
        targets = [labels[samples.labels[i]] for i in indices]
        comparisons = run_models(frames, models, max_side=None, image_targets=targets, input_size=input_size)
        road_by_model, seconds = road_for_batch(models, frames, comparisons, input_size) if road else ({}, 0.0)
        road_seconds += seconds
        masks = []
        for j, (i, image, comparison) in enumerate(zip(indices, images, comparisons)):
            class_name = samples.class_names[samples.labels[i]]
            box_names = {class_name, samples.split.classes[samples.labels[i]]}  # readable name or folder id/synset
            annotation = annotations.lookup(samples.key(i)) if annotations else None
            if annotation is not None and (turned := samples.upright_annotation(i, annotation, image,
                                                                                orientation_frame)):
                annotation = turned
                stats["turned_with_exif"] += 1
            truth = ground_truth(annotation, image, samples.key(i), box_names, *frame)
            count_annotation(stats, annotation, truth, class_set)
            masks.append(None if truth is None else truth[0])
            record = {"index": i, "file": samples.key(i), "label": class_name, "annotated": truth is not None}
            for key, res in comparison.results.items():
                record[key] = photo_scores(res.probs, res.heatmaps[0], targets[j], truth)
                if road:
                    record[key]["road"] = float(road_by_model[key][j])
            records.append(record)
        if attention_effects:
            effects_seconds += attach_effects(records[-len(frames):], models, frames, targets, masks, input_size,
                                              attention_effects)
    if not records:
        raise CbamVizError(f"none of the {count} photos in {samples.root} could be read")
    return {"count": len(records), "annotations": stats, "images": records, "road_seconds": road_seconds,
            "effects_seconds": effects_seconds, "unreadable": unreadable}


def count_annotation(stats: dict, annotation: ImageAnnotation | None, truth: GroundTruth | None, classes: set) -> None:
    """Tally one photo's annotation: used, missing, or with no box of its class in the frame."""
    if annotation is None:
        stats["no_annotation"] += 1
    elif truth is None:
        stats["no_box_in_frame"] += 1
    else:
        stats["annotated"] += 1
    if annotation is not None:
        stats["boxes_of_unknown_classes"] += sum(b[0] not in classes for b in annotation.boxes)


def compare_photos(records: list[dict], road: bool) -> tuple[dict, dict, tuple[tuple[str, str], ...]]:
    """Each model's mean of every metric and the paired difference CBAM − baseline: accuracy (and ROAD) over all
    photos, localization over the annotated ones. Returns (summary, paired, table rows)."""
    groups = [(ACCURACY_METRICS + ((ROAD_METRIC,) if road else ()), records),
              (LOCALIZATION_METRICS, [r for r in records if r["annotated"]])]
    summary: dict[str, dict[str, float]] = {"baseline": {}, "cbam": {}}
    paired, rows = {}, ()
    for metrics, subset in groups:
        if not subset:
            continue
        names = [name for name, _ in metrics]
        paired.update(paired_differences(subset, names, PHOTO_BINARY))
        for key, values in summary.items():
            values.update({name: float(np.mean([r[key][name] for r in subset])) for name in names})
        rows += metrics
    return summary, paired, rows


def run_photos(args: argparse.Namespace, models: dict[str, LoadedModel]) -> int:
    """`eval` on a photo folder: the table (accuracy on every photo, localization on the annotated), JSON, figure."""
    samples = photo_samples(args.data, args.split)
    annotations = load_annotations(args.boxes, args.masks) if args.boxes or args.masks else None
    frame = (args.preprocess or "center", args.input_size or max(m.meta.input_size for m in models.values()))
    started = time.perf_counter()
    with torch.inference_mode():
        result = evaluate_photos(samples, models, annotations, frame, args.batch_size, args.limit, args.input_size,
                                 args.road, args.annotation_frame, args.attention_effects)
    summary, paired, rows = compare_photos(result["images"], args.road)
    annotated = [record for record in result["images"] if record["annotated"]]
    class_means = pointing_class_means(annotated) if annotated else None
    names = {key: loaded.meta.display_name for key, loaded in models.items()}
    stats = result["annotations"]
    input_sizes = {key: args.input_size or loaded.meta.input_size for key, loaded in models.items()}
    print(f"{args.split} split of {args.data}: {result['count']} photos, {len(samples.class_names)} classes; "
          f"preprocessing: {describe(*frame)}; input " + " / ".join(f"{s} px" for s in input_sizes.values()))
    if result["unreadable"]:
        print(unreadable_line(f"{args.split} split", result["unreadable"], "left out"))
    print(annotation_line(annotations, stats, result["count"]))
    print(format_table(summary, names, paired, rows, unit="images"))
    if class_means:
        print(format_class_means(class_means, names))
    if args.road:
        print(road_cost(result["count"], len(models), result["road_seconds"]))
    report = {
        "data": str(args.data), "split": args.split, "count": result["count"], "classes": samples.class_names,
        "preprocessing": {"mode": frame[0], "side": frame[1], "description": describe(*frame)},
        "annotations": {"kind": annotations.kind, "source": str(annotations.source), **stats} if annotations else None,
        "checkpoints": {key: loaded.meta.source for key, loaded in models.items()},
        "input_size": input_sizes,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "pointing_class_mean": class_means,
        "cbam_minus_baseline": {metric: asdict(diff) for metric, diff in paired.items()},
        "images": result["images"],
        "unreadable": result["unreadable"],
    }
    if args.attention_effects:
        report["attention_effects"] = report_effects(result["images"], models, args.attention_effects,
                                                     result["effects_seconds"], unit="images")
    labels = checkpoint_labels(samples, models)
    evaluated = [record["index"] for record in result["images"]]
    chosen = [evaluated[k] for k in figure_rows([samples.labels[i] for i in evaluated], args.figure_rows)]
    write_outputs(args.out, report, [frame_image(samples.image(i), *frame) for i in chosen],
                  [labels[samples.labels[i]] for i in chosen], models, args.input_size)
    return 0


def annotation_line(annotations: Annotations | None, stats: dict, count: int) -> str:
    """How many photos the localization rows are measured on, and why the others are not."""
    if annotations is None:
        return "localization: not measured (no --boxes or --masks given)"
    line = (f"annotations ({annotations.kind}, {annotations.source}): {stats['annotated']} of {count} photos "
            f"localized against them; {stats['no_annotation']} have no annotation, {stats['no_box_in_frame']} no "
            f"box or mask of their class inside the frame")
    unknown, turned = stats["boxes_of_unknown_classes"], stats["turned_with_exif"]
    line += f"; {unknown} boxes name no class of the folder" if unknown else ""
    return line + (f"; {turned} turned with their photo's EXIF orientation" if turned else "")
