"""What both evaluations (stamp scenes, photos) print and write: the side-by-side table with paired differences,
TorchRay's per-class pointing game, eval.json and the Sec. 4.3-style figure."""

from __future__ import annotations

import json
from pathlib import Path

from cbam_viz.cam.engine import run_models
from cbam_viz.eval.metrics import class_mean
from cbam_viz.eval.stats import RESAMPLES, PairedDifference
from cbam_viz.io.checkpoints import LoadedModel
from cbam_viz.io.fileio import atomic_write_bytes


def pointing_class_means(records: list[dict]) -> dict[str, float]:
    """Each model's pointing game as TorchRay reports it: the mean of its per-class accuracies over `records`."""
    labels = [r["label"] for r in records]
    return {key: class_mean([r[key]["pointing"] for r in records], labels) for key in ("baseline", "cbam")}


def format_class_means(means: dict[str, float], names: dict[str, str]) -> str:
    """One line beside the table's pointing game (a mean over images): each model's mean of per-class accuracies."""
    return "pointing game, mean of per-class accuracies (as TorchRay): " + " / ".join(
        f"{names[key]} {100 * value:.1f}%" for key, value in means.items())


def format_table(
    summary: dict[str, dict[str, float]],
    names: dict[str, str],
    paired: dict[str, PairedDifference],
    metrics: tuple[tuple[str, str], ...],
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


def write_outputs(
    out: Path, report: dict, images: list, labels: list[int], models: dict[str, LoadedModel], input_size: int | None
) -> None:
    """Write eval.json and the Sec. 4.3-style figure of `images` (CAMs of their `labels`) into `out`."""
    from cbam_viz.cam.figures import paper_figure

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
