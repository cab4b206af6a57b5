"""The web app's logic, free of any UI: a cached per-image analysis (`Studio`), rendering, scores and exports.

Caching. An image is identified by a hash of its decoded pixels, so the same picture uploaded twice, picked
from the examples or sent through the API is one entry. Thread-safe LRU caches sit in front of the models, each
bounded by the bytes its entries hold (`nbytes`), a fixed share of one settable total (`CACHE_MB`, --cache-mb):

* uploads: file identity (path, size, mtime) -> decoded image and its pixel hash (no re-decoding per event);
* base: pixel hash -> both models' forward pass (top-5, softmax, layer4 features, CBAM attention maps and the
  layer4 Grad-CAM of each model's top-1);
* results: (pixel hash, model, method, layer, class) -> that model's heatmap. Layer4 Grad-CAM for another class
  comes from the cached layer4 features (`fast_gradcam`, no model call); other methods and layers run the model
  once, for that model only.

Examples: every image in examples/ is offered in the gallery; `NAME.mask.png` beside `NAME.png` (white = object,
same size) is its object mask. Masks are matched by pixel hash, so an upload of the same file gets one too.

Opacity and colormap are applied at render time (`heatmap_overlay`), so changing them never touches a model.
Each cache key is computed by one thread at a time: concurrent requests for the same new image wait for the
first one's forward pass instead of repeating it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import io
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from cbam_viz.cam import (
    DEFAULT_LAYER,
    DEFAULT_METHOD,
    LAYERS,
    METHODS,
    ModelResult,
    check_method_layer,
    from_features,
    resolve_target,
    run_models,
    upsample,
)
from cbam_viz.checkpoints import MODEL_KEYS, LoadedModel
from cbam_viz.errors import ECHO_CHARS, CbamVizError, echo
from cbam_viz.familiarity import SCORE_NAMES
from cbam_viz.figures import paper_figure
from cbam_viz.fileio import atomic_write_bytes, is_within
from cbam_viz.images import MAX_PIXELS, ImageError, load_image
from cbam_viz.metrics import agreement, box_mask, energy_in_mask, peak, pointing_hit
from cbam_viz.models import branch_channels
from cbam_viz.render import COLORMAPS, overlay

TOP1 = "top1"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
MASK_SUFFIX = ".mask.png"
MAX_FIGURE_ROWS = 8
# Methods that run the model once per channel of the explained layer (256 at layer1 to 2048 at layer4): at most
# one such request runs at a time, and one whose estimated time exceeds Studio.slow_seconds is refused.
SLOW_METHODS = ("scorecam",)
SLOW_SECONDS = 60.0
# ScoreCAM forwards its masked copies of the image in batches, cheaper per copy than a forward pass of one image:
# until a run has measured the cost of one copy here, it is taken as this share of the fastest forward pass seen.
SLOW_PASS_SHARE = 0.5
FIGURE_STEM = "cbam_gradcam_figure"
# The memory all of Studio's caches may hold (--cache-mb), and how it is shared between them.
CACHE_MB = 256.0
CACHE_SHARES = {"uploads": 0.3, "answers": 0.35, "heatmaps": 0.3, "masks": 0.05}

ATTENTION_CAPTION = (
    "**Spatial attention** (top row): CBAM's map Ms of the chosen block in each stage, the weight (0 to 1) it gives "
    "each position before the residual add; shown stretched to its own range, which each label gives. Early "
    "stages see edges and texture, layer4 sees whole objects. **Channel attention** (plot): the weights Mc of the "
    "same blocks' channels, sorted from most boosted to most suppressed; the box names the most boosted channels "
    "by index. A flat curve near 0.5 means the block barely reweights its channels."
)


def nbytes(value: Any) -> int:
    """Bytes of memory the arrays, tensors and images in `value` hold (through dataclasses, dicts and sequences):
    what a cache entry costs. A tensor view counts its whole storage, which it keeps alive."""
    if isinstance(value, np.ndarray):
        return max(value.nbytes, nbytes(value.base))  # a view keeps its whole base alive
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands()) * (4 if value.mode in ("I", "F") else 1)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


class LRU:
    """A small thread-safe LRU cache; `get_or_compute` runs one computation per key at a time.

    `size` bounds the entries, `budget` (with `weigh`, e.g. `nbytes`) their total weight: the oldest go first.
    """

    def __init__(
        self, size: int | None = None, weigh: Callable[[Any], float] | None = None, budget: float | None = None
    ) -> None:
        self.size = math.inf if size is None else max(1, int(size))
        self.weigh, self.budget = weigh, budget  # optional: also evict while the total weight exceeds budget
        self._weight = 0.0
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Lock] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def weight(self) -> float:
        """The total weight of the entries held (bytes, with `nbytes`)."""
        with self._lock:
            return self._weight

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            if key in self._data:
                self._weight -= self._weigh(self._data[key])
            self._data[key] = value
            self._weight += self._weigh(value)
            self._data.move_to_end(key)
            while len(self._data) > self.size or (
                self.budget is not None and self._weight > self.budget and len(self._data) > 1
            ):
                _, old = self._data.popitem(last=False)
                self._weight -= self._weigh(old)

    def _weigh(self, value: Any) -> float:
        return float(self.weigh(value)) if self.weigh is not None else 0.0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        missing = object()
        value = self.get(key, missing)
        if value is not missing:
            return value
        with self._lock:
            flight = self._inflight.setdefault(key, threading.Lock())
        with flight:
            value = self.get(key, missing)
            if value is not missing:
                return value
            try:
                value = compute()
                self.put(key, value)
            finally:
                with self._lock:
                    if self._inflight.get(key) is flight:
                        del self._inflight[key]
        return value


@dataclass(frozen=True)
class SourceImage:
    """An uploaded image, decoded: RGB at full size, a hash of its pixels, and its base name (no directory)."""

    image: Image.Image
    key: str
    name: str


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


def image_key(image: Image.Image) -> str:
    """A hash of the pixels (and size and mode): equal for the same picture however it arrived."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def normalise_target(target: object) -> str:
    """'top1' for each model's own top-1 (also for empty input), else the stripped class name or index."""
    text = "" if target is None else str(target).strip()
    if text.lower().replace("-", "").replace(" ", "") in ("", "top1"):
        return TOP1
    return text


