"""The measured section of the cards: model dependence, faithfulness, localization and cost of CAM methods on one
model, over stamp scenes (each explained for its true class)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from cbam_viz.cam.engine import METHODS, preprocess, run_models
from cbam_viz.cards.maps import heatmaps, layer4_cams, resized
from cbam_viz.cards.randomisation import CASCADE, FIGURES, cascade, own_init, similarities
from cbam_viz.data.scenes import Scene
from cbam_viz.eval.faithfulness import causal_curves, curve_auc, road_of_heatmaps
from cbam_viz.eval.metrics import energy_in_mask, localized, pointing_hit
from cbam_viz.io.checkpoints import LoadedModel

Tick = Callable[[int], object]  # advances a progress bar by n units


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Mean of the finite values with a normal-approximation 95% interval and how many there were."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    half = 1.96 * float(finite.std(ddof=1)) / np.sqrt(len(finite)) if len(finite) > 1 else 0.0
    mean = float(finite.mean())
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(finite)}


def work_units(scenes: int, methods: int, batch_size: int) -> int:
    """Progress units of `measure`: map batches of the trained model and of each randomisation stage, then per
    method its faithfulness and its cost timing."""
    return -(-scenes // batch_size) * (1 + len(CASCADE)) + 2 * methods


def all_cams(model: torch.nn.Module, x: torch.Tensor, labels: Sequence[int], methods: Sequence[str],
             batch_size: int, tick: Tick) -> dict[str, np.ndarray]:
    """`layer4_cams` over x in batches: {method: (N, h, w)}."""
    parts = []
    for start in range(0, len(x), batch_size):
        parts.append(layer4_cams(model, x[start : start + batch_size], labels[start : start + batch_size], methods))
        tick(1)
    return {name: np.concatenate([part[name] for part in parts]) for name in methods}


def model_dependence(loaded: LoadedModel, x: torch.Tensor, labels: Sequence[int], trained: dict[str, np.ndarray],
                     batch_size: int, seed: int, tick: Tick) -> dict[str, dict]:
    """Per method: the FIGURES' summaries after each cascade stage, {method: {stage: {figure: summary}}}."""
    size = (x.shape[-1], x.shape[-2])
    base = {name: (resized(cams, size), heatmaps(cams, size)) for name, cams in trained.items()}
    curves: dict[str, dict] = {name: {} for name in trained}
    for stage, randomised in cascade(loaded.model, own_init(loaded, seed)):
        random = all_cams(randomised, x, labels, list(trained), batch_size, tick)
        for name, cams in random.items():
            signed, heat = resized(cams, size), heatmaps(cams, size)
            rows = [similarities(*pair) for pair in zip(base[name][0], signed, base[name][1], heat)]
            curves[name][stage] = {figure: summary([row[figure] for row in rows]) for figure in FIGURES}
    return curves


def localization(scenes: Sequence[Scene], cams: np.ndarray) -> dict[str, dict]:
    """Pointing game, energy in the object's mask and weakly-supervised localization (box IoU >= 0.5) of one
    method's maps of `scenes`, each at its scene's size."""
    rows = []
    for scene, cam in zip(scenes, cams):
        heat = heatmaps(cam[None], scene.image.size)[0]
        rows.append({
            "pointing": float(pointing_hit(heat, scene.mask)),
            "energy": energy_in_mask(heat, scene.mask),
            "localization": float(localized(heat, [scene.bbox])) if scene.bbox else float("nan"),
        })
    return {metric: summary([row[metric] for row in rows]) for metric in rows[0]}


def faithfulness(loaded: LoadedModel, x: torch.Tensor, labels: Sequence[int], cams: np.ndarray, steps: int,
                 seed: int) -> dict[str, dict]:
    """ROAD, deletion AUC and insertion AUC of one method's maps (N, h, w) of the scenes of x."""
    heat = heatmaps(cams, (x.shape[-1], x.shape[-2]))
    deletion, insertion = causal_curves(loaded.model, x, heat, labels, steps)
    return {
        "road": summary(road_of_heatmaps(loaded.model, x, heat, labels, seed)),
        "deletion_auc": summary(curve_auc(deletion)),
        "insertion_auc": summary(curve_auc(insertion)),
    }


def cost_ms(loaded: LoadedModel, scene: Scene, method: str, repeats: int) -> dict[str, float | int]:
    """Milliseconds the app's path (`run_models`: forward, CAM, heatmap) takes on one scene with `method`: the
    fastest of `repeats` runs (other work on the CPU only slows a run down) and that run's CPU time, after one
    untimed run for the fast methods."""
    def once() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        run_models([scene.image], {"model": loaded}, method=method, max_side=None, image_targets=[scene.label])
        return 1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu)

    if not METHODS[method].slow:
        once()
    wall, cpu = min(once() for _ in range(repeats))
    return {"wall": wall, "cpu": cpu, "runs": repeats, "threads": torch.get_num_threads()}


def measure(loaded: LoadedModel, scenes: Sequence[Scene], methods: Sequence[str], faithfulness_scenes: int,
            steps: int, batch_size: int, seed: int, cost_repeats: int, tick: Tick) -> dict[str, dict]:
    """Every measured figure of `methods` on one model: {method: {dependence, localization, faithfulness, cost}};
    faithfulness on the first `faithfulness_scenes` scenes."""
    x = preprocess([scene.image for scene in scenes], loaded.meta).to(loaded.device)
    labels = [scene.label for scene in scenes]
    trained = all_cams(loaded.model, x, labels, methods, batch_size, tick)
    dependence = model_dependence(loaded, x, labels, trained, batch_size, seed, tick)
    count = min(faithfulness_scenes, len(scenes))
    results, scored = {}, []  # scored: (heatmaps, faithfulness) of the methods so far
    for name in methods:
        # Methods that draw the same maps (Grad-CAM, HiResCAM and XGradCAM at layer4) share their faithfulness.
        heat = heatmaps(trained[name][:count], (x.shape[-1], x.shape[-2]))
        same = [scores for maps, scores in scored if np.allclose(maps, heat, rtol=0, atol=1e-5)]
        scored.append((heat, same[0] if same else faithfulness(loaded, x[:count], labels[:count],
                                                               trained[name][:count], steps, seed)))
        results[name] = {
            "scenes": len(scenes),
            "faithfulness_scenes": count,
            "curve": dependence[name],
            "localization": localization(scenes, trained[name]),
            "faithfulness": scored[-1][1],
        }
        tick(1)
        results[name]["cost_ms"] = cost_ms(loaded, scenes[0], name, 1 if METHODS[name].slow else cost_repeats)
        tick(1)
    return results
