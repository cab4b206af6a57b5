"""CAM engine: exact Grad-CAM at layer4 from the forward pass alone; every other method and layer via grad-cam.

For a ResNet (global average pooling, then fc), the gradient of logit c w.r.t. layer4 activation A_k(i,j) is
W_fc[c,k] / (h*w), so Grad-CAM there is ReLU(sum_k W_fc[c,k] A_k) up to a positive scale: heatmaps for any
number of target classes cost one matrix product, no backward pass. `compare` is the one entry point the app,
the export CLI and the evaluation call.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision.transforms.v2 import functional as TF

from cbam_viz.cam.scorecam import BoundedScoreCAM, RunControl
from cbam_viz.errors import CbamVizError, echo
from cbam_viz.familiarity.detectors import FamiliarityScore, Maps
from cbam_viz.io.checkpoints import LoadedModel, ModelMeta
from cbam_viz.io.images import load_image
from cbam_viz.nn.attention import AttentionMaps, capture_attention
from cbam_viz.nn.resnet import STAGES, branch_channels, forward_maps


@dataclass(frozen=True)
class CamMethod:
    """A CAM method the tool offers: grad-cam's class for it, the name people see, whether it is slow (one forward
    pass per channel: the app gives it a queue slot of its own and a time limit) and whether it runs a backward
    pass (those share the model's parameter gradients, so their passes on one model take turns)."""

    name: str
    cam_class: type
    label: str
    slow: bool = False
    gradients: bool = True

    @property
    def choice(self) -> str:
        """The label of the method control, which warns of a slow method."""
        return f"{self.label} (slow: one forward pass per channel)" if self.slow else self.label


METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("gradcam", GradCAM, "Grad-CAM"),
        CamMethod("gradcam++", GradCAMPlusPlus, "Grad-CAM++"),
        CamMethod("hirescam", HiResCAM, "HiResCAM"),
        CamMethod("layercam", LayerCAM, "LayerCAM"),
        CamMethod("xgradcam", XGradCAM, "XGradCAM"),
        CamMethod("eigencam", EigenCAM, "EigenCAM", gradients=False),
        CamMethod("scorecam", BoundedScoreCAM, "ScoreCAM", slow=True, gradients=False),
    )
}
SLOW_METHODS = tuple(name for name, method in METHODS.items() if method.slow)
LAYERS = STAGES
DEFAULT_METHOD = "gradcam"
DEFAULT_LAYER = "layer4"
TargetSpec = int | str


@dataclass
class Prediction:
    """One class with its softmax probability."""

    index: int
    label: str
    prob: float


@dataclass
class ModelResult:
    """One model's answer for one image: top-5, CAMs for the requested targets, attention, layer4 features, and
    whether the image looks like the model's training data (None where the checkpoint has no detector)."""

    meta: ModelMeta
    probs: np.ndarray  # (num_classes,) softmax
    targets: list[int]  # class indices the heatmaps explain
    cams: np.ndarray  # (T, h, w) CAMs at the chosen layer's resolution, ReLU'd, not normalised
    heatmaps: np.ndarray  # (T, H, W) float32 in [0, 1], at the displayed image's size
    attention: AttentionMaps | None  # CBAM blocks' maps (None for the baseline)
    features: torch.Tensor  # (K, h, w) layer4 activations: any other class's Grad-CAM without a rerun
    method: str
    layer: str
    familiarity: FamiliarityScore | None = None

    def prediction(self, index: int) -> Prediction:
        return Prediction(index, self.meta.class_names[index], float(self.probs[index]))

    @property
    def top5(self) -> list[Prediction]:
        order = np.argsort(-self.probs, kind="stable")[:5]
        return [self.prediction(int(i)) for i in order]

    @property
    def target(self) -> Prediction:
        """The first target: the class the main heatmap explains."""
        return self.prediction(self.targets[0])


@dataclass
class Comparison:
    """Both models' results for one image (`image` is the RGB image the heatmaps are sized to)."""

    image: Image.Image
    results: dict[str, ModelResult]


def preprocess(images: Sequence[Image.Image], meta: ModelMeta, size: int | None = None) -> torch.Tensor:
    """Resize each whole image to size×size (the heatmap then covers all of it) and normalise: (N, 3, S, S)."""
    size = size or meta.input_size
    batch = [
        TF.to_dtype(TF.resize(TF.pil_to_tensor(im), [size, size], antialias=True), torch.float32, scale=True)
        for im in images
    ]
    return TF.normalize(torch.stack(batch), list(meta.mean), list(meta.std))