def check_controls(method: object, layer: object, opacity: object = 0.5, colormap: object = "jet") -> tuple:
    """Validate the rendering controls as they arrive from a form or an API call; CbamVizError says what is wrong."""
    method, layer = check_method_layer(method, layer)
    try:
        opacity = float(0.5 if opacity is None else opacity)
    except (TypeError, ValueError):
        raise CbamVizError(f"opacity must be a number from 0 to 1, not {echo(opacity)}") from None
    if not 0.0 <= opacity <= 1.0:
        raise CbamVizError(f"opacity must be from 0 to 1, not {opacity}")
    colormap = str(colormap or "jet").strip()
    if colormap not in COLORMAPS:
        raise CbamVizError(f"unknown colormap {echo(colormap)}; choose one of {', '.join(COLORMAPS)}")
    return method, layer, opacity, colormap


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
MAX_BOX_COORDINATE = MAX_PIXELS  # no image the app accepts has a side longer than this many pixels


def parse_box(text: object) -> tuple[float, float, float, float] | None:
    """'x0, y0, x1, y1' (any separators, brackets, exponents allowed) in pixels -> a tuple; None for an empty box."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        raw = str(text).strip()
        if not raw:
            return None
        values = re.findall(_NUMBER, raw)
        leftover = re.sub(_NUMBER, "", raw)
        if len(values) != 4 or re.search(r"[^\s,;()\[\]]", leftover):
            raise CbamVizError(f"the box must be four numbers 'x0, y0, x1, y1' in pixels, not {echo(raw)}")
    if len(values) != 4:
        raise CbamVizError("the box must be four numbers x0, y0, x1, y1 in pixels")
    box = []
    for value in values:
        try:
            number = float(value)
        except OverflowError:  # an int past float's range
            number = math.inf
        except (TypeError, ValueError):
            raise CbamVizError("the box must be four numbers x0, y0, x1, y1 in pixels") from None
        if math.isnan(number):
            raise CbamVizError("the box must be four numbers x0, y0, x1, y1 in pixels, not NaN")
        if abs(number) > MAX_BOX_COORDINATE:
            raise CbamVizError(
                f"the box coordinate {echo(value)} is out of range: x0, y0, x1, y1 are pixels of the uploaded image"
            )
        box.append(number)
    return tuple(box)  # type: ignore[return-value]


def format_box(box: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in box)


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
    ) -> None:
        missing = [key for key in MODEL_KEYS if key not in models]
        if missing:
            raise CbamVizError(f"the studio needs both models; missing: {', '.join(missing)}")
        self.models = {key: models[key] for key in MODEL_KEYS}
        self.max_side = max_side
        self.model_runs = 0  # model passes started (one per model per cache miss)
        self.slow_seconds = slow_seconds
        self.forward_seconds: float | None = None  # the fastest forward pass of one model on one image seen
        self.slow_pass_seconds: float | None = None  # one pass of a slow method, measured on its runs
        self._lock = threading.Lock()
        self._slow = threading.Lock()  # held by the one slow-method request that may run
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

    # ----------------------------------------------------------------------------------------------- inputs
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
        label = _base_name(name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image"))
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

    # --------------------------------------------------------------------------------------------- analysis
    def _count(self, runs: int) -> None:
        with self._lock:
            self.model_runs += runs

    def _base_entry(self, source: SourceImage) -> tuple[Image.Image, dict[str, ModelResult]]:
        def compute() -> tuple[Image.Image, dict[str, ModelResult]]:
            self._count(len(self.models))
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
        self, source: SourceImage, target: object = TOP1, method: str = DEFAULT_METHOD, layer: str = DEFAULT_LAYER
    ) -> Analysis:
        """Both models' heatmaps for `target` (class name/index for both, or 'top1' = each its own) by method/layer."""
        method, layer, _, _ = check_controls(method, layer)
        target = normalise_target(target)
        shown, base = self._base_entry(source)
        indices = {key: self.target_index(key, target, base[key]) for key in self.models}
        cached = all((source.key, key, method, layer, indices[key]) in self._results for key in self.models)
        with contextlib.nullcontext() if method not in SLOW_METHODS or cached else self._slow_slot(method, layer):
            results = {
                key: self._result(source, key, method, layer, indices[key], base[key], shown) for key in self.models
            }
        return Analysis(source, shown, results, target, method, layer)

    def _slow_passes(self, layer: str) -> list[int]:
        return [branch_channels(getattr(loaded.model, layer)[-1]) for loaded in self.models.values()]

    def slow_estimate(self, method: str, layer: str) -> tuple[int, float]:
        """(forward passes per model, estimated seconds for both models) of a slow method at `layer`: one pass per
        channel of the layer, each costing what the last runs measured (before any, a share of a forward pass)."""
        passes = self._slow_passes(layer)
        per_pass = self.slow_pass_seconds or SLOW_PASS_SHARE * (self.forward_seconds or 0.0)
        return max(passes), sum(passes) * per_pass

    @contextlib.contextmanager
    def _slow_slot(self, method: str, layer: str) -> Iterator[None]:
        """Run a slow method only if its estimated time is within slow_seconds and no other one is running."""
        label = METHODS[method][1].split(" (")[0]
        passes, seconds = self.slow_estimate(method, layer)
        if seconds > self.slow_seconds:
            raise CbamVizError(
                f"{label} at {layer} runs each model {passes} times (once per channel), about {_duration(seconds)} "
                f"on this server, over its limit of {_duration(self.slow_seconds)}: pick another method (one pass "
                "each) or an earlier layer"
            )
        if not self._slow.acquire(blocking=False):
            raise CbamVizError(f"another {label} request is running (they run one at a time): try again shortly")
        began = time.perf_counter()
        try:
            yield
            measured = (time.perf_counter() - began) / sum(self._slow_passes(layer))
            last = self.slow_pass_seconds
            self.slow_pass_seconds = measured if last is None else (last + measured) / 2
        finally:
            self._slow.release()

    def _result(
        self, source: SourceImage, key: str, method: str, layer: str, index: int, base: ModelResult, shown: Image.Image
    ) -> ModelResult:
        if (base.method, base.layer, base.targets) == (method, layer, [index]):
            return base
        loaded = self.models[key]

        def compute() -> ModelResult:
            known = from_features(loaded, base, method, layer, index, shown.size)
            if known is not None:
                return known
            self._count(1)
            comparison = run_models(
                [source.image], {key: loaded}, target=index, method=method, layer=layer, max_side=self.max_side
            )[0]
            return comparison.results[key]

        return self._results.get_or_compute((source.key, key, method, layer, index), compute)

    # ------------------------------------------------------------------------------------------ localization
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


