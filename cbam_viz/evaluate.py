"""`python -m cbam_viz eval`: accuracy and Grad-CAM localization of both models on the stamp-scenes test split, or
on a folder of photos (`--data DIR` with DIR/<split>/<class>/<image>, see `cbam_viz.photo_eval`).

Per model: top-1, top-5, mean softmax P of the true class, pointing game (the CAM of the true class peaks less than
15 px from the object at 224 px, scaled to the scene size; also as TorchRay's mean of per-class accuracies), energy
in mask, and how often the peak lands on a distractor object instead. Prints a side-by-side table with the paired
difference of CBAM from the baseline (a bootstrap interval, and McNemar's test for 0/1 metrics), the same by object
size (thirds of the scenes by the object's share of the image: a coarse CAM's single peak misses small objects most
easily), the familiarity score's distribution where the checkpoints carry a detector, writes JSON and a
Sec. 4.3-style figure. `--road` adds grad-cam's ROAD faithfulness score of each model's own CAM
(`cbam_viz.faithfulness`) on either data source.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cbam_viz.cam import run_models
from cbam_viz.checkpoints import LoadedModel, load_pair
from cbam_viz.data.annotations import ORIENTATION_FRAMES
from cbam_viz.errors import CbamVizError
from cbam_viz.faithfulness import ROAD_METRIC, road_cost, road_for_batch
from cbam_viz.fileio import atomic_write_bytes
from cbam_viz.metrics import class_mean, energy_in_mask, peak, pointing_hit
from cbam_viz.paired import RESAMPLES, PairedDifference, paired_differences

METRICS = (
    ("top1", "top-1 accuracy"),
    ("top5", "top-5 accuracy"),
    ("mean_p_true", "mean P(true class)"),
    ("pointing", "pointing game (true class)"),
    ("energy", "energy in mask"),
    ("on_distractor", "CAM peak on a distractor"),
)
BINARY = frozenset({"top1", "top5", "pointing", "on_distractor"})  # 0 or 1 per scene: McNemar applies
SIZE_GROUPS = ("small", "medium", "large")
SIZE_METRICS = ("pointing", "top1")


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


def evaluate(
    split, models: dict, batch_size: int = 32, limit: int | None = None, input_size: int | None = None,
    road: bool = False,
) -> dict:
    """Score every model on a materialized split; returns {model key: {metric: value}} plus per-scene records."""
    count = len(split) if limit is None else min(limit, len(split))
    if count == 0:
        raise CbamVizError("the split is empty")
    sums = {key: dict.fromkeys((name for name, _ in scene_metrics(road)), 0.0) for key in models}
    per_scene = []
    road_seconds = 0.0
    for start in tqdm(range(0, count, batch_size), desc="eval", unit="batch"):
        scenes = [split[i] for i in range(start, min(start + batch_size, count))]
        comparisons = run_models(
            [s.image for s in scenes], models, max_side=None, image_targets=[s.label for s in scenes],
            input_size=input_size,
        )
        if road:
            road_by_model, seconds = road_for_batch(models, [s.image for s in scenes], comparisons, input_size)
            road_seconds += seconds
        for index, (scene, comparison) in enumerate(zip(scenes, comparisons), start=start):
            side = np.array(scene.mask.shape, dtype=float)
            record = {
                "index": index,
                "label": scene.label,
                "object_area": float(np.mean(scene.mask)),
                "object_centre": (np.argwhere(scene.mask).mean(axis=0) / side).tolist(),  # (row, col) fractions
            }
            for key, res in comparison.results.items():
                scores = scene_scores(res.probs, res.heatmaps[0], scene)
                if road:
                    scores["road"] = float(road_by_model[key][index - start])
                for name, value in scores.items():
                    sums[key][name] += value
                record[key] = {**scores, "peak": (np.array(peak(res.heatmaps[0])) / side).tolist()}
                if res.familiarity is not None:
                    record[key]["familiarity"] = res.familiarity.score
            per_scene.append(record)
    summary = {key: {name: value / count for name, value in totals.items()} for key, totals in sums.items()}
    return {"count": count, "summary": summary, "scenes": per_scene, "road_seconds": road_seconds}


def scene_metrics(road: bool) -> tuple[tuple[str, str], ...]:
    """The stamp-scene table's rows: METRICS, plus ROAD when asked for."""
    return METRICS + ((ROAD_METRIC,) if road else ())


def scene_scores(probs: np.ndarray, heatmap: np.ndarray, scene) -> dict[str, float]:
    """All metrics of one model on one scene (heatmap = CAM of the true class, at the scene's size)."""
    order = np.argsort(-probs)
    hit = pointing_hit(heatmap, scene.mask)
    on_distractor = not hit and any(m[peak(heatmap)] for m in scene.distractor_masks)
    return {
        "top1": float(order[0] == scene.label),
        "top5": float(scene.label in order[:5]),
        "mean_p_true": float(probs[scene.label]),
        "pointing": float(hit),
        "energy": energy_in_mask(heatmap, scene.mask),
        "on_distractor": float(on_distractor),
    }


