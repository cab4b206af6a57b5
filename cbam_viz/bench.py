"""Benchmark: what the app and the export cost on top of the bare forward passes, measured in one run.

    python -m cbam_viz bench [--baseline PATH --cbam PATH] [--size 224] [--repeats 5] [--batch 16] [--json out.json]

Every variant runs once per round, rounds repeat `--repeats` times with the order rotated each round, and each
figure is the median over rounds, so background load hits every variant alike. Ratios are against bare
`model(x)` calls under inference_mode on the same device, threads and input size:

    compare (top-1 CAM + attention, both models) / 2 bare forwards ............ goal <= 1.15
    compare with the familiarity scores / compare without ..................... goal <= 1.02
    (compare + the scores' own time, timed inside it) / compare ............... the same cost, less noisy
    top-5 CAMs of both models / 2 bare forwards ............................... goal <= 1.20
    the same top-5 with pytorch_grad_cam.GradCAM (a backward per class) ....... our speed-up
    attention knock-outs of the CBAM model, one image / compare ............... their cost beside compare's
    export throughput (real files in a temp dir) / bare batched forwards ...... goal >= 0.85
    CBAM-ResNet50 forward / ResNet50 forward at batch 1 ....................... goal <= 1.15

Without checkpoints (none given, no bundled ones found: see cbam_viz.io.weights) both get random ImageNet-shaped
weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbam_viz.cam.engine import compare, preprocess, run_models
from cbam_viz.cli import standalone
from cbam_viz.devices import resolve_device
from cbam_viz.errors import CbamVizError
from cbam_viz.export.batch import ExportModel, Settings, export
from cbam_viz.export.discover import discover
from cbam_viz.familiarity.detectors import DEFAULT_K, DEFAULT_TRAIN_IMAGES, Familiarity, FamiliarityScore, Maps
from cbam_viz.io.checkpoints import LoadedModel, ModelMeta, load_checkpoint
from cbam_viz.io.weights import BUNDLED
from cbam_viz.nn.knockout import attention_effects
from cbam_viz.nn.resnet import build_model

GOALS = {  # figure -> (comparison, bound)
    "compare_ratio": ("<=", 1.15),
    "familiarity_ratio": ("<=", 1.02),
    "top5_ratio": ("<=", 1.20),
    "export_ratio": (">=", 0.85),
    "cbam_forward_ratio": ("<=", 1.15),
}


# ---------------------------------------------------------------------------------------------- inputs


def bench_models(baseline: str | None, cbam: str | None, size: int, device: torch.device) -> tuple[dict, str]:
    """Checkpoints if given or bundled, else random-weight ImageNet-shaped models; input size set to `size`."""
    paths = {"baseline": baseline, "cbam": cbam}
    bundled = {key: weights.find() for key, weights in BUNDLED.items()}
    if not baseline and not cbam and all(bundled.values()):
        paths = {key: str(path) for key, path in bundled.items()}
    if any(paths.values()) and not all(paths.values()):
        raise CbamVizError("give both --baseline and --cbam, or neither (random weights)")
    models: dict[str, LoadedModel] = {}
    if all(paths.values()):
        for key, path in paths.items():
            models[key] = load_checkpoint(path, device)
        source = "checkpoints: " + ", ".join(f"{k}={paths[k]}" for k in models)
    else:
        torch.manual_seed(0)
        for key, arch in (("baseline", "resnet50"), ("cbam", "resnet50-cbam")):
            meta = ModelMeta(arch=arch, class_names=[f"class {i}" for i in range(1000)], source="random")
            models[key] = LoadedModel(build_model(arch, 1000).to(device).eval(), meta)
        source = "random weights, ImageNet shapes (1000 classes)"
    for loaded in models.values():
        loaded.meta.input_size = size
    return models, source


@dataclass
class TimedFamiliarity(Familiarity):
    """A detector that records how long each of its `judge` calls takes: the scores' own cost inside compare()."""

    seconds: list[float] = field(default_factory=list)

    def judge(self, features: Maps, probs: torch.Tensor | np.ndarray | None = None) -> list[FamiliarityScore]:
        start = time.perf_counter()
        scores = super().judge(features, probs)
        self.seconds.append(time.perf_counter() - start)
        return scores