SEND_A_FILE = "send the image as a file upload (gradio_client: handle_file(path))"
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def check_upload(
    payload: object, within: Sequence[str | os.PathLike] | None = None
) -> tuple[str, str | None, str | None] | None:
    """(label, path, data URL) that an upload payload names, None when empty; no file is opened or decoded.

    `within`: the folders an uploaded file must be in (the server's upload folder). The web app passes it, and
    then only FileData dicts naming a file there (or carrying a data: URL) are uploads: a text string or any
    other server path gets an ImageError saying what to send, so an API call can never name a server file.
    """
    if payload is None or (payload == "" and within is None):
        return None
    if isinstance(payload, (str, os.PathLike)):
        if within is not None:
            text = os.fspath(payload)
            if not text:
                raise ImageError(f"no image was sent: {SEND_A_FILE}")
            if _URL.match(text):
                raise ImageError(f"the image was sent as a URL, which the server does not fetch: {SEND_A_FILE}")
            raise ImageError(f"the image was sent as a text string, not a file: {SEND_A_FILE}")
        path, name, url = os.fspath(payload), None, None
    elif isinstance(payload, dict):
        path, name, url = payload.get("path"), payload.get("orig_name"), payload.get("url")
    else:
        kind = type(payload).__name__
        raise ImageError(f"the image was sent as a value of type {kind}, not a file: {SEND_A_FILE}")
    label = _base_name(name or path or "image")
    if isinstance(url, str) and url.startswith("data:"):
        return label, None, url
    if not path or not isinstance(path, str):
        raise ImageError(f"no image file was received: {SEND_A_FILE}")
    if _URL.match(path):
        raise ImageError(f"{label} is a URL, which the server does not fetch: {SEND_A_FILE}")
    if within is not None and not _inside(path, within):
        raise ImageError(f"{label} was not uploaded to this app: {SEND_A_FILE}")
    return label, path, None


