"""`python -m cbam_viz familiarity fit|eval`: fit a checkpoint's familiarity detector, and measure every detector.

`fit` extracts the layer3 and layer4 features of training scenes (the checkpoint's own training distribution) and
of the validation split, fits the chosen detector, sets its threshold so that 95% of the validation images stay
familiar, and stores it inside the checkpoint, atomically.

`eval` fits all detectors the same way and measures each, with the maximum softmax probability beside them, as
AUROC and false-positive rate at 95% true-positive rate: familiar = the test split, unfamiliar = (a) scenes
composed like the test split whose only subjects are held-out distractor stamps, and (b) real photographs from
Debian packages showing none of the classes (downloaded with apt-get once, like `data build`'s assets). A third
comparison touches no test image: the val split against unknown-subject scenes over the val backgrounds, which is
what a choice between detectors is made on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cbam_viz.cam.engine import preprocess
from cbam_viz.data.rcc import read_rcc
from cbam_viz.errors import CbamVizError
from cbam_viz.familiarity.detectors import (
    DEFAULT_K,
    DEFAULT_TRAIN_IMAGES,
    FEATURE,
    KEEP,
    MAP_FEATURE,
    MAP_METHODS,
    METHODS,
    STORED_METHODS,
    Familiarity,
    Maps,
    auroc,
    classifier_tensor,
    detector_scores,
    evidence_patches,
    fit_tensors,
    fpr_at_tpr,
    pool,
    threshold_at,
    val_quantiles,
)
from cbam_viz.io.checkpoints import LoadedModel, load_checkpoint, load_pair, store_familiarity
from cbam_viz.io.fileio import atomic_write_bytes
from cbam_viz.nn.resnet import forward_maps

DEFAULT_METHOD = "patches"
FIT_SEED = 1  # scene stream of the fit's training scenes (any seed draws from the training distribution)

# The unfamiliar set (b): which photos of which Debian package, with their subjects, credits and sha256.
PHOTO_LIST = Path(__file__).with_name("unfamiliar_photos.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = sub.add_parser("fit", help="fit a checkpoint's detector on its training data and store it in the file")
    fit.add_argument("--checkpoint", type=Path, required=True, help="cbam_viz .safetensors checkpoint to update")
    fit.add_argument("--method", choices=STORED_METHODS, default=DEFAULT_METHOD, help="(default: %(default)s)")
    _common(fit)
    ev = sub.add_parser("eval", help="AUROC / FPR95 of every detector on unfamiliar scenes and real photos")
    ev.add_argument("--baseline", type=Path, help="baseline checkpoint (default: bundled)")
    ev.add_argument("--cbam", type=Path, help="CBAM checkpoint (default: bundled)")
    ev.add_argument("--photos", type=Path, help="folder of real photos showing none of the classes "
                    "(default: the Debian photo set, downloaded once into --cache)")
    ev.add_argument("--unknown-scenes", type=int, default=640, help="unknown-subject scenes (default: %(default)s)")
    ev.add_argument("--out", type=Path, default=Path("runs/familiarity"), help="folder for familiarity_eval.json")
    _common(ev)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder written by `data build` (pack and splits)")
    parser.add_argument("--images", type=int, default=DEFAULT_TRAIN_IMAGES,
                        help="training scenes to fit on (default: %(default)s)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="neighbour rank of the knn score (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, help="where downloaded Debian packages are kept (default: data build's)")


# ------------------------------------------------------------------------------------------------- features
class Features(NamedTuple):
    """What `extract` keeps of one model's passes over a set of images."""

    pooled: np.ndarray  # (N, K) pooled layer4 features
    probs: np.ndarray  # (N, C) softmax
    maps: Maps | None = None  # layer3 pooled onto layer4's grid and layer4, kept for the MAP_METHODS
    patches: torch.Tensor | None = None  # (N, BANK_CELLS, K3) layer3 patches of most evidence for the true class

    def scored(self, method: str) -> Maps | torch.Tensor:
        """What `method` scores: the maps for MAP_METHODS, else the pooled features."""
        return self.maps if method in MAP_METHODS else torch.from_numpy(self.pooled)


