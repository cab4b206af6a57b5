"""The studio: both models and the caches in front of them, which every request of the page and the API goes through.

Caches (see `cache`), each bounded by bytes:

* uploads: file identity (path, size, mtime) -> decoded image and its pixel hash (no re-decoding per event);
* base: pixel hash -> both models' forward pass (top-5, softmax, layer4 features, CBAM attention maps and the
  layer4 Grad-CAM of each model's top-1);
* results: (pixel hash, model, method, layer, class) -> that model's heatmap. Layer4 Grad-CAM for another class
  comes from the cached layer4 features (`cam.from_features`, no model call); other methods and layers run the
  model once, for that model only. CBAM-ResNet50's attention knock-outs for a class are kept there too.

Examples: every image in examples/ is offered in the gallery; `NAME.mask.png` beside `NAME.png` (white = object,
same size) is its object mask. Masks are matched by pixel hash, so an upload of the same file gets one too.
Opacity and colormap are applied at render time (`views`), so changing them never touches a model.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cbam_viz.app.cache import CACHE_MB, CACHE_SHARES
from cbam_viz.app.controls import TOP1, check_controls, format_box, normalise_target
from cbam_viz.app.uploads import SourceImage, base_name, check_upload, image_key
from cbam_viz.cam.engine import (
    DEFAULT_LAYER,
    DEFAULT_METHOD,
    LAYERS,
    METHODS,
    SLOW_METHODS,
    ModelResult,
    from_features,
    preprocess,
    resolve_target,
    run_models,
)
from cbam_viz.cam.scorecam import OverTime, RunControl, Stopped
from cbam_viz.errors import ECHO_CHARS, CbamVizError, echo
from cbam_viz.eval.metrics import box_mask, energy_in_mask, pointing_hit
from cbam_viz.io.checkpoints import MODEL_KEYS, LoadedModel
from cbam_viz.io.examples import EXAMPLES_DIR, MASK_SUFFIX
from cbam_viz.io.images import ImageError, load_image
from cbam_viz.lru import LRU, nbytes
from cbam_viz.nn.knockout import ImageEffects, attention_effects
from cbam_viz.nn.resnet import branch_channels

# Methods that run the model once per channel of the explained layer (256 at layer1 to 2048 at layer4): at most
# one such request runs at a time, one whose estimated time exceeds Studio.slow_seconds is refused, and a run is
# stopped when it reaches that limit.
SLOW_SECONDS = 60.0
# ScoreCAM forwards its masked copies of the image in batches, cheaper per copy than a forward pass of one image:
# until a run has measured the cost of one copy at a layer, it is taken as this share of the fastest forward pass seen.
SLOW_PASS_SHARE = 0.5
# A run's measured cost of one copy counts this much against what the earlier runs at its layer measured.
SLOW_NEW_WEIGHT = 0.5
# Seconds after which a measured cost's excess over that share of a forward pass counts half: a run slowed by a busy
# machine does not refuse its layer for good.
SLOW_HALF_LIFE = 600.0


@dataclass
class Analysis:
    """Both models' answer for one image and one set of controls (target, method, layer)."""

    source: SourceImage
    image: Image.Image  # the displayed image (longer side <= max_side); heatmaps and masks have its size
    results: dict[str, ModelResult]
    target: str
    method: str
    layer: str

    @property
    def scale(self) -> float:
        """Displayed pixels per original pixel (1.0 unless the upload was larger than max_side)."""
        return self.image.width / self.source.image.width


@dataclass
class Localization:
    """Where the object is (an example's mask or the user's box) and how well each heatmap points at it."""

    source: str  # "example mask" or "box"
    mask: np.ndarray  # bool, at the analysis image's size
    box: tuple[float, float, float, float] | None  # in original image pixels, when source == "box"
    scores: dict[str, dict[str, float | bool]]


