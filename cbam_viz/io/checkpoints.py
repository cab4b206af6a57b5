"""Checkpoint formats: our safetensors (+ JSON metadata), torchvision ResNet `.pth`, and the official CBAM layout.

Every loader returns a ready `LoadedModel` (eval mode) plus the metadata needed to use it (class names,
input size, mean/std). `.pth` files are read only with `torch.load(weights_only=True)`: no pickle code runs.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save_file
from torch import nn

from cbam_viz.errors import CbamVizError
from cbam_viz.familiarity.detectors import STORED_METHODS, TENSOR_PREFIX, Familiarity
from cbam_viz.io.fileio import atomic_path
from cbam_viz.io.weights import BUNDLED
from cbam_viz.nn.cbam import CBAMConfig
from cbam_viz.nn.resnet import ARCHS, DISPLAY_NAMES, build_model, infer_arch, infer_cbam_config, parse_arch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_TAG = "cbam_viz"


class CheckpointError(CbamVizError):
    """A checkpoint file that cannot be read or does not fit the architecture."""


class FamiliarityWarning(UserWarning):
    """A checkpoint's familiarity statistics are unusable: the model loads without them."""


@dataclass
class ModelMeta:
    """What a checkpoint says about its model: enough to preprocess, label and describe it."""

    arch: str
    class_names: list[str]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    source: str = ""
    cbam: CBAMConfig | None = None  # CBAM architectures: the blocks' options (loaders fill it in when absent)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def display_name(self) -> str:
        """The name people see, e.g. CBAM-ResNet50, plus how an ablation variant differs from the paper's design."""
        name = DISPLAY_NAMES.get(self.arch, self.arch)
        variant = self.cbam.differences() if self.cbam else ""
        return f"{name} ({variant})" if variant else name


@dataclass
class LoadedModel:
    """A model in eval mode on its device, with its metadata and familiarity detector (None where the checkpoint
    has none); `lock` serialises hook-based (grad-cam) passes."""

    model: nn.Module
    meta: ModelMeta
    familiarity: Familiarity | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    meta: ModelMeta,
    dtype: torch.dtype = torch.float16,
    familiarity: Familiarity | None = None,
) -> None:
    """Write the model's state (floating tensors cast to `dtype`), metadata and familiarity statistics to a
    safetensors file, atomically."""
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    _write(path, state, {"format": FORMAT_TAG, "meta": json.dumps({**asdict(meta), "source": ""})}, familiarity)


def store_familiarity(path: str | Path, familiarity: Familiarity) -> None:
    """Put `familiarity` into our safetensors checkpoint at `path` (replacing any there), atomically; the model's
    tensors and metadata are kept byte for byte."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path.name}: familiarity statistics are stored in cbam_viz safetensors checkpoints only"
        )
    state, header = _read_raw(path)
    if header.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path.name} is not a cbam_viz checkpoint: familiarity statistics cannot be stored")
    model_state = {k: v for k, v in state.items() if not k.startswith(TENSOR_PREFIX)}
    _write(path, model_state, {k: v for k, v in header.items() if k != "familiarity"}, familiarity)


def _write(path: str | Path, state: dict, header: dict[str, str], familiarity: Familiarity | None) -> None:
    if familiarity is not None:
        state = {**state, **{TENSOR_PREFIX + k: v.detach().cpu().contiguous() for k, v in familiarity.tensors.items()}}
        header = {**header, "familiarity": json.dumps(familiarity.header())}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=header)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", arch: str | None = None) -> LoadedModel:
    """Load any supported checkpoint format; `arch` is inferred from the keys unless given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        state, meta, header = _read_safetensors(path)
    else:
        (state, meta), header = _read_torch(path), {}
    if arch is not None and arch != meta.arch:
        raise CheckpointError(f"{path.name} holds a {meta.arch} checkpoint, but {arch} was asked for")
    meta.source = str(path)
    tensors = {k[len(TENSOR_PREFIX) :]: state.pop(k) for k in [k for k in state if k.startswith(TENSOR_PREFIX)]}
    model = _build_and_fill(state, meta, path.name)
    familiarity = read_familiarity(tensors, header.get("familiarity"), meta, model.fc.in_features, path.name)
    return LoadedModel(model.to(device).eval(), meta, familiarity)