@torch.inference_mode()
def extract(
    models: dict[str, LoadedModel],
    images: Iterable[Image.Image],
    count: int,
    batch_size: int = 32,
    desc: str = "",
    maps: bool = False,
    labels: Sequence[int] | None = None,
) -> dict[str, Features]:
    """Each model's pooled layer4 features and softmax, preprocessed exactly as the app does; with `maps` also the
    layer4 maps and the layer3 maps pooled onto their grid, with `labels` (which may fill while the images are
    drawn) each image's evidence patches."""
    out: dict[str, dict[str, list]] = {
        key: {"pooled": [], "probs": [], "layer3": [], "layer4": [], "patches": []} for key in models
    }
    classifiers = {} if labels is None else {key: classifier_tensor(loaded.model.fc) for key, loaded in models.items()}
    done = 0
    for batch in _batches(tqdm(images, total=count, desc=desc, unit="img", file=sys.stderr), batch_size):
        for key, loaded in models.items():
            logits, layer3, features = forward_maps(loaded.model, preprocess(batch, loaded.meta).to(loaded.device))
            features = features.float().cpu()
            parts = out[key]
            parts["pooled"].append(pool(features).numpy())
            parts["probs"].append(torch.softmax(logits.float(), 1).cpu().numpy())
            if not maps and labels is None:
                continue
            grid = Maps(torch.nn.functional.adaptive_avg_pool2d(layer3.float(), features.shape[-2:]).cpu(), features)
            if maps:
                parts["layer3"].append(grid.layer3)
                parts["layer4"].append(features)
            if labels is not None:
                batch_labels = np.asarray(labels[done : done + len(batch)])
                parts["patches"].append(evidence_patches(grid, batch_labels, classifiers[key]))
        done += len(batch)
    return {
        key: Features(np.concatenate(p["pooled"]), np.concatenate(p["probs"]),
                      Maps(torch.cat(p["layer3"]), torch.cat(p["layer4"])) if p["layer4"] else None,
                      torch.cat(p["patches"]) if p["patches"] else None)
        for key, p in out.items()
    }  # fmt: skip