def slow_methods_note(slow_seconds: float) -> str:
    """What the page says up front about the slow methods (the method dropdown's info line)."""
    names = " and ".join(METHODS[m][1].split(" (")[0] for m in SLOW_METHODS)
    return (
        f"{names}: slow, one forward pass per channel (256 at layer1 to 2048 at layer4); one runs at a time, and "
        f"one estimated over {_duration(slow_seconds)} is refused. The others take one pass."
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _inside(path: object, folders: Sequence[str | os.PathLike]) -> bool:
    """Whether `path`, with symlinks and '..' resolved, lies inside one of `folders` (no file is opened)."""
    try:
        real = os.path.realpath(os.fspath(path))  # type: ignore[arg-type]
    except (TypeError, ValueError, OSError):
        return False
    for folder in folders:
        root = os.path.realpath(os.fspath(folder))
        if real != root and is_within(real, root):
            return True
    return False


# ---------------------------------------------------------------------------------------------- rendering
def _base_name(name: object) -> str:
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c if c.isprintable() else "?" for c in base) or "image"


def heatmap_overlay(analysis: Analysis, key: str, opacity: float = 0.5, colormap: str = "jet") -> Image.Image:
    """The model's heatmap for the target blended over the displayed image (pure rendering, no model call)."""
    return overlay(analysis.image, analysis.results[key].heatmaps[0], opacity, colormap)


def caption_markdown(result: ModelResult) -> str:
    """The lines under a heatmap, as in the paper's figure: the explained class, then its softmax P."""
    target = result.target
    return f"{_md(target.label)}  \n**P = {target.prob:.3f}**"


def top5_label(result: ModelResult) -> dict[str, float]:
    """The top-5 as gr.Label wants it: {class: probability}."""
    return {p.label: round(p.prob, 6) for p in result.top5}


def pick_block(attention: Any, stage: str, block: object) -> str:
    """The requested block if it belongs to `stage`, else the stage's last block."""
    blocks = attention.stage(int(stage[-1]))
    if not blocks:
        raise CbamVizError(f"the CBAM model has no attention maps in {stage}")
    return str(block) if block in blocks else blocks[-1]