def read_familiarity(
    tensors: dict[str, torch.Tensor], header: str | None, meta: ModelMeta, features: int, name: str
) -> Familiarity | None:
    """The checkpoint's familiarity detector, or None; unusable statistics give a FamiliarityWarning naming them."""
    if header is None and not tensors:
        return None
    try:
        if header is None:
            raise ValueError(f"tensors {', '.join(sorted(tensors))} without their header entry")
        info = json.loads(header)
        method, threshold = info.pop("method"), float(info.pop("threshold"))
        if method not in STORED_METHODS or not np.isfinite(threshold):
            raise ValueError(f"method {method!r} with threshold {threshold}")
        _check_familiarity_tensors(method, tensors, meta.num_classes, features)
    except (KeyError, TypeError, ValueError) as err:
        warnings.warn(
            f"{name}: familiarity statistics are unusable ({err}); the model loads without them "
            "(familiarity: not available)",
            FamiliarityWarning,
            stacklevel=3,
        )
        return None
    return Familiarity(method, threshold, {k: v.float() for k, v in tensors.items()}, info)


def _check_familiarity_tensors(method: str, tensors: dict[str, torch.Tensor], classes: int, features: int) -> None:
    shapes = {
        "mahalanobis": {"whitening": (features, features), "means": (classes, features)},
        "knn": {"bank": (None, features)},
        "knn+msp": {"bank": (None, features), "standardise": (2, 2)},
        "patches": {"patches": (None, None), "projection": (features // 2, None),
                    "classifier": (classes, features + 1), "standardise": (2, 3)},
    }[method]
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise ValueError(f"missing tensor(s) {', '.join(TENSOR_PREFIX + k for k in missing)}")
    for key, shape in shapes.items():
        tensor = tensors[key]
        if tensor.ndim != len(shape) or any(want not in (None, got) for want, got in zip(shape, tensor.shape)):
            raise ValueError(f"{TENSOR_PREFIX}{key} has shape {tuple(tensor.shape)}, expected {shape}")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ValueError(f"{TENSOR_PREFIX}{key} holds non-finite or non-float values")
    if method == "patches" and tensors["patches"].shape[1] != tensors["projection"].shape[1]:
        raise ValueError(f"{TENSOR_PREFIX}patches and {TENSOR_PREFIX}projection differ in width")


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors, copied out of it (a server holding tensors over a mapped file would keep all of its
    pages resident), and its metadata."""
    try:
        state = load(path.read_bytes())
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({err})") from None
    return state, header


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelMeta, dict[str, str]]:
    state, header = _read_raw(path)
    name = path.name
    if header.get("format") == FORMAT_TAG:
        try:
            fields = json.loads(header["meta"])
            fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
            if fields.get("cbam") is not None:
                fields["cbam"] = CBAMConfig.from_dict(fields["cbam"])
            return state, ModelMeta(**fields), header
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{name} has damaged metadata ({err})") from None
    state, meta = _normalise_foreign(state, name)
    return state, meta, header


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad or unsafe files
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path.name} could not be loaded safely as a PyTorch checkpoint (weights only; "
            f"code in pickles is never run): {reason}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not contain a state_dict of tensors")
    return _normalise_foreign(obj, path.name)


# Official key -> ours; its ChannelGate.mlp starts with a Flatten, so its Linear layers are mlp.1 and mlp.3.
_OFFICIAL_KEYS = (
    (re.compile(r"\.cbam\.ChannelGate\.mlp\.1\."), ".cbam.channel.mlp.0."),
    (re.compile(r"\.cbam\.ChannelGate\.mlp\.3\."), ".cbam.channel.mlp.2."),
    (re.compile(r"\.cbam\.SpatialGate\.spatial\.conv\."), ".cbam.spatial.conv."),
    (re.compile(r"\.cbam\.SpatialGate\.spatial\.bn\."), ".cbam.spatial.bn."),
)


def _normalise_foreign(state: dict[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Map torchvision / official-CBAM keys to ours (`module.` prefixes of DataParallel dropped) and guess the
    metadata: depth from the stages, ImageNet names for 1000 classes."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    official = any(".cbam.ChannelGate." in k for k in state)
    if official:
        mapped = {}
        for key, value in state.items():
            for pattern, replacement in _OFFICIAL_KEYS:
                key = pattern.sub(replacement, key)
            if key.endswith(".cbam.spatial.conv.weight"):
                value = value[:, [1, 0]]  # official pooling order is (max, mean); ours is (mean, max)
            mapped[key] = value
        state = mapped
    if "fc.weight" not in state:
        raise CheckpointError(f"{name} has no 'fc.weight': not a ResNet classifier checkpoint")
    try:
        arch = infer_arch(state)
    except ValueError as err:
        raise CheckpointError(f"{name} is not a ResNet of a known depth: {err}") from None
    num_classes = state["fc.weight"].shape[0]
    if num_classes == 1000:
        from torchvision.models import ResNet50_Weights

        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        dataset = {"name": "ImageNet-1k"}
    else:
        names, dataset = [f"class {i}" for i in range(num_classes)], {}
    fmt = "official CBAM checkpoint" if official else "torchvision-style state_dict"
    return state, ModelMeta(arch=arch, class_names=names, dataset=dataset, recipe={"format": fmt})


def _build_and_fill(state: dict[str, torch.Tensor], meta: ModelMeta, name: str) -> nn.Module:
    """The model `meta` describes, filled with `state`; a CBAM model's options without metadata are read from the
    weights' shapes into `meta.cbam`, so every loaded CBAM model says how its blocks are built."""
    if meta.arch not in ARCHS:
        raise CheckpointError(f"{name}: unknown architecture {meta.arch!r} (expected one of {', '.join(ARCHS)})")
    if meta.cbam is None and parse_arch(meta.arch)[1]:
        meta.cbam = infer_cbam_config(state)
    fc = state.get("fc.weight")
    if fc is not None and fc.shape[0] != meta.num_classes:
        raise CheckpointError(
            f"{name}: the classifier has {fc.shape[0]} outputs but the metadata names {meta.num_classes} classes"
        )
    try:
        model = build_model(meta.arch, meta.num_classes, cbam=meta.cbam)
    except ValueError as err:
        raise CheckpointError(f"{name} has damaged metadata ({err})") from None
    expected = model.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 (torchvision's first ResNet files among them) have no BN batch
    # counters; evaluation never reads them, and fine-tuning restarts them as a fresh model would.
    state = {**{k: v for k, v in expected.items() if k.endswith(".num_batches_tracked")}, **state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{name} does not fit {meta.arch} with {meta.num_classes} classes:"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} ({preview_names(keys)})")
        if wrong:
            shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:3]]
            parts.append(f"{len(wrong)} shape mismatches ({'; '.join(shapes)})")
        raise CheckpointError(" ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model


def preview_names(keys: list[str], limit: int = 4) -> str:
    """The first `limit` names, then how many more: for error messages about long lists."""
    shown = ", ".join(keys[:limit])
    return shown + (f", … {len(keys) - limit} more" if len(keys) > limit else "")


MODEL_KEYS = ("baseline", "cbam")  # the two models every comparison holds, in the order they are shown


def load_pair(
    baseline: str | Path | None = None, cbam: str | Path | None = None, device: str | torch.device = "cpu"
) -> dict[str, LoadedModel]:
    """Load the two models to compare, keyed as MODEL_KEYS (the bundled weights where no path is given)."""
    paths = {"baseline": baseline, "cbam": cbam}
    return {key: load_checkpoint(paths[key] or BUNDLED[key].path(), device) for key in MODEL_KEYS}