def with_and_without_familiarity(models: dict[str, LoadedModel]) -> tuple[dict, dict]:
    """The same models with a timed familiarity detector (the checkpoint's, else a kNN bank of random unit rows of
    the default fit's size, which costs what a fitted one does) and without one."""
    generator = torch.Generator().manual_seed(0)
    with_fam, without = {}, {}
    for key, loaded in models.items():
        fam = loaded.familiarity
        if fam is None:
            bank = torch.randn(DEFAULT_TRAIN_IMAGES, loaded.model.fc.in_features, generator=generator)
            fam = Familiarity("knn", 1.0, {"bank": torch.nn.functional.normalize(bank, dim=1)}, {"k": DEFAULT_K})
        fam = TimedFamiliarity(fam.method, fam.threshold, fam.tensors, fam.info)
        with_fam[key] = dataclasses.replace(loaded, familiarity=fam)
        without[key] = dataclasses.replace(loaded, familiarity=None)
    return with_fam, without


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth, photo-like RGB image (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- timing


@dataclass
class Variant:
    name: str
    fn: Callable[[], object]
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def measure(variants: list[Variant], repeats: int, sync: Callable[[], None]) -> None:
    """Warm every variant up once, then `repeats` rounds of all of them, the order rotated each round."""
    for v in variants:
        v.fn()
        sync()
    for r in range(repeats):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            start = time.perf_counter()
            v.fn()
            sync()
            v.samples.append(time.perf_counter() - start)


def naive_top5(models: dict[str, LoadedModel], image: Image.Image) -> None:
    """Top-5 heatmaps the textbook way: a forward for the top-5, then GradCAM with one backward per class."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    for loaded in models.values():
        x = preprocess([image], loaded.meta).to(loaded.device)
        with torch.inference_mode():
            top5 = loaded.model(x)[0].topk(5).indices.tolist()
        with GradCAM(model=loaded.model, target_layers=[loaded.model.layer4]) as cam:
            for cls in top5:
                cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])


def check_top5_equivalence(models: dict[str, LoadedModel], image: Image.Image) -> float:
    """Largest difference between our top-5 heatmaps and pytorch_grad_cam's (both normalised to [0, 1])."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = compare(image, models, target="top5")
    worst = 0.0
    for key, loaded in models.items():
        res = ours.results[key]
        x = preprocess([image], loaded.meta).to(loaded.device)
        with GradCAM(model=loaded.model, target_layers=[loaded.model.layer4]) as cam:
            for slot, cls in enumerate(res.targets):
                theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])[0]
                theirs_image = Image.fromarray(theirs.astype(np.float32))
                resized = np.asarray(theirs_image.resize(ours.image.size, Image.Resampling.BILINEAR))
                if res.heatmaps[slot].max() > 0 and resized.max() > 0:
                    worst = max(worst, float(np.abs(res.heatmaps[slot] - resized / resized.max()).mean()))
    return worst


# ---------------------------------------------------------------------------------------------- the run


