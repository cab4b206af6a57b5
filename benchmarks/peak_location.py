"""Where each model's Grad-CAM maximum lands when the pointing game misses: near the object or far, on the border.

    python -m cbam_viz eval --data data/stamps32v2_test100 --out runs/eval3200
    python benchmarks/peak_location.py runs/eval3200/eval.json

Why: CBAM-ResNet50's CAM peak misses small objects more often than ResNet50's. A 7x7 spatial-gate conv with zero
padding could pull peaks to the image border; a smoother map could instead put them one cell beside the object.
This separates the two from the per-scene records `eval` writes (CAM peak and object centre, as fractions of the
side): share of missed peaks in the outer ring of a 7x7 grid, and peak-to-object-centre distance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cbam_viz.eval.scenes import size_thirds  # noqa: E402

RING = 1 / 7  # the outer ring of a 7x7 grid, as a fraction of the side
NEAR = 0.25  # "near miss": peak within a quarter of the side of the object's centre


def summarize(scenes: list[dict]) -> None:
    """Print, per model, the misses and where their peaks lie, for all scenes and the smallest third of objects."""
    smallest = [scenes[i] for i in size_thirds(scenes)[0][1]]
    for label, group in (("all scenes", scenes), ("smallest third", smallest)):
        print(f"{label} ({len(group)}):")
        for key in ("baseline", "cbam"):
            misses = [s for s in group if not s[key]["pointing"]]
            peaks = np.array([s[key]["peak"] for s in misses]).reshape(-1, 2)
            on_ring = np.minimum(peaks, 1 - peaks).min(axis=1) < RING
            distance = np.hypot(*(peaks - np.array([s["object_centre"] for s in misses]).reshape(-1, 2)).T)
            print(f"  {key:8s} misses {len(misses):4d}: peak on the outer ring {100 * on_ring.mean():5.1f}%, "
                  f"median distance to object centre {np.median(distance):.3f} of the side, "
                  f"within {NEAR} {100 * (distance < NEAR).mean():5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", type=Path, help="eval.json written by `python -m cbam_viz eval --out DIR`")
    args = parser.parse_args()
    summarize(json.loads(args.eval_json.read_text())["scenes"])


if __name__ == "__main__":
    main()