def attention_overlay(
    analysis: Analysis, block: str, opacity: float = 0.5, colormap: str = "jet"
) -> tuple[Image.Image, str]:
    """One CBAM block's spatial attention, stretched to [0, 1] and overlaid; plus a caption with its true range."""
    attention = analysis.results["cbam"].attention
    if attention is None:
        raise CbamVizError("the CBAM checkpoint recorded no attention maps")
    spatial = attention.spatial[block].float().cpu().numpy()
    low, high = float(spatial.min()), float(spatial.max())
    stretched = (spatial - low) / (high - low) if high > low else np.zeros_like(spatial)
    image = overlay(analysis.image, stretched.astype(np.float32), opacity, colormap)
    h, w = spatial.shape
    return image, f"{block} · {w}×{h} · Ms from {low:.2f} to {high:.2f}"


def last_attention_agreement(result: ModelResult) -> tuple[str, float] | None:
    """Pearson correlation between CBAM's last spatial attention map and the result's heatmap (None for baseline)."""
    if result.attention is None or not result.attention.blocks:
        return None
    block = result.attention.blocks[-1]
    heat = result.heatmaps[0]
    spatial = result.attention.spatial[block].float().cpu().numpy()[None]
    return block, agreement(upsample(spatial, (heat.shape[1], heat.shape[0]))[0], heat)


