"""Shared fixtures: tiny random-weight checkpoints (ResNet50 shapes, few classes, small input) made by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbam_viz.data.pack import AssetPack
from cbam_viz.data.splits import materialize_split
from cbam_viz.data.synthetic import make_synthetic_pack
from cbam_viz.familiarity.detectors import Familiarity, fit_tensors
from cbam_viz.io.checkpoints import (
    LoadedModel,
    ModelMeta,
    load_checkpoint,
    load_pair,
    save_checkpoint,
    store_familiarity,
)
from cbam_viz.nn.cbam import CBAMConfig
from cbam_viz.nn.resnet import build_model

# Files whose tests start servers, browsers, Docker or training runs: `make test-fast` (-m "not slow") leaves them out.
SLOW_FILES = frozenset({
    "test_browser.py", "test_depths.py", "test_docker.py", "test_hardening.py", "test_imagefolder.py", "test_load.py",
    "test_mcp.py", "test_package.py", "test_train.py", "test_train_arch.py", "test_train_pair.py",
})  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of SLOW_FILES `slow` (a test elsewhere may carry the mark itself)."""
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


ROOT = Path(__file__).resolve().parent.parent
CLASS_NAMES = ["red square", "green disc", "blue bar", "yellow ring", "white star"]
INPUT_SIZE = 64


def make_stamps(root: Path, split: str, per_class: int, size: int, n_classes: int = 3) -> Path:
    """A stamp-scenes folder: a small synthetic pack and one materialized split."""
    make_synthetic_pack(root / "pack", n_classes=n_classes, n_distractors=1, background_size=(96, 72), object_side=48)
    materialize_split(AssetPack.load(root / "pack"), root, split, per_class=per_class, size=size)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: the same float sums in a run and its resumed copy, and steadier timing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kill_9_once_saved(args: list[str], saved: Path, timeout: float) -> None:
    """Run `python -m ARGS` from the checkout (one thread: the same float sums as here) and SIGKILL it as soon as
    `saved` exists; fails when the run ends first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not saved.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()

def make_checkpoint(
    path: Path, arch: str, seed: int, input_size: int = INPUT_SIZE, class_names: list[str] | None = None,
    cbam: CBAMConfig | None = None,
) -> Path:
    """Write a random-weight checkpoint in our safetensors format (spatial BN non-zero so maps vary)."""
    class_names = list(class_names or CLASS_NAMES)
    torch.manual_seed(seed)
    model = build_model(arch, len(class_names), cbam=cbam)
    for module in model.modules():
        if getattr(module, "spatial", None) is not None:
            torch.nn.init.normal_(module.spatial.bn.weight, 1.0, 0.1)
    meta = ModelMeta(arch=arch, class_names=class_names, input_size=input_size, recipe={"note": "test"}, cbam=cbam)
    save_checkpoint(path, model.eval(), meta)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Paths of a tiny baseline and CBAM checkpoint, keyed like `load_pair`."""
    root = tmp_path_factory.mktemp("weights")
    return {
        "baseline": make_checkpoint(root / "baseline.safetensors", "resnet50", 0),
        "cbam": make_checkpoint(root / "cbam.safetensors", "resnet50-cbam", 1),
    }


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints) -> dict[str, LoadedModel]:
    """The tiny checkpoints loaded as the app and CLI load them."""
    return load_pair(tiny_checkpoints["baseline"], tiny_checkpoints["cbam"])


SMALL_SIDE = 32  # the input side of `small_models`


@pytest.fixture(scope="session")
def small_models(tmp_path_factory) -> dict[str, LoadedModel]:
    """A ResNet18 pair at 32 px: 64 channels at layer1, 128 at layer2, per model (ScoreCAM at any layer in seconds)."""
    root = tmp_path_factory.mktemp("small")
    paths = [make_checkpoint(root / f"{arch}.safetensors", arch, seed, input_size=SMALL_SIDE)
             for seed, arch in enumerate(("resnet18", "resnet18-cbam"))]  # fmt: skip
    return load_pair(*paths)


def random_image(seed: int, size: tuple[int, int] = (72, 56)) -> Image.Image:
    """A deterministic RGB noise image with a bright blob, so CAMs differ between images."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 120).astype(np.uint8)
    y, x = rng.integers(0, size[1] - 10), rng.integers(0, size[0] - 10)
    pixels[y : y + 10, x : x + 10] = 255
    return Image.fromarray(pixels)


def attach_knn_detector(
    path: Path, familiar: list[Image.Image], threshold: float | None = None, unfamiliar: Image.Image | None = None
) -> Path:
    """Store a knn detector (k=1) in the checkpoint whose bank is the features of `familiar` (distance 0 to
    them); the threshold is given, or half the distance of `unfamiliar`, which then is unfamiliar."""
    from cbam_viz.familiarity.cli import extract

    loaded = load_checkpoint(path)
    pooled = extract({"m": loaded}, familiar, len(familiar))["m"].pooled
    fam = Familiarity("knn", 0.0, fit_tensors("knn", pooled, np.zeros(len(pooled), int), 1), {"k": 1})
    if threshold is None:
        odd = extract({"m": loaded}, [unfamiliar], 1)["m"]
        threshold = float(fam.scores(torch.from_numpy(odd.pooled), odd.probs)[0]) / 2
    fam.threshold = threshold
    store_familiarity(path, fam)
    return path
