"""The files of a run folder: the resumable state (last.pt), the metrics table and the training curves."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from cbam_viz.io.fileio import atomic_path, atomic_write_bytes
from cbam_viz.train.config import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, METRIC_COLUMNS, TrainError


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """Rewrite RUN_DIR/metrics.csv from the metrics history (atomically)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_curves(path: Path, history: list[dict], title: str) -> None:
    """Loss and accuracy vs training images, as a PNG (matplotlib without pyplot: no global state)."""
    from matplotlib.figure import Figure

    images = [row["images"] for row in history]
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(images, [row["train_loss"] for row in history], marker=".", label="train loss (label-smoothed)")
    ax_loss.set_xlabel("training images")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.plot(images, [row["train_acc"] for row in history], marker=".", label="train-batch top-1")
    ax_acc.plot(images, [row["val_top1"] for row in history], marker=".", label="val top-1")
    ax_acc.plot(images, [row["val_top5"] for row in history], marker=".", label="val top-5")
    ax_acc.set_xlabel("training images")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def load_last(path: Path) -> dict:
    """Read RUN_DIR/last.pt with weights_only=True (no pickled code runs) and check its format."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged or foreign file
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise TrainError(f"{path} cannot be read ({reason}): delete it or use --no-resume") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a training checkpoint of this tool: delete it or use --no-resume")
    if state.get("version") != CHECKPOINT_VERSION:
        raise TrainError(f"{path} has checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state