def pointing_class_means(records: list[dict]) -> dict[str, float]:
    """Each model's pointing game as TorchRay reports it: the mean of its per-class accuracies over `records`."""
    labels = [r["label"] for r in records]
    return {key: class_mean([r[key]["pointing"] for r in records], labels) for key in ("baseline", "cbam")}


def format_class_means(means: dict[str, float], names: dict[str, str]) -> str:
    """One line beside the table's pointing game (a mean over images): each model's mean of per-class accuracies."""
    return "pointing game, mean of per-class accuracies (as TorchRay): " + " / ".join(
        f"{names[key]} {100 * value:.1f}%" for key, value in means.items())


def size_thirds(scenes: list[dict]) -> list[tuple[str, np.ndarray]]:
    """(group name, scene indices) for the thirds of the scenes by the object's share of the image, smallest first."""
    areas = np.array([s["object_area"] for s in scenes])
    parts = np.array_split(np.argsort(areas, kind="stable"), len(SIZE_GROUPS))
    return [(name, part) for name, part in zip(SIZE_GROUPS, parts) if len(part)]


def by_object_size(scenes: list[dict]) -> list[dict]:
    """Thirds of the scenes by the object's share of the image, each with both models' pointing and top-1 and the
    paired difference CBAM minus baseline."""
    areas = np.array([s["object_area"] for s in scenes])
    groups = []
    for name, part in size_thirds(scenes):
        subset = [scenes[i] for i in part]
        summary = {key: {m: float(np.mean([s[key][m] for s in subset])) for m in SIZE_METRICS}
                   for key in ("baseline", "cbam")}
        paired = paired_differences(subset, list(SIZE_METRICS), BINARY)
        groups.append({
            "group": name,
            "count": len(subset),
            "area_range": [float(areas[part].min()), float(areas[part].max())],
            "summary": summary,
            "cbam_minus_baseline": {metric: asdict(diff) for metric, diff in paired.items()},
        })
    return groups


def format_size_table(groups: list[dict], names: dict[str, str]) -> str:
    """One line per object-size group: each model's pointing and top-1, and CBAM minus baseline with its interval."""
    header = f"{'object size (share of image)':32s}{'scenes':>8s}{'pointing game':>37s}{'top-1 accuracy':>37s}"
    lines = [header, "-" * len(header)]
    for group in groups:
        smallest, largest = group["area_range"]
        line = f"{group['group'] + f' ({100 * smallest:.1f}-{100 * largest:.1f}%)':32s}{group['count']:8d}"
        for metric in SIZE_METRICS:
            base, cbam = (100 * group["summary"][key][metric] for key in ("baseline", "cbam"))
            diff, low, high = (100 * group["cbam_minus_baseline"][metric][k] for k in ("difference", "low", "high"))
            line += f"{base:7.1f}% /{cbam:6.1f}%{diff:+7.1f} [{low:+5.1f}, {high:+5.1f}]"
        lines.append(line)
    lines.append(f"each: {names['baseline']} / {names['cbam']}, then their difference [95% interval] as above")
    return "\n".join(lines)


def format_table(
    summary: dict[str, dict[str, float]],
    names: dict[str, str],
    paired: dict[str, PairedDifference],
    metrics: tuple[tuple[str, str], ...] = METRICS,
    unit: str = "scenes",
) -> str:
    """A side-by-side text table, one column per model, then CBAM minus baseline with its 95% interval and p; one
    row per (metric, label) in `metrics`, the bootstrap over `unit` (scenes or images)."""
    keys = list(summary)
    header = (f"{'metric':32s}" + "".join(f"{names[k]:>16s}" for k in keys)
              + f"{'difference [95% interval]':>30s}   McNemar p (only {names['baseline']} / only {names['cbam']})")
    lines = [header, "-" * len(header)]
    for metric, label in metrics:
        diff = paired[metric]
        test = ""
        if diff.p_value is not None:
            p = f"{diff.p_value:.3f}" if diff.p_value >= 0.001 else f"{diff.p_value:.0e}"
            test = f"{p} ({diff.only_baseline} / {diff.only_cbam})"
        lines.append(
            f"{label:32s}" + "".join(f"{100 * summary[k][metric]:15.1f}%" for k in keys)
            + f"{100 * diff.difference:+15.1f} [{100 * diff.low:+5.1f}, {100 * diff.high:+5.1f}]   {test}".rstrip()
        )
    lines.append(f"difference: {names['cbam']} minus {names['baseline']}, in points; interval: paired bootstrap "
                 f"over {unit} ({RESAMPLES:,} resamples)")
    return "\n".join(lines)