def localization_preview(analysis: Analysis, localization: Localization | None) -> Image.Image:
    """The displayed image with the object's outline (mask or box) and each model's heatmap peak marked."""
    image = analysis.image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    line = max(2, round(min(w, h) / 150))
    if localization is not None:
        mask = localization.mask
        edge = mask & ~_erode(mask)
        shade = np.asarray(image).copy()
        shade[~mask] = (shade[~mask] * 0.55).astype(np.uint8)
        shade[_dilate(edge, line // 2)] = (255, 255, 255)
        image = Image.fromarray(shade)
        draw = ImageDraw.Draw(image)
    r = max(4, round(min(w, h) / 40))
    for key, color in (("baseline", (0, 160, 255)), ("cbam", (255, 60, 200))):
        y, x = peak(analysis.results[key].heatmaps[0])
        if key == "baseline":
            draw.ellipse((x - r, y - r, x + r, y + r), outline=color, width=line)
        else:
            draw.rectangle((x - r, y - r, x + r, y + r), outline=color, width=line)
    return image


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    out = mask.copy()
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        out &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(max(0, radius)):
        padded = np.pad(out, 1, constant_values=False)
        grown = out.copy()
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            grown |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
        out = grown
    return out


def localization_markdown(analysis: Analysis, localization: Localization | None) -> str:
    """A small table: pointing-game hit and energy inside the mask/box per model, plus CBAM's agreement score."""
    lines = []
    if localization is None:
        lines.append(
            "No object location for this image. Pick a bundled example (they ship object masks), type a box "
            "below, or click two opposite corners of the object on this image."
        )
    else:
        where = (
            f"the box {format_box(localization.box)}" if localization.box is not None else "the example's object mask"
        )
        lines += [
            f"Object location: {where} (outlined). Heatmap peaks: circle = ResNet50, square = CBAM.",
            "",
            "| model | target | pointing game | energy in " + ("box" if localization.box else "mask") + " |",
            "|---|---|---|---|",
        ]
        for key, res in analysis.results.items():
            s = localization.scores[key]
            hit = "**hit**" if s["pointing_hit"] else "miss"
            lines.append(f"| {res.meta.display_name} | {_md(res.target.label)} | {hit} | {s['energy_in_mask']:.1%} |")
    agree = last_attention_agreement(analysis.results["cbam"])
    if agree is not None:
        lines += [
            "",
            f"**Attention–CAM agreement** (CBAM): Pearson r = **{agree[1]:.3f}** between its last spatial attention "
            f"map ({agree[0]}) and its {METHODS[analysis.method][1].split(' (')[0]} map for "
            f"{_md(analysis.results['cbam'].target.label)}.",
        ]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Escape Markdown control characters in a class name."""
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", str(text))


def _prediction(p: Any) -> dict[str, Any]:
    return {"label": p.label, "index": p.index, "p": round(float(p.prob), 6)}


def scores_json(analysis: Analysis, localization: Localization | None = None) -> dict[str, Any]:
    """What the `compare` API returns: per model top-5 and P, the target and P, localization when known."""
    models = {}
    for key, res in analysis.results.items():
        entry: dict[str, Any] = {
            "model": res.meta.display_name,
            "arch": res.meta.arch,
            "top5": [_prediction(p) for p in res.top5],
            "target": _prediction(res.target),
            "localization": None,
        }
        if localization is not None:
            s = localization.scores[key]
            entry["localization"] = {
                "pointing_hit": bool(s["pointing_hit"]),
                "energy_in_mask": round(float(s["energy_in_mask"]), 6),
            }
        entry["familiarity"] = res.familiarity.as_json() if res.familiarity else None
        agree = last_attention_agreement(res)
        if agree is not None:
            entry["attention_agreement"] = {"block": agree[0], "pearson": round(agree[1], 6)}
        models[key] = entry
    return {
        "image": {
            "name": analysis.source.name,
            "width": analysis.source.image.width,
            "height": analysis.source.image.height,
            "analysed_width": analysis.image.width,
            "analysed_height": analysis.image.height,
        },
        "target": analysis.target,
        "method": analysis.method,
        "method_label": METHODS[analysis.method][1],
        "layer": analysis.layer,
        "localization": None
        if localization is None
        else {"source": localization.source, "box": list(localization.box) if localization.box else None},
        "models": models,
    }


def model_info_markdown(loaded: LoadedModel, max_classes: int = 60) -> str:
    """The checkpoint's metadata for the model-info panel (the file's base name only, never a server path)."""
    meta = loaded.meta
    names = meta.class_names
    shown = ", ".join(_md(n) for n in names[:max_classes])
    if len(names) > max_classes:
        shown += f", … ({len(names) - max_classes} more)"
    params = sum(p.numel() for p in loaded.model.parameters())
    lines = [
        f"### {meta.display_name}",
        f"- **checkpoint**: `{_base_name(meta.source) if meta.source else 'n/a'}` "
        f"({meta.arch}, {params / 1e6:.1f} M parameters)",
        f"- **input**: {meta.input_size}×{meta.input_size} px, mean {_floats(meta.mean)}, std {_floats(meta.std)}",
        f"- **classes** ({len(names)}): {shown}",
    ]
    if meta.cbam is not None:
        lines.append(f"- **CBAM blocks**: {meta.cbam.describe()}")
    lines.append(f"- **familiarity**: {familiarity_summary(loaded)}")
    tables = (("dataset", meta.dataset), ("training recipe", meta.recipe), ("validation metrics", meta.metrics))
    for title, table in tables:
        if not table:
            lines.append(f"- **{title}**: not recorded in the checkpoint")
            continue
        lines.append(f"- **{title}**:")
        lines += [f"    - {_md(str(k))}: {_md(_value(v))}" for k, v in table.items()]
    return "\n".join(lines)


# What each known training set looks like, for the panel that says what the models know.
DATASET_KINDS = {
    "stamp scenes": (
        "stamp subjects",
        "photos of single objects (Tux Paint's photographic stamps) pasted onto nature photographs, with up to "
        "two other objects as clutter",
    ),
    "ImageNet-1k": ("ImageNet classes", "ImageNet photographs"),
}


def known_classes(meta: Any) -> str:
    """'the 32 stamp subjects', 'the 1000 ImageNet classes', or 'the 5 classes' of a checkpoint."""
    noun = DATASET_KINDS.get(meta.dataset.get("name", ""), ("classes", ""))[0]
    return f"the {meta.num_classes} {noun}"


def knowledge_markdown(models: dict[str, LoadedModel]) -> str:
    """What the models were trained to recognise and on which kind of images (shown beside the upload)."""
    described: dict[str, list[str]] = {}
    for loaded in models.values():
        meta = loaded.meta
        kind = DATASET_KINDS.get(meta.dataset.get("name", ""), ("", ""))[1]
        described.setdefault(known_classes(meta) + (f", trained on {kind}" if kind else ""), []).append(
            meta.display_name
        )
    lines = [
        f"**{' and '.join(names)}** know{'s' if len(names) == 1 else ''} {what}." for what, names in described.items()
    ]
    lines.append(
        "Other photos still get a class and a heatmap, but those mean nothing: a warning above the heatmaps says "
        "when an image looks unlike the training images."
    )
    return "  \n".join(lines)


def familiarity_banner(analysis: Analysis) -> str:
    """A warning naming the models that find the image unfamiliar; '' when every model with a detector finds it
    familiar (or none has one)."""
    strangers = [res for res in analysis.results.values() if res.familiarity and res.familiarity.unfamiliar]
    if not strangers:
        return ""
    names = " and ".join(res.meta.display_name for res in strangers)
    classes = known_classes(strangers[0].meta)
    whose = "these models were" if len(strangers) == len(analysis.results) else f"{names} was"
    return (
        f"⚠️ **This image looks unlike {classes} {whose} trained on** (unfamiliar to {names}): "
        "the top-5 and heatmaps here are not meaningful."
    )


def familiarity_summary(loaded: LoadedModel) -> str:
    """One line on the checkpoint's familiarity detector, or 'not available'."""
    fam = loaded.familiarity
    if fam is None:
        return "not available (the checkpoint carries no familiarity statistics)"
    fit = f", fit on {fam.info['train_images']} training images" if "train_images" in fam.info else ""
    keep = fam.info.get("keep", 0.95)
    score = SCORE_NAMES.get(fam.method, fam.method)
    return f"{fam.method} ({score}), threshold {fam.threshold:.4g}{fit} (keeps {keep:.0%} of validation images familiar)"


def _floats(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    return str(value)


def save_once(image: Image.Image, folder: str | os.PathLike, fmt: str = "webp") -> Path:
    """Write `image` as folder/<new random id>.fmt, atomically, and return the path: a file that is never
    rewritten, so a client still reading an earlier response's picture cannot see it change."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    path = Path(folder) / f"{uuid.uuid4().hex}.{fmt}"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def delete_old_files(folder: str | os.PathLike, older_than: float) -> int:
    """Delete the files directly in `folder` whose ctime is `older_than` seconds or more ago; returns how many."""
    removed, cutoff = 0, time.time() - older_than
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_ctime <= cutoff:
                os.remove(entry.path)
                removed += 1
        except OSError:
            pass
    return removed


def prune_empty_folders(root: str | os.PathLike, older_than: float) -> int:
    """Remove the empty folders below `root` untouched for `older_than` seconds; returns how many.

    Deleting old uploads leaves each one's folder behind, so without this the folders alone would grow without
    bound under a sustained load.
    """
    removed, cutoff, root = 0, time.time() - older_than, os.fspath(root)
    for folder, _, files in os.walk(root, topdown=False):
        if folder == root or files:
            continue
        try:
            if os.stat(folder).st_mtime < cutoff:
                os.rmdir(folder)  # fails, harmlessly, if a file arrived meanwhile
                removed += 1
        except OSError:
            pass
    return removed


# ------------------------------------------------------------------------------------------------ exports
class ExportFolder:
    """A private temporary folder for exported figures; each export gets its own subfolder, pruned after an hour."""

    def __init__(self, root: str | Path | None = None, keep_seconds: float = 3600.0) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="cbam-studio-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_seconds = keep_seconds

    def new(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def export_figure(
    studio: Studio,
    sources: Sequence[SourceImage],
    folder: str | Path,
    *,
    target: object = TOP1,
    method: str = DEFAULT_METHOD,
    layer: str = DEFAULT_LAYER,
    opacity: float = 0.5,
    colormap: str = "jet",
    title: str | None = None,
) -> tuple[Path, Path]:
    """The paper figure (PNG and PDF) for these images with the current controls; returns (png, pdf)."""
    if not sources:
        raise CbamVizError("add an image first: upload one, pick an example, or add files for the figure")
    if len(sources) > MAX_FIGURE_ROWS:
        raise CbamVizError(f"the figure takes at most {MAX_FIGURE_ROWS} images; {len(sources)} were given")
    method, layer, opacity, colormap = check_controls(method, layer, opacity, colormap)
    rows = []
    for source in sources:
        analysis = studio.analyse(source, target, method, layer)
        rows.append((analysis.image, analysis.results["baseline"], analysis.results["cbam"]))
    folder = Path(folder)
    png, pdf = folder / f"{FIGURE_STEM}.png", folder / f"{FIGURE_STEM}.pdf"
    paper_figure(rows, png, pdf, title=(title or "").strip() or None, opacity=opacity, colormap=colormap)
    return png, pdf