def benchmark(
    models: dict[str, LoadedModel],
    *,
    size: int,
    batch: int,
    repeats: int,
    image_size: tuple[int, int],
    images: int,
    naive: bool = True,
    workdir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    device = next(iter(models.values())).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    image = photo(0, image_size)
    familiar, plain = with_and_without_familiarity(models)
    pictures = [photo(i, image_size) for i in range(images)]
    xs = {k: preprocess(pictures, m.meta).to(device) for k, m in models.items()}

    tmp = Path(tempfile.mkdtemp(prefix="cbam-bench-", dir=workdir))
    try:
        src = tmp / "in"
        src.mkdir()
        for i, pic in enumerate(pictures):
            pic.save(src / f"{i:04d}.jpg", quality=90)
        latency, throughput, versus = _variants(models, image, familiar, plain, pictures, xs, batch, naive, tmp)
        load_before = os.getloadavg()
        log(f"measuring: batch-1 latencies x {4 * repeats} rounds, throughput x {repeats}, naive top-5 x {repeats}")
        measure(latency, 4 * repeats, sync)
        measure(throughput, repeats, sync)
        if naive:
            measure(versus, repeats, sync)
        load_after = os.getloadavg()
        fs = _filesystem(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    variants = latency + throughput + (versus if naive else [])
    med, s, ratios, fig, fig_best = _figures(variants, familiar, naive)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "input_size": size,
        "image_size": list(image_size),
        "batch": batch,
        "images": images,
        "repeats": repeats,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "temp_filesystem": fs,
        "median_s": med,
        "samples_s": s,
        "figures": fig,
        "ratio_samples": ratios,
        "figures_from_minimums": fig_best,
        "goals": {k: {"goal": f"{op} {bound}", "pass": _passes(fig[k], op, bound)} for k, (op, bound) in GOALS.items()},
    }


def _variants(
    models: dict[str, LoadedModel],
    image: Image.Image,
    familiar: dict[str, LoadedModel],
    plain: dict[str, LoadedModel],
    pictures: list[Image.Image],
    xs: dict[str, torch.Tensor],
    batch: int,
    naive: bool,
    tmp: Path,
) -> tuple[list[Variant], list[Variant], list[Variant]]:
    """What is timed, in three groups each interleaved round by round (ratios are taken within each round, then the
    median): the cheap batch-1 latencies (many rounds), the throughput runs (bare batched forwards, the export's
    computation, the real export of `tmp`/in into `tmp`), and our top-5 against the naive one."""
    items = discover([str(tmp / "in")])
    settings = Settings(batch_size=batch)
    export_models = {k: ExportModel(k, m, "bench", settings.fingerprint(k, "bench")) for k, m in models.items()}
    device = next(iter(models.values())).device
    x1 = {k: preprocess([image], m.meta).to(device) for k, m in models.items()}
    images = len(pictures)
    runs = iter(range(10**9))

    def forward(key: str) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return models[key].model(x1[key])

        return run

    def batched_forwards() -> None:
        with torch.inference_mode():
            for key, loaded in models.items():
                for i in range(0, images, batch):
                    loaded.model(xs[key][i : i + batch])

    def export_compute() -> None:
        for i in range(0, images, batch):
            run_models(pictures[i : i + batch], models)

    def export_real() -> None:
        out = tmp / f"out{next(runs)}"
        export(items, out, export_models, settings, progress=False)
        shutil.rmtree(out)

    latency = [
        Variant("forward_baseline", forward("baseline"), []),
        Variant("forward_cbam", forward("cbam"), []),
        Variant("compare", lambda: compare(image, plain), []),
        Variant("compare_familiarity", lambda: compare(image, familiar), []),
        Variant("top5", lambda: compare(image, models, target="top5"), []),
        Variant("attention_effects", lambda: attention_effects(models["cbam"], x1["cbam"]), []),
    ]
    throughput = [
        Variant("batched_forwards", batched_forwards, []),
        Variant("export_compute", export_compute, []),
        Variant("export", export_real, []),
    ]
    versus = [Variant("top5_again", lambda: compare(image, models, target="top5"), [])]
    if naive:
        versus.append(Variant("naive_top5", lambda: naive_top5(models, image), []))
    return latency, throughput, versus


def _figures(variants: list[Variant], familiar: dict[str, LoadedModel], naive: bool) -> tuple[dict, ...]:
    """Medians and samples of every variant, the ratios round by round, their medians, and the ratios of the least
    disturbed runs."""
    med = {v.name: v.median for v in variants}
    s = {v.name: v.samples for v in variants}
    # one judge per model in each compare_familiarity call; the first call was the warm-up
    s["familiarity_scores"] = [sum(t) for t in zip(*(m.familiarity.seconds[1:] for m in familiar.values()))]
    med["familiarity_scores"] = statistics.median(s["familiarity_scores"])
    pairs = [b + c for b, c in zip(s["forward_baseline"], s["forward_cbam"])]
    ratios = {
        "compare_ratio": [a / d for a, d in zip(s["compare"], pairs)],
        "familiarity_ratio": [f / c for f, c in zip(s["compare_familiarity"], s["compare"])],
        "familiarity_timed_ratio": [1 + t / c for t, c in zip(s["familiarity_scores"], s["compare"])],
        "top5_ratio": [a / d for a, d in zip(s["top5"], pairs)],
        "attention_effects_ratio": [e / c for e, c in zip(s["attention_effects"], s["compare"])],
        "cbam_forward_ratio": [c / b for b, c in zip(s["forward_baseline"], s["forward_cbam"])],
        # throughput ratios: (n / export time) / (n / forward time)
        "export_ratio": [f / e for f, e in zip(s["batched_forwards"], s["export"])],
        "export_compute_ratio": [f / e for f, e in zip(s["batched_forwards"], s["export_compute"])],
    }
    if naive:
        ratios["naive_top5_speedup"] = [n / t for n, t in zip(s["naive_top5"], s["top5_again"])]
    fig = {k: statistics.median(v) for k, v in ratios.items()}
    best = {v.name: min(v.samples) for v in variants}  # least disturbed run: the cost with no one else on the CPU
    fig_best = {
        "compare_ratio": best["compare"] / (best["forward_baseline"] + best["forward_cbam"]),
        "familiarity_ratio": best["compare_familiarity"] / best["compare"],
        "familiarity_timed_ratio": 1 + min(s["familiarity_scores"]) / best["compare"],
        "top5_ratio": best["top5"] / (best["forward_baseline"] + best["forward_cbam"]),
        "attention_effects_ratio": best["attention_effects"] / best["compare"],
        "cbam_forward_ratio": best["forward_cbam"] / best["forward_baseline"],
        "export_ratio": best["batched_forwards"] / best["export"],
        "export_compute_ratio": best["batched_forwards"] / best["export_compute"],
    }
    return med, s, ratios, fig, fig_best


def _passes(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def _filesystem(path: Path) -> str:
    try:
        best = ""
        with open("/proc/mounts") as f:
            for line in f:
                mount, fstype = line.split()[1:3]
                if str(path).startswith(mount) and len(mount) >= len(best.split(" ")[0]):
                    best = f"{mount} ({fstype})"
        return best or "unknown"
    except OSError:
        return "unknown"


def table(result: dict) -> str:
    med, fig, goals, spread = result["median_s"], result["figures"], result["goals"], result["ratio_samples"]
    best = result["figures_from_minimums"]
    n = result["images"]

    def ms(name: str) -> str:
        return f"{med[name] * 1000:10.1f} ms"

    def ips(name: str) -> str:
        return f"{n / med[name]:7.2f} img/s"

    def ratio(key: str) -> str:
        return f"{fig[key]:8.3f} [{min(spread[key]):.2f}-{max(spread[key]):.2f}] {best[key]:6.3f}"

    def verdict(key: str) -> str:
        return f"{goals[key]['goal']:>8}  {'PASS' if goals[key]['pass'] else 'MISS'}"

    lines = [
        f"torch {result['torch']} | device {result['device']} | {result['threads']} threads | input "
        f"{result['input_size']} px | image {result['image_size'][0]}x{result['image_size'][1]} | batch "
        f"{result['batch']} | {n} export images | medians of interleaved rounds ({result['repeats']} x 4 for "
        "batch-1 latencies)",
        f"load average {result['loadavg_before'][0]:.2f} before, {result['loadavg_after'][0]:.2f} after; "
        f"temp files on {result['temp_filesystem']}",
        "",
        f"{'measure':<52}{'median':>13}{'ratio [min-max]':>21}{'mins':>7}{'goal':>10}",
        f"{'ResNet50 forward, batch 1':<52}{ms('forward_baseline')}",
        f"{'CBAM-ResNet50 forward, batch 1':<52}{ms('forward_cbam')}{ratio('cbam_forward_ratio')}"
        + verdict("cbam_forward_ratio"),
        f"{'compare(): top-5, top-1 CAM, attention (both models)':<52}{ms('compare')}{ratio('compare_ratio')}"
        + verdict("compare_ratio"),
        f"{'compare() with both familiarity scores':<52}{ms('compare_familiarity')}{ratio('familiarity_ratio')}"
        + verdict("familiarity_ratio"),
        f"{'  the scores alone, timed inside compare()':<52}{ms('familiarity_scores')}"
        f"{ratio('familiarity_timed_ratio')}",
        f"{'top-5 CAMs of both models':<52}{ms('top5')}{ratio('top5_ratio')}" + verdict("top5_ratio"),
        f"{'attention knock-outs of the CBAM model, per image':<52}{ms('attention_effects')}"
        f"{ratio('attention_effects_ratio')}",
    ]
    if "naive_top5_speedup" in fig:
        lines.append(
            f"{'top-5 via pytorch_grad_cam.GradCAM (5 backwards)':<52}{ms('naive_top5')}"
            f"   ours {fig['naive_top5_speedup']:.1f}x faster"
        )
    lines += [
        f"{'bare batched forwards, both models':<52}{ips('batched_forwards'):>13}",
        f"{'export compute (run_models on decoded batches)':<52}{ips('export_compute'):>13}"
        f"{ratio('export_compute_ratio')}",
        f"{'export, real (decode, CAM, PNG, manifest, fsync)':<52}{ips('export'):>13}{ratio('export_ratio')}"
        + verdict("export_ratio"),
        "",
        "ratios (per round, then the median; goals apply to it): compare and top-5 time over the 2 bare forwards of",
        "the same round; attention knock-outs (each stage's spatial, channel and both gates, on one image) over",
        "compare; familiarity: compare with over without the scores, and (compare + the scores' own time in that",
        "round) over compare; CBAM over ResNet50 forward; export throughput over bare batched forward throughput",
        "(higher is better). 'mins': the same ratio from each variant's fastest round, i.e. its cost when least",
        "disturbed.",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", metavar="PATH", help="baseline checkpoint (default: bundled, else random)")
    parser.add_argument("--cbam", metavar="PATH", help="CBAM checkpoint (default: bundled, else random)")
    parser.add_argument("--size", type=int, default=224, help="model input size in pixels (default 224)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; figures are medians (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the export measurements (default 16)")
    parser.add_argument("--images", type=int, default=None, help="images per export measurement (default 2 batches)")
    parser.add_argument("--image-size", default="500x375", help="WxH of the test photos (default 500x375)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-naive", action="store_true", help="skip the slow pytorch_grad_cam top-5 reference")
    parser.add_argument("--check", action="store_true", help="also check our top-5 CAMs against pytorch_grad_cam")
    parser.add_argument("--json", metavar="PATH", help="also write every figure and sample as JSON")


def run(args: argparse.Namespace) -> int:
    if args.size < 32:
        raise CbamVizError("--size must be at least 32 pixels")
    if args.repeats < 1 or args.batch < 1 or (args.images is not None and args.images < 1):
        raise CbamVizError("--repeats, --batch and --images must be at least 1")
    size = args.image_size.lower().split("x")
    if len(size) != 2 or not all(v.isdigit() and int(v) > 0 for v in size):
        raise CbamVizError(f"--image-size must look like 500x375, not {args.image_size!r}")
    w, h = (int(v) for v in size)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models, source = bench_models(args.baseline, args.cbam, args.size, device)
    print(f"models: {source}", file=sys.stderr)
    result = benchmark(
        models,
        size=args.size,
        batch=args.batch,
        repeats=args.repeats,
        image_size=(w, h),
        images=args.images or 2 * args.batch,
        naive=not args.no_naive,
        log=lambda m: print(m, file=sys.stderr),
    )
    result["models"] = source
    if args.check:
        result["top5_mean_abs_diff_vs_pytorch_grad_cam"] = check_top5_equivalence(models, photo(0, (w, h)))
    print(table(result))
    if "top5_mean_abs_diff_vs_pytorch_grad_cam" in result:
        print(f"top-5 heatmaps vs pytorch_grad_cam: mean |diff| {result['top5_mean_abs_diff_vs_pytorch_grad_cam']:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`bench` on its own, with the CLI's error handling (tests; `python -m cbam_viz.bench`)."""
    return standalone(sys.modules[__name__], argv, "python -m cbam_viz bench")


if __name__ == "__main__":
    sys.exit(main())