class Studio:
    """Both models plus the caches in front of them: what every request of the web app and its API goes through."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        *,
        examples_dir: str | Path | None = EXAMPLES_DIR,
        max_side: int = 1024,
        cache_mb: float = CACHE_MB,
        slow_seconds: float = SLOW_SECONDS,
        concurrency: int = 2,
    ) -> None:
        missing = [key for key in MODEL_KEYS if key not in models]
        if missing:
            raise CbamVizError(f"the studio needs both models; missing: {', '.join(missing)}")
        self.models = {key: models[key] for key in MODEL_KEYS}
        self.max_side = max_side
        self.model_runs = 0  # model passes started (one per model per cache miss)
        self.slow_seconds = slow_seconds
        self.forward_seconds: float | None = None  # the fastest forward pass of one model on one image seen
        self._pass_seconds: dict[str, tuple[float, float]] = {}  # layer -> (one slow pass's cost, time.monotonic())
        self._lock = threading.Lock()
        self._slow = threading.Lock()  # held by the one slow-method request that may run
        # model passes of the fast methods that may run at once, beside the one slow request (which has its own slot)
        self.concurrency = concurrency
        self._fast = threading.BoundedSemaphore(concurrency)
        # every cache is bounded by bytes (nbytes of its entries), each getting its share of cache_mb
        budget = {name: share * cache_mb * 2**20 for name, share in CACHE_SHARES.items()}
        self._files = LRU(weigh=nbytes, budget=budget["uploads"])  # decoded uploads at full size
        self._base = LRU(weigh=nbytes, budget=budget["answers"])  # each image's top-1 answer of both models
        self._results = LRU(weigh=nbytes, budget=budget["heatmaps"])  # other targets, methods and layers
        self._masks = LRU(weigh=nbytes, budget=budget["masks"])  # the examples' masks at the shown size
        self.examples: list[Path] = []
        self.example_masks: dict[str, Path] = {}
        if examples_dir is not None:
            self._load_examples(Path(examples_dir))

    @property
    def cache_bytes(self) -> dict[str, int]:
        """The bytes each cache holds now (the keys of CACHE_SHARES)."""
        caches = (self._files, self._base, self._results, self._masks)
        return {name: int(cache.weight) for name, cache in zip(CACHE_SHARES, caches)}

    @property
    def class_names(self) -> list[str]:
        """Both models' classes, in order, each once (the same list when both were trained on one dataset)."""
        names: dict[str, None] = {}
        for loaded in self.models.values():
            names.update(dict.fromkeys(loaded.meta.class_names))
        return list(names)

    def _load_examples(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp") or path.name.endswith(MASK_SUFFIX):
                continue
            try:
                source = self.open(path)
            except ImageError:
                continue
            self.examples.append(path)
            mask = path.with_name(path.stem + MASK_SUFFIX)
            if mask.is_file():
                self.example_masks[source.key] = mask

    def open(self, source: str | os.PathLike | bytes | Image.Image, name: str | None = None) -> SourceImage:
        """Decode an image (path, bytes or PIL image) with `load_image`; a file already seen is not decoded again."""
        if isinstance(source, (str, os.PathLike)):
            try:
                info = os.stat(source)
                identity: Hashable = ("file", os.path.realpath(source), info.st_size, info.st_mtime_ns, name)
            except OSError:
                identity = None
            if identity is not None:
                return self._files.get_or_compute(identity, lambda: self._decode(source, name))
        return self._decode(source, name)

    def _decode(self, source: Any, name: str | None) -> SourceImage:
        image = load_image(source, name=name)
        label = base_name(name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image"))
        return SourceImage(image, image_key(image), label)

    def open_upload(
        self, payload: object, *, within: Sequence[str | os.PathLike] | None = None
    ) -> SourceImage | None:
        """An image from a Gradio upload payload (FileData dict, data: URL, or a path string in library use);
        None when empty. `within`: see `check_upload`."""
        upload = check_upload(payload, within)
        if upload is None:
            return None
        label, path, url = upload
        if url is not None:
            try:
                data = base64.b64decode(url.split(",", 1)[1], validate=False)
            except (IndexError, binascii.Error, ValueError):
                raise ImageError(f"{label} is not a valid base64 data URL") from None
            return self.open(data, name=label)
        if within is not None and not os.path.exists(path):
            raise ImageError(f"{label} is no longer on the server (uploads are deleted after a while): upload it again")
        return self.open(path, name=label)

    def _count(self, runs: int) -> None:
        with self._lock:
            self.model_runs += runs

    def _base_entry(self, source: SourceImage) -> tuple[Image.Image, dict[str, ModelResult]]:
        def compute() -> tuple[Image.Image, dict[str, ModelResult]]:
            self._count(len(self.models))
            with self._fast:
                began = time.perf_counter()
                comparison = run_models(
                    [source.image], self.models, target=TOP1, method=DEFAULT_METHOD, layer=DEFAULT_LAYER,
                    max_side=self.max_side,
                )[0]
                per_model = (time.perf_counter() - began) / len(self.models)
            with self._lock:  # the fastest: a busy machine or the first pass's warm-up only slow it down
                self.forward_seconds = min(per_model, self.forward_seconds or per_model)
            return comparison.image, comparison.results

        return self._base.get_or_compute(source.key, compute)

    def base(self, source: SourceImage) -> Analysis:
        """Each model's top-1 layer4 Grad-CAM plus everything the forward pass gives (one pass per model, cached)."""
        shown, results = self._base_entry(source)
        return Analysis(source, shown, dict(results), TOP1, DEFAULT_METHOD, DEFAULT_LAYER)

    def target_index(self, key: str, target: str, base: ModelResult) -> int:
        """One class index for model `key`: its top-1 for 'top1', else the class name or index given."""
        if target == TOP1:
            return base.targets[0]
        if len(target) > ECHO_CHARS:  # longer than any class name or index: refused before it is echoed whole
            raise CbamVizError(f"unknown target class {echo(target)}; use 'top1', one class name or one class index")
        indices = resolve_target(target, self.models[key].meta, base.probs)
        if len(indices) != 1:
            raise CbamVizError(f"the target must be 'top1', one class name or one class index, not {echo(target)}")
        return indices[0]

    def analyse(
        self,
        source: SourceImage,
        target: object = TOP1,
        method: str = DEFAULT_METHOD,
        layer: str = DEFAULT_LAYER,
        control: RunControl | None = None,
    ) -> Analysis:
        """Both models' heatmaps for `target` (class name/index for both, or 'top1' = each its own) by method/layer.

        A slow method's run reports to `control.progress` and stops at `control.cancel` (a Cancelled error) or at
        slow_seconds (an OverTime error, the studio sets the deadline); a stopped model's heatmap is not cached.
        """
        method, layer, _, _ = check_controls(method, layer)
        target = normalise_target(target)
        shown, base = self._base_entry(source)
        indices = {key: self.target_index(key, target, base[key]) for key in self.models}
        todo = [key for key in self.models if (source.key, key, method, layer, indices[key]) not in self._results]
        slow = method in SLOW_METHODS and todo
        with self._slow_slot(method, layer, todo, control) if slow else contextlib.nullcontext({}) as controls:
            results = {
                key: self._result(source, key, method, layer, indices[key], base[key], shown, controls.get(key))
                for key in self.models
            }
        return Analysis(source, shown, results, target, method, layer)

    def _slow_passes(self, layer: str) -> dict[str, int]:
        return {key: branch_channels(getattr(loaded.model, layer)[-1]) for key, loaded in self.models.items()}

    def pass_seconds(self, layer: str) -> float:
        """Estimated seconds of one pass of a slow method at `layer`: what its runs there measured, newer runs
        weighing more and the excess over the prior (a share of the fastest forward pass) fading with age."""
        prior = SLOW_PASS_SHARE * (self.forward_seconds or 0.0)
        with self._lock:
            known = self._pass_seconds.get(layer)
        if known is None:
            return prior
        seconds, when = known
        fading = 0.5 ** ((time.monotonic() - when) / SLOW_HALF_LIFE)
        return min(seconds, prior) + max(seconds - prior, 0.0) * fading

    def slow_estimate(self, method: str, layer: str) -> tuple[int, float]:
        """(forward passes per model, estimated seconds for both models) of a slow method at `layer`: one pass per
        channel of the layer, each costing `pass_seconds(layer)`."""
        passes = self._slow_passes(layer).values()
        return max(passes), sum(passes) * self.pass_seconds(layer)

    def _measure(self, layer: str, seconds: float, passes: int) -> None:
        """Count a slow run's cost per pass (`passes` done in `seconds`, finished or stopped) at `layer`."""
        if passes <= 0:
            return
        measured = seconds / passes
        known = self.pass_seconds(layer) if layer in self._pass_seconds else measured
        with self._lock:
            self._pass_seconds[layer] = (known + SLOW_NEW_WEIGHT * (measured - known), time.monotonic())

    @contextlib.contextmanager
    def _slow_slot(
        self, method: str, layer: str, keys: list[str], control: RunControl | None
    ) -> Iterator[dict[str, RunControl]]:
        """Run a slow method for models `keys` only if its estimated time is within slow_seconds and no other one is
        running; yields each model's control: the caller's progress and cancel, one count, a deadline at the limit."""
        label = METHODS[method].label
        passes, seconds = self.slow_estimate(method, layer)
        if seconds > self.slow_seconds:
            raise CbamVizError(
                f"{label} at {layer} runs each model {passes} times (once per channel), about {duration(seconds)} "
                f"on this server, over its limit of {duration(self.slow_seconds)}{fewer_passes(layer)}"
            )
        if not self._slow.acquire(blocking=False):
            raise CbamVizError(f"another {label} request is running (they run one at a time): try again shortly")
        began = time.monotonic()
        channels = self._slow_passes(layer)
        total = sum(channels[key] for key in keys)
        shared = replace(control or RunControl(), deadline=began + self.slow_seconds, total=total)
        before = [sum(channels[key] for key in keys[:i]) for i in range(len(keys))]
        try:
            yield {key: replace(shared, done_before=done) for key, done in zip(keys, before)}
            self._measure(layer, time.monotonic() - began, total)
        except Stopped as stopped:
            self._measure(layer, time.monotonic() - began, stopped.done)
            if not isinstance(stopped, OverTime):
                raise
            raise OverTime(
                f"{label} stopped at its limit of {duration(self.slow_seconds)} after {stopped.done} of "
                f"{stopped.total} channels{fewer_passes(layer)}", stopped.done, stopped.total,
            ) from None
        finally:
            self._slow.release()

    def _result(
        self,
        source: SourceImage,
        key: str,
        method: str,
        layer: str,
        index: int,
        base: ModelResult,
        shown: Image.Image,
        control: RunControl | None = None,
    ) -> ModelResult:
        if (base.method, base.layer, base.targets) == (method, layer, [index]):
            return base
        loaded = self.models[key]

        def compute() -> ModelResult:
            known = from_features(loaded, base, method, layer, index, shown.size)
            if known is not None:
                return known
            self._count(1)
            with contextlib.nullcontext() if method in SLOW_METHODS else self._fast:  # slow: analyse holds its slot
                comparison = run_models(
                    [source.image], {key: loaded}, target=index, method=method, layer=layer, max_side=self.max_side,
                    control=control,
                )[0]
            return comparison.results[key]

        return self._results.get_or_compute((source.key, key, method, layer, index), compute)

    def attention_effects(
        self, source: SourceImage, target: object = TOP1, box: tuple[float, float, float, float] | None = None
    ) -> ImageEffects:
        """What knocking out each stage's spatial gate, channel gate and both does to CBAM-ResNet50's answer for
        `target` and to its layer4 Grad-CAM, with pointing and energy against the box or an example's mask:
        computed once, cached."""
        analysis = self.base(source)
        index = self.target_index("cbam", normalise_target(target), analysis.results["cbam"])
        loaded = self.models["cbam"]

        def compute() -> ImageEffects:
            localization = self.localize(analysis, box)
            self._count(1)
            with self._fast:
                x = preprocess([source.image], loaded.meta).to(loaded.device)
                return attention_effects(loaded, x, [index], [localization.mask if localization else None])[0]

        return self._results.get_or_compute((source.key, "cbam", "knock-outs", box or "", index), compute)

    def example_mask(self, source: SourceImage, size: tuple[int, int]) -> np.ndarray | None:
        """The bundled mask of an example image (matched by pixels), at `size` = (W, H); None for other images."""
        path = self.example_masks.get(source.key)
        if path is None:
            return None

        def compute() -> np.ndarray:
            with Image.open(path) as mask:
                grey = mask.convert("L")
                if grey.size != size:
                    grey = grey.resize(size, Image.Resampling.NEAREST)
                return np.asarray(grey) > 127

        return self._masks.get_or_compute((source.key, size), compute)

    def localize(self, analysis: Analysis, box: tuple[float, float, float, float] | None = None) -> Localization | None:
        """Pointing game and energy in mask/box for both heatmaps; the user's box wins over an example's mask."""
        size = analysis.image.size
        if box is not None:
            w, h = analysis.source.image.size
            x0, x1 = sorted((box[0], box[2]))
            y0, y1 = sorted((box[1], box[3]))
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h or x1 - x0 < 1 or y1 - y0 < 1:
                raise CbamVizError(f"the box {format_box(box)} does not cover any pixel of the {w}×{h} image")
            s = analysis.scale
            mask = box_mask((x0 * s, y0 * s, x1 * s, y1 * s), (size[1], size[0]))
            if not mask.any():
                mask[min(int(y0 * s), size[1] - 1), min(int(x0 * s), size[0] - 1)] = True
            source, kept_box = "box", (x0, y0, x1, y1)
        else:
            mask = self.example_mask(analysis.source, size)
            if mask is None:
                return None
            source, kept_box = "example mask", None
        scores = {
            key: {
                "pointing_hit": pointing_hit(res.heatmaps[0], mask),
                "energy_in_mask": energy_in_mask(res.heatmaps[0], mask),
            }
            for key, res in analysis.results.items()
        }
        return Localization(source, mask, kept_box, scores)


def fewer_passes(layer: str) -> str:
    """The advice that ends a slow method's refusal or stop: another method, or an earlier layer where one exists."""
    earlier = LAYERS[: LAYERS.index(layer)]
    return ": pick another method (one pass each)" + (f" or an earlier layer ({', '.join(earlier)})" if earlier else "")


def duration(seconds: float) -> str:
    """A time limit or estimate as a person reads it: '45 s', '3 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