def familiarity_distribution(scenes: list[dict], models: dict) -> dict[str, dict | None]:
    """Per model: its detector, the score's 5/50/95th percentiles on the split and the share called unfamiliar."""
    out: dict[str, dict | None] = {}
    for key, loaded in models.items():
        fam = loaded.familiarity
        if fam is None:
            out[key] = None
            continue
        scores = np.array([s[key]["familiarity"] for s in scenes])
        out[key] = {
            "method": fam.method,
            "threshold": fam.threshold,
            "percentiles": dict(zip(("p5", "p50", "p95"), np.percentile(scores, [5, 50, 95]).tolist())),
            "unfamiliar": float(np.mean(scores > fam.threshold)),
        }
    return out


def format_familiarity(distribution: dict[str, dict | None], names: dict[str, str]) -> str:
    """One line per model: the familiarity score's spread on the split and how many scenes it calls unfamiliar."""
    lines = []
    for key, row in distribution.items():
        if row is None:
            lines.append(f"familiarity, {names[key]}: not available (the checkpoint carries no statistics)")
            continue
        p = row["percentiles"]
        lines.append(
            f"familiarity, {names[key]} ({row['method']}, threshold {row['threshold']:.4f}): score p5 / p50 / p95 "
            f"{p['p5']:.4f} / {p['p50']:.4f} / {p['p95']:.4f}; {100 * row['unfamiliar']:.1f}% of scenes unfamiliar"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.input_size is not None and args.input_size < 32:
        raise CbamVizError(f"--input-size must be at least 32 px: ResNet50 downsamples by 32 (got {args.input_size})")
    source, args.split = data_source(args.data, args.split)
    if source == "photos":
        from cbam_viz.photo_eval import run_photos

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


def run_stamps(args: argparse.Namespace) -> int:
    """`eval` on a stamp-scenes split: the table, the table by object size, familiarity, JSON and the figure."""
    from cbam_viz.data.splits import MaterializedSplit

    split = MaterializedSplit(args.data, args.split)
    models = load_pair(args.baseline, args.cbam, args.device)
    for key, loaded in models.items():
        if loaded.meta.class_names != split.class_names:
            raise CbamVizError(f"the {key} checkpoint's classes do not match the dataset's ({loaded.meta.source})")
    started = time.perf_counter()
    with torch.inference_mode():
        result = evaluate(split, models, args.batch_size, args.limit, args.input_size, args.road)
    names = {key: loaded.meta.display_name for key, loaded in models.items()}
    metrics = scene_metrics(args.road)
    paired = paired_differences(result["scenes"], [name for name, _ in metrics], BINARY)
    input_sizes = {key: args.input_size or loaded.meta.input_size for key, loaded in models.items()}
    print(f"{args.split} split: {result['count']} scenes, dataset {split.pack_hash[:12]}, input "
          + " / ".join(f"{size} px" for size in input_sizes.values()))
    sizes = by_object_size(result["scenes"])
    print(format_table(result["summary"], names, paired, metrics))
    class_means = pointing_class_means(result["scenes"])
    print(format_class_means(class_means, names))
    if args.road:
        print(road_cost(result["count"], len(models), result["road_seconds"]))
    print(format_size_table(sizes, names))
    familiarity = familiarity_distribution(result["scenes"], models)
    print(format_familiarity(familiarity, names))
    report = {
        "split": args.split,
        "count": result["count"],
        "dataset_hash": split.pack_hash,
        "checkpoints": {key: loaded.meta.source for key, loaded in models.items()},
        "input_size": input_sizes,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": result["summary"],
        "pointing_class_mean": class_means,
        "cbam_minus_baseline": {metric: asdict(diff) for metric, diff in paired.items()},
        "by_object_size": sizes,
        "familiarity": familiarity,
        "scenes": result["scenes"],
    }
    rows = figure_rows(split.labels[: result["count"]], args.figure_rows)
    write_outputs(args.out, report, [split[i].image for i in rows], [split[i].label for i in rows], models,
                  args.input_size)
    return 0


def write_outputs(
    out: Path, report: dict, images: list, labels: list[int], models: dict[str, LoadedModel], input_size: int | None
) -> None:
    """Write eval.json and the Sec. 4.3-style figure of `images` (CAMs of their `labels`) into `out`."""
    from cbam_viz.figures import paper_figure

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "eval.json", json.dumps(report, indent=1).encode())
    figure = run_models(images, models, max_side=None, image_targets=labels, input_size=input_size)
    paper_figure(
        [(c.image, c.results["baseline"], c.results["cbam"]) for c in figure],
        out / "sec43_figure.png",
        out / "sec43_figure.pdf",
    )
    print(f"wrote {out / 'eval.json'} and {out / 'sec43_figure.png'}")


def figure_rows(labels: list[int], rows: int) -> list[int]:
    """A fixed sample: the positions of the first image of `rows` distinct classes, in split order."""
    chosen, seen = [], set()
    for i, label in enumerate(labels):
        if label not in seen:
            seen.add(label)
            chosen.append(i)
        if len(chosen) == rows:
            break
    return chosen
