"""`eval --attention-effects`: what CBAM's attention does on the split, measured by knocking it out.

For each CBAM model evaluated and each stage and gate (`cbam_viz.nn.knockout`), the knocked-out network's P of the
true class, its top-1 accuracy and its layer4 CAM's pointing game and energy in the object are paired with the intact
network's on the same image; the mean change gets a paired bootstrap interval (`cbam_viz.eval.stats`). Pointing and
energy count only the images with a mask or boxes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cbam_viz.cam.engine import preprocess
from cbam_viz.eval.stats import RESAMPLES, paired_differences
from cbam_viz.io.checkpoints import LoadedModel
from cbam_viz.nn.knockout import attention_effects
from cbam_viz.nn.resnet import parse_arch

EFFECT_METRICS = (("p_target", "P(true class)"), ("top1", "top-1"), ("pointing", "pointing"), ("energy", "energy"))
LOCALIZATION = ["pointing", "energy"]
PAIR = ("intact", "knocked")
NEUTRAL_WORDS = {"mean": "its per-image mean", "init": "0.5, its value at initialisation"}


def attach_effects(
    records: list[dict],
    models: dict[str, LoadedModel],
    images: Sequence[Image.Image],
    labels: Sequence[int],
    masks: Sequence[np.ndarray | None],
    input_size: int | None,
    neutral: str,
) -> float:
    """Knock out every CBAM model's attention on a batch of images, storing each image's effects for its true class
    (`ImageEffects.to_dict`) as record[key]["attention_effects"]; returns the seconds it took."""
    started = time.perf_counter()
    for key, loaded in models.items():
        if parse_arch(loaded.meta.arch)[1]:
            x = preprocess(images, loaded.meta, input_size).to(loaded.device)
            for record, effects in zip(records, attention_effects(loaded, x, labels, masks, neutral)):
                record[key]["attention_effects"] = effects.to_dict()
    return time.perf_counter() - started


def _scores(outcome: dict, target: int) -> dict[str, float]:
    """One forward's scores as the table counts them: top-1 right or wrong; pointing and energy where measured."""
    scores = {"p_target": outcome["p_target"], "top1": float(outcome["top1"] == target)}
    if outcome["pointing"] is not None:
        scores.update(pointing=float(outcome["pointing"]), energy=outcome["energy"])
    return scores


def summarise_effects(records: list[dict], key: str) -> dict:
    """Model `key`'s intact means and, per knock-out, each metric's mean change (knocked out minus intact) with its
    paired 95% interval, how often the top-1 changed, the mean CAM correlation and how often the CAM's peak moved."""
    effects = [r[key]["attention_effects"] for r in records]
    intact = [_scores(e["intact"], e["target"]) for e in effects]
    localized = [i for i, scores in enumerate(intact) if "pointing" in scores]
    rows = []
    for n, first in enumerate(effects[0]["knockouts"]):
        knocked = [e["knockouts"][n] for e in effects]
        pairs = [{"intact": a, "knocked": _scores(k, e["target"])} for a, k, e in zip(intact, knocked, effects)]
        paired = paired_differences(pairs, ["p_target", "top1"], pair=PAIR)
        if localized:
            paired.update(paired_differences([pairs[i] for i in localized], LOCALIZATION, pair=PAIR))
        rows.append({
            "stage": first["stage"], "gate": first["gate"],
            "knocked_minus_intact": {m: {"difference": d.difference, "low": d.low, "high": d.high}
                                     for m, d in paired.items()},
            **{name: float(np.mean([k[name] for k in knocked])) for name in ("top1_changed", "cam_correlation",
                                                                             "peak_moved")},
        })
    means = {m: float(np.mean([intact[i][m] for i in (localized if m in LOCALIZATION else range(len(intact)))]))
             for m, _ in EFFECT_METRICS if m not in LOCALIZATION or localized}
    return {"count": len(effects), "localized": len(localized), "intact": means, "knockouts": rows}


def format_effects(summary: dict, name: str, neutral: str, unit: str = "scenes") -> str:
    """The knock-out table of one model: per stage and gate each metric's change [95% interval] in points, how
    often the top-1 changed, the mean CAM correlation with the intact CAM and how often its peak moved."""
    metrics = [(m, label) for m, label in EFFECT_METRICS if m in summary["intact"]]
    header = f"{'stage':7s}{'gate':9s}" + "".join(f"{'Δ ' + label:>25s}" for _, label in metrics)
    header += f"{'top-1 changed':>15s}{'CAM r':>8s}{'peak moved':>12s}"
    intact = ", ".join(f"{label} {100 * summary['intact'][m]:.1f}%" for m, label in metrics)
    if "pointing" in summary["intact"] and summary["localized"] != summary["count"]:
        intact += f" (pointing and energy on the {summary['localized']} {unit} with a mask or boxes)"
    lines = [f"attention knock-outs of {name} on {summary['count']} {unit}, each gate replaced by "
             f"{NEUTRAL_WORDS[neutral]}; CAM: layer4 Grad-CAM of the true class",
             f"intact: {intact}", header, "-" * len(header)]
    for row in summary["knockouts"]:
        line = f"{row['stage']:<7d}{row['gate']:9s}"
        for m, _ in metrics:
            d = row["knocked_minus_intact"][m]
            line += f"{100 * d['difference']:+10.1f} [{100 * d['low']:+5.1f}, {100 * d['high']:+5.1f}]"
        line += f"{100 * row['top1_changed']:14.1f}%{row['cam_correlation']:8.3f}{100 * row['peak_moved']:11.1f}%"
        lines.append(line)
    lines.append(f"Δ: knocked out minus intact, in points; interval: paired bootstrap over {unit} "
                 f"({RESAMPLES:,} resamples)")
    return "\n".join(lines)


def report_effects(records: list[dict], models: dict[str, LoadedModel], neutral: str, seconds: float,
                   unit: str = "scenes") -> dict:
    """Print every CBAM model's knock-out table and what the knock-outs cost; return the part of eval.json."""
    report = {"neutral": neutral, "seconds": round(seconds, 1), "models": {}}
    for key, loaded in models.items():
        if "attention_effects" in records[0][key]:
            report["models"][key] = summarise_effects(records, key)
            print(format_effects(report["models"][key], loaded.meta.display_name, neutral, unit))
    counted = len(records) * max(len(report["models"]), 1)
    print(f"attention knock-outs: {seconds / counted:.2f} s per image and CBAM model, {seconds:.1f} s in all")
    return report