def check_method_layer(method: object, layer: object) -> tuple[str, str]:
    """The CAM method and layer as a form, an API call or a command line gives them (case and surrounding spaces
    ignored, empty for the default); CbamVizError lists the choices."""
    method = str(method or DEFAULT_METHOD).strip().lower()
    if method not in METHODS:
        raise CbamVizError(f"unknown CAM method {echo(method)}; choose one of {', '.join(METHODS)}")
    layer = str(layer or DEFAULT_LAYER).strip().lower()
    if layer not in LAYERS:
        raise CbamVizError(f"unknown layer {echo(layer)}; choose one of {', '.join(LAYERS)}")
    return method, layer


def fit_within(image: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale (never upscale) so the longer side is at most `max_side`, keeping the aspect ratio."""
    if not max_side or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def resolve_target(spec: TargetSpec, meta: ModelMeta, probs: np.ndarray) -> list[int]:
    """Turn 'top1', 'top5', an index, or a class name into class indices; CbamVizError names the closest classes."""
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().lstrip("-").isdigit()):
        index = int(spec)
        if not 0 <= index < meta.num_classes:
            raise CbamVizError(f"class index {index} is out of range: this model has {meta.num_classes} classes")
        return [index]
    text = str(spec).strip()
    if text.lower().startswith("top") and text[3:].isdigit():
        k = min(int(text[3:]), meta.num_classes)
        return [int(i) for i in np.argsort(-probs, kind="stable")[:k]]
    lowered = [name.lower() for name in meta.class_names]
    if text.lower() in lowered:
        return [lowered.index(text.lower())]
    close = difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(meta.class_names[lowered.index(c)]) for c in close)}?" if close else ""
    raise CbamVizError(f"unknown target class {text!r} for {meta.display_name}{hint}")


@torch.no_grad()
def fast_gradcam(fc_weight: torch.Tensor, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Exact layer4 Grad-CAM (up to a positive scale): ReLU(sum_k W[c,k] A_k). features (N,K,h,w), targets (N,T)."""
    weights = fc_weight.float()[targets]  # (N, T, K)
    return F.relu(torch.einsum("ntk,nkhw->nthw", weights, features.float()))


def is_fast_path(method: str, layer: str) -> bool:
    """Whether the CAM is layer4 Grad-CAM, which `fast_gradcam` computes exactly from the forward pass alone."""
    return method == "gradcam" and layer == "layer4"


def from_features(
    loaded: LoadedModel, result: ModelResult, method: str, layer: str, index: int, size: tuple[int, int]
) -> ModelResult | None:
    """`result` explaining class `index` by `method` at `layer`, sized (W, H) = `size`, from the layer4 features it
    carries (no model call); None unless that is the fast path."""
    if not is_fast_path(method, layer):
        return None
    weight = loaded.model.fc.weight.detach().cpu()
    cams = fast_gradcam(weight, result.features[None], torch.tensor([[index]]))[0].numpy()
    return replace(result, targets=[index], cams=cams, heatmaps=upsample(cams, size), method=method, layer=layer)


def upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalise each (h, w) CAM to [0, 1] and resize to size=(W, H) exactly as grad-cam does (then renormalise)."""
    return scale_cam_image(scale_cam_image(cams, size))


class OwnThreadActivations(ActivationsAndGradients):
    """grad-cam's hook recorder, deaf to forwards that other threads run through the shared model meanwhile.

    grad-cam's hooks sit on the model's layer and would record every forward passing through it, so a
    concurrent request's plain forward would land in this pass's activations and mix two users' heatmaps.
    """

    def __init__(self, model: torch.nn.Module, target_layers: list[torch.nn.Module]) -> None:
        self.owner = threading.get_ident()
        super().__init__(model, target_layers, reshape_transform=None)

    def save_activation(self, module, input, output) -> None:
        if threading.get_ident() == self.owner:
            super().save_activation(module, input, output)

    def save_gradient(self, module, input, output) -> None:
        if threading.get_ident() == self.owner:
            super().save_gradient(module, input, output)


def package_cam(
    loaded: LoadedModel,
    x: torch.Tensor,
    targets: list[list[int]],
    method: str,
    layer: str,
    control: RunControl | None = None,
) -> np.ndarray:
    """Any grad-cam method on any stage: (N, T, S, S) normalised CAMs at the input size, one call per target slot.

    Passes of the gradient methods on one model are serialised (their backward passes share its parameters'
    .grad); the methods without a backward (ScoreCAM, EigenCAM) and the lock-free fast path run beside them, because
    the recorder ignores other threads' forwards. `control` steers ScoreCAM (its count spans every target slot).
    """
    spec = METHODS[method]
    target_layers = [getattr(loaded.model, layer)]
    slots = len(targets[0])
    with spec.cam_class(model=loaded.model, target_layers=target_layers) as cam:
        cam.activations_and_grads.release()
        if isinstance(cam, BoundedScoreCAM) and control is not None:
            passes = slots * len(x) * branch_channels(target_layers[0][-1])
            cam.control = control if control.total else replace(control, total=passes)
        with loaded.lock if spec.gradients else contextlib.nullcontext():
            cam.activations_and_grads = OwnThreadActivations(loaded.model, target_layers)
            cams = [
                cam(input_tensor=x, targets=[ClassifierOutputTarget(t[slot]) for t in targets])
                for slot in range(slots)
            ]
            if spec.gradients:
                loaded.model.zero_grad(set_to_none=True)  # free the parameter gradients its backward left behind
    return np.stack(cams, axis=1).astype(np.float32)


def run_models(
    images: Sequence[Image.Image],
    models: dict[str, LoadedModel],
    target: TargetSpec | Sequence[TargetSpec] = "top1",
    method: str = DEFAULT_METHOD,
    layer: str = DEFAULT_LAYER,
    max_side: int | None = 1024,
    image_targets: Sequence[TargetSpec] | None = None,
    input_size: int | None = None,
    control: RunControl | None = None,
) -> list[Comparison]:
    """Run every model once on a batch of RGB images; return one Comparison per image.

    `target` applies to every image; `image_targets` (one spec per image, e.g. ground-truth labels) overrides it.
    `input_size` feeds the networks another side than the one each was trained at (default: the trained one).
    `control` (progress, cancel, deadline) steers ScoreCAM, counting each model's passes apart; the one-pass methods
    ignore it.
    """
    method, layer = check_method_layer(method, layer)
    if image_targets is not None:
        if len(image_targets) != len(images):
            raise CbamVizError(f"{len(image_targets)} targets given for {len(images)} images")
        specs = [[spec] for spec in image_targets]
    else:
        specs = [[target] if isinstance(target, (str, int, np.integer)) else list(target)] * len(images)
    shown = [fit_within(im, max_side) for im in images]
    per_model = {
        key: _run_one(loaded, images, shown, specs, method, layer, input_size, control)
        for key, loaded in models.items()
    }
    return [Comparison(im, {key: res[i] for key, res in per_model.items()}) for i, im in enumerate(shown)]


def compare(
    image: Image.Image | str | os.PathLike[str],
    models: dict[str, LoadedModel],
    target: TargetSpec | Sequence[TargetSpec] = "top1",
    method: str = DEFAULT_METHOD,
    layer: str = DEFAULT_LAYER,
    max_side: int | None = 1024,
) -> Comparison:
    """Both models on one image (a PIL image, or a path read with `load_image`): top-5 (labels, softmax P), heatmaps
    for the target(s), attention maps."""
    if not isinstance(image, Image.Image):
        image = load_image(image)
    return run_models([image], models, target, method, layer, max_side)[0]


def _run_one(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    shown: Sequence[Image.Image],
    specs: list[list[TargetSpec]],
    method: str,
    layer: str,
    input_size: int | None,
    control: RunControl | None,
) -> list[ModelResult]:
    model, meta = loaded.model, loaded.meta
    x = preprocess(images, meta, input_size).to(loaded.device)
    with torch.inference_mode(), capture_attention() as maps:
        logits, layer3, features = forward_maps(model, x)
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        familiarity = None
        if loaded.familiarity is not None:
            familiarity = loaded.familiarity.judge(Maps(layer3.cpu(), features.cpu()), probs)
    targets = [[c for spec in spec_list for c in resolve_target(spec, meta, p)] for spec_list, p in zip(specs, probs)]
    if len(set(map(len, targets))) != 1:
        raise CbamVizError("every image needs the same number of targets")
    if is_fast_path(method, layer):
        index = torch.tensor(targets, device=features.device)
        cams = fast_gradcam(model.fc.weight, features, index).cpu().numpy()
    else:
        cams = package_cam(loaded, x, targets, method, layer, control)
    results = []
    for i, image in enumerate(shown):
        results.append(
            ModelResult(
                meta=meta,
                probs=probs[i],
                targets=targets[i],
                cams=cams[i],
                heatmaps=upsample(cams[i], image.size),
                attention=maps.select(i) if maps.blocks else None,
                features=features[i].float().cpu(),
                method=method,
                layer=layer,
                familiarity=familiarity[i] if familiarity else None,
            )
        )
    return results
