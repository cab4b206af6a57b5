"""Evaluation on a stamp-scenes split (`eval --data DIR`, DIR written by `data build`): per-scene scores, the
table by object size, familiarity, JSON and the figure."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from cbam_viz.cam.engine import run_models
from cbam_viz.errors import CbamVizError
from cbam_viz.eval.faithfulness import ROAD_METRIC, road_cost, road_for_batch
from cbam_viz.eval.knockouts import attach_effects, report_effects
from cbam_viz.eval.metrics import energy_in_mask, peak, pointing_hit
from cbam_viz.eval.report import figure_rows, format_class_means, format_table, pointing_class_means, write_outputs
from cbam_viz.eval.stats import paired_differences
from cbam_viz.io.checkpoints import load_pair

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


def evaluate(
    split, models: dict, batch_size: int = 32, limit: int | None = None, input_size: int | None = None,
    road: bool = False, attention_effects: str | None = None,
) -> dict:
    """Score every model on a materialized split; returns {model key: {metric: value}} plus per-scene records.
    `attention_effects` (a neutral value of `knock_out`) adds each CBAM model's knock-outs to the records."""
    count = len(split) if limit is None else min(limit, len(split))
    if count == 0:
        raise CbamVizError("the split is empty")
    sums = {key: dict.fromkeys((name for name, _ in scene_metrics(road)), 0.0) for key in models}
    per_scene = []
    road_seconds = effects_seconds = 0.0
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
        if attention_effects:
            effects_seconds += attach_effects(per_scene[start:], models, [s.image for s in scenes],
                                              [s.label for s in scenes], [s.mask for s in scenes], input_size,
                                              attention_effects)
    summary = {key: {name: value / count for name, value in totals.items()} for key, totals in sums.items()}
    return {"count": count, "summary": summary, "scenes": per_scene, "road_seconds": road_seconds,
            "effects_seconds": effects_seconds}


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
        result = evaluate(split, models, args.batch_size, args.limit, args.input_size, args.road,
                          args.attention_effects)
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
    if args.attention_effects:
        report["attention_effects"] = report_effects(result["scenes"], models, args.attention_effects,
                                                     result["effects_seconds"])
    rows = figure_rows(split.labels[: result["count"]], args.figure_rows)
    write_outputs(args.out, report, [split[i].image for i in rows], [split[i].label for i in rows], models,
                  args.input_size)
    return 0