def _batches(items: Iterable[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    batch: list[Image.Image] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def training_scenes(data: Path, count: int, size: int) -> tuple[Iterator[Image.Image], list[int], dict[str, Any]]:
    """`count` training scenes of the pack under `data` at `size` px, their labels, and a description of them."""
    from cbam_viz.data.pack import AssetPack
    from cbam_viz.data.scenes import SceneDataset

    scenes = SceneDataset(AssetPack.load(data), "train", size, count, seed=FIT_SEED)
    labels: list[int] = []  # filled while iterating: composing each scene twice would double the cost

    def images() -> Iterator[Image.Image]:
        for i in range(count):
            scene = scenes.scene(i)
            labels.append(scene.label)
            yield scene.image

    info = {"data": "stamp scenes", "pack_hash": scenes.pack_hash, "train_images": count, "train_seed": FIT_SEED,
            "size": size}
    return images(), labels, info


def validation_split(data: Path, split: str = "val"):
    from cbam_viz.data.splits import MaterializedSplit

    return MaterializedSplit(data, split)


def fit_detectors(
    models: dict[str, LoadedModel], data: Path, count: int, batch_size: int, methods: Sequence[str], k: int
) -> tuple[dict[str, dict[str, Familiarity]], dict[str, Any], dict[str, Features]]:
    """Fit each method for each model on `count` training scenes; thresholds keep 95% of the val split familiar.
    Also returns the val split's features."""
    if count < 2:
        raise CbamVizError("--images must be at least 2")
    sizes = {loaded.meta.input_size for loaded in models.values()}
    images, labels, info = training_scenes(data, count, max(sizes))
    val = validation_split(data)
    for key, loaded in models.items():
        if loaded.meta.class_names != val.class_names:
            raise CbamVizError(f"the {key} checkpoint's classes do not match the dataset's ({loaded.meta.source})")
    maps = any(method in MAP_METHODS for method in methods)
    train = extract(models, images, count, batch_size, "training scenes", labels=labels if maps else None)
    val_features = extract(models, (val[i].image for i in range(len(val))), len(val), batch_size, "val split", maps)
    info = {**info, "val_images": len(val), "keep": KEEP, "feature": FEATURE, "k": k}
    fitted: dict[str, dict[str, Familiarity]] = {}
    for key, loaded in models.items():
        own, val_own, classifier = train[key], val_features[key], classifier_tensor(loaded.model.fc)
        fitted[key] = {}
        for method in methods:
            val_parts = (val_own.pooled, val_own.probs, val_own.maps)
            tensors = fit_tensors(method, own.pooled, np.asarray(labels), loaded.meta.num_classes, val_parts, k,
                                  own.patches, classifier)  # fmt: skip
            scores = detector_scores(method, tensors, val_own.scored(method), val_own.probs, k)
            feature = MAP_FEATURE if method in MAP_METHODS else FEATURE
            extra = {"feature": feature, "val_quantiles": val_quantiles(scores)}
            fitted[key][method] = Familiarity(method, threshold_at(scores), tensors, {**info, **extra})
    return fitted, info, val_features


# ------------------------------------------------------------------------------------------------------- fit
def run_fit(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint, args.device)
    fitted, info, _ = fit_detectors({"model": loaded}, args.data, args.images, args.batch_size, [args.method], args.k)
    familiarity = fitted["model"][args.method]
    store_familiarity(args.checkpoint, familiarity)
    stored = load_checkpoint(args.checkpoint, "cpu").familiarity
    if stored is None or stored.method != args.method:
        raise CbamVizError(f"{args.checkpoint} was written but its familiarity statistics do not read back")
    print(f"{loaded.meta.display_name}: {args.method} fitted on {info['train_images']} training scenes, threshold "
          f"{familiarity.threshold:.4f} (keeps {KEEP:.0%} of {info['val_images']} val scenes familiar), stored in "
          f"{args.checkpoint} ({time.perf_counter() - started:.0f} s)")
    return 0


# ------------------------------------------------------------------------------------------------------ eval
def debian_photos(cache: Path | None) -> list[Path]:
    """The real-photo set (b): the photos PHOTO_LIST names, read out of their Debian package's resource bundles
    (downloaded with apt-get once) into `cache`, each checked against its sha256."""
    from cbam_viz.data.debian import DEFAULT_CACHE, fetch_debian_assets

    listing = json.loads(PHOTO_LIST.read_text(encoding="utf-8"))
    cache = Path(cache or DEFAULT_CACHE).expanduser()
    folder = cache / "unfamiliar_photos"
    paths = [folder / f"{i:03d}_{Path(photo['file']).name}" for i, photo in enumerate(listing["photos"])]
    if all(p.is_file() for p in paths):
        return paths
    package = listing["package"]
    root = Path(fetch_debian_assets(cache, [package], log=lambda m: print(m, file=sys.stderr))[package]["root"])
    bundles: dict[str, dict[str, bytes]] = {}
    for path, photo in zip(paths, listing["photos"]):
        if photo["bundle"] not in bundles:
            bundles[photo["bundle"]] = read_rcc(root / photo["bundle"])
        data = bundles[photo["bundle"]].get(photo["file"])
        if data is None or hashlib.sha256(data).hexdigest() != photo["sha256"]:
            raise CbamVizError(f"{package}: {photo['file']} is missing from {photo['bundle']} or differs from the "
                               "listed photo (another package version?)")
        atomic_write_bytes(path, data)
    return paths


def folder_photos(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not paths:
        raise CbamVizError(f"no .jpg/.jpeg/.png/.webp images in {folder}")
    return paths


def measure(familiar: np.ndarray, unfamiliar: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """AUROC, FPR at 95% TPR, and (with a threshold) the share of each set called unfamiliar."""
    row = {"auroc": auroc(familiar, unfamiliar), "fpr95": fpr_at_tpr(familiar, unfamiliar)}
    if threshold is not None:
        row["familiar_kept"] = float(np.mean(familiar <= threshold))
        row["unfamiliar_flagged"] = float(np.mean(unfamiliar > threshold))
    return row


def run_eval(args: argparse.Namespace) -> int:
    from cbam_viz.data.pack import AssetPack
    from cbam_viz.data.scenes import compose_unknown_scene
    from cbam_viz.io.images import load_image

    started = time.perf_counter()
    models = load_pair(args.baseline, args.cbam, args.device)
    fitted, info, val_features = fit_detectors(models, args.data, args.images, args.batch_size, METHODS, args.k)
    test, val_size = validation_split(args.data, "test"), validation_split(args.data).size
    pack = AssetPack.load(args.data)
    photos = folder_photos(args.photos) if args.photos else debian_photos(args.cache)
    batch = args.batch_size
    sets = {
        "test": extract(models, (test[i].image for i in range(len(test))), len(test), batch, "test split", True),
        "unknown_scenes": extract(
            models, (compose_unknown_scene(pack, "test", i, test.size) for i in range(args.unknown_scenes)),
            args.unknown_scenes, batch, "unknown-subject scenes", True,
        ),
        "photos": extract(models, (load_image(p) for p in photos), len(photos), batch, "real photos", True),
        "val": val_features,
        "val_unknown_scenes": extract(
            models, (compose_unknown_scene(pack, "val", i, val_size) for i in range(args.unknown_scenes)),
            args.unknown_scenes, batch, "unknown-subject scenes over val backgrounds", True,
        ),
    }
    examples = _example_scenes()
    if examples:
        sets["examples"] = extract(models, (load_image(p) for p in examples), len(examples), batch, "examples", True)
    report: dict[str, Any] = {"fit": info, "counts": {k: len(v[next(iter(models))].pooled) for k, v in sets.items()},
                              "models": {}}
    for key, loaded in models.items():
        entry: dict[str, Any] = {"model": loaded.meta.display_name, "checkpoint": loaded.meta.source, "detectors": {}}
        for method, fam in fitted[key].items():
            threshold = fam.threshold
            scores = {name: fam.scores(feats[key].scored(method), feats[key].probs) for name, feats in sets.items()}
            entry["detectors"][method] = {
                "threshold": threshold,
                "unknown_scenes": measure(scores["test"], scores["unknown_scenes"], threshold),
                "photos": measure(scores["test"], scores["photos"], threshold),
                "val_unknown_scenes": measure(scores["val"], scores["val_unknown_scenes"], threshold),
                "examples_familiar": [bool(s <= threshold) for s in scores.get("examples", [])],
            }
        stored = loaded.familiarity
        entry["stored"] = None if stored is None else {"method": stored.method, "threshold": stored.threshold}
        report["models"][key] = entry
    report["examples"] = [p.name for p in examples]
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(format_eval(report))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "familiarity_eval.json", json.dumps(report, indent=1).encode())
    print(f"wrote {args.out / 'familiarity_eval.json'}")
    return 0


def _example_scenes() -> list[Path]:
    from cbam_viz.io.examples import EXAMPLES_DIR, MASK_SUFFIX

    return sorted(p for p in EXAMPLES_DIR.glob("*.jpg") if not p.name.endswith(MASK_SUFFIX))


def format_eval(report: dict[str, Any]) -> str:
    """One line per model and detector: AUROC and FPR95 on each unfamiliar set, on the val-side check that chooses
    between detectors without the test split, and the bundled examples kept."""
    counts = report["counts"]
    header = (f"{'model':16s}{'detector':18s}{'unknown-subject scenes':>26s}{'real photos':>24s}"
              f"{'val check':>24s}{'examples familiar':>20s}")
    lines = [
        f"familiar: {counts['test']} test scenes; unfamiliar: (a) {counts['unknown_scenes']} unknown-subject "
        f"scenes, (b) {counts['photos']} real photos; thresholds keep {KEEP:.0%} of the val split familiar; "
        f"val check: {counts['val']} val scenes against {counts['val_unknown_scenes']} unknown-subject scenes over "
        "val backgrounds",
        header, f"{'':34s}{'AUROC':>12s}{'FPR95':>12s}{'AUROC':>12s}{'FPR95':>12s}{'AUROC':>12s}{'FPR95':>12s}",
        "-" * len(header),
    ]
    for entry in report["models"].values():
        stored = (entry["stored"] or {}).get("method")
        for method, row in entry["detectors"].items():
            kept = row["examples_familiar"]
            mark = " (stored)" if method == stored else ""
            cells = "".join(f"{row[name]['auroc']:12.3f}{100 * row[name]['fpr95']:11.1f}%"
                            for name in ("unknown_scenes", "photos", "val_unknown_scenes"))  # fmt: skip
            lines.append(f"{entry['model']:16s}{method + mark:18s}{cells}{f'{sum(kept)}/{len(kept)}':>20s}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    return run_fit(args) if args.action == "fit" else run_eval(args)
