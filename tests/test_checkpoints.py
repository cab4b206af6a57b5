"""Checkpoint formats at every depth and CBAM variant: our safetensors, torchvision `.pth`, the official CBAM layout,
and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from cbam_viz.app.views import model_info_markdown
from cbam_viz.io.checkpoints import (
    CheckpointError,
    ModelMeta,
    _read_raw,
    load_checkpoint,
    save_checkpoint,
)
from cbam_viz.io.weights import BUNDLED
from cbam_viz.nn.cbam import CBAMConfig
from cbam_viz.nn.resnet import ARCHS, DEPTHS, build_model

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
X_SMALL = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- a model built directly in the official CBAM code's layout (module names and pooling order as there) ---
class OfficialChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x):
        pooled_avg = nn.functional.avg_pool2d(x, x.shape[2:])
        pooled_max = nn.functional.max_pool2d(x, x.shape[2:])
        return x * torch.sigmoid(self.mlp(pooled_avg) + self.mlp(pooled_max))[:, :, None, None]


class OfficialBasicConv(nn.Module):
    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        return self.bn(self.conv(x))


class OfficialSpatialGate(nn.Module):
    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.spatial = OfficialBasicConv(kernel)

    def forward(self, x):
        compressed = torch.cat([x.max(dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)], dim=1)  # (max, mean)
        return x * torch.sigmoid(self.spatial(compressed))


class OfficialCBAM(nn.Module):
    def __init__(self, channels: int, reduction: int, kernel: int, no_spatial: bool = False) -> None:
        super().__init__()
        self.ChannelGate = OfficialChannelGate(channels, reduction)
        self.SpatialGate = None if no_spatial else OfficialSpatialGate(kernel)

    def forward(self, x):
        x = self.ChannelGate(x)
        return x if self.SpatialGate is None else self.SpatialGate(x)


def official_model(
    num_classes: int, reduction: int = 16, kernel: int = 7, depth: int = 50, no_spatial: bool = False
) -> nn.Module:
    """The official ResidualNet('ImageNet', depth, num_classes, 'CBAM'): torchvision's module names, CBAM(planes *
    expansion) on each block's branch before the add, BasicBlocks included."""

    class OfficialBasicBlock(BasicBlock):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cbam = OfficialCBAM(self.bn2.num_features, reduction, kernel, no_spatial)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.cbam(self.bn2(self.conv2(out))) + identity)

    class OfficialBottleneck(Bottleneck):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cbam = OfficialCBAM(self.conv3.out_channels, reduction, kernel, no_spatial)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.cbam(self.bn3(self.conv3(out))) + identity)

    block, layers = DEPTHS[depth]
    torch.manual_seed(3)
    model = ResNet(OfficialBasicBlock if block is BasicBlock else OfficialBottleneck, list(layers), num_classes)
    randomise_bn(model)
    return model.eval()


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and spatial gates, so a wrong mapping shows in the logits."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("arch", ["resnet50", "resnet50-cbam"])
def test_our_format_round_trip(tmp_path, arch, dtype):
    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    meta = ModelMeta(arch, ["a", "b", "c", "d"], input_size=96, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2),
                     recipe={"optimizer": "sgd"}, metrics={"top1": 0.9}, dataset={"hash": "abc"})
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, meta, dtype=dtype)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == arch and loaded.meta.class_names == ["a", "b", "c", "d"]
    assert loaded.meta.input_size == 96 and loaded.meta.mean == (0.5, 0.4, 0.3)
    assert loaded.meta.recipe == {"optimizer": "sgd"} and loaded.meta.metrics == {"top1": 0.9}
    assert loaded.meta.source == str(path)
    assert not loaded.model.training
    with torch.no_grad():
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(loaded.model(X), model(X), atol=tol, rtol=tol)


def round_trip(tmp_path, arch: str, cbam: CBAMConfig | None = None) -> None:
    """Save a random model with non-trivial BN, load it back: same architecture, options and logits."""
    torch.manual_seed(0)
    model = build_model(arch, 3, cbam=cbam)
    randomise_bn(model)
    path = tmp_path / f"{arch}.safetensors"
    save_checkpoint(path, model.eval(), ModelMeta(arch, ["a", "b", "c"], cbam=cbam), dtype=torch.float32)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == arch and loaded.meta.cbam == cbam
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X_SMALL), model(X_SMALL), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_every_depth(tmp_path, arch):
    round_trip(tmp_path, arch, CBAMConfig() if arch.endswith("-cbam") else None)


@pytest.mark.parametrize(
    "cbam",
    [
        CBAMConfig(channel_pool="avg"),
        CBAMConfig(channel_pool="max"),
        CBAMConfig(kernel_size=3),
        CBAMConfig(spatial_pool="conv1x1"),
        CBAMConfig(arrangement="spatial-channel"),
        CBAMConfig(arrangement="parallel"),
        CBAMConfig(arrangement="channel"),
        CBAMConfig(reduction=8, kernel_size=3, arrangement="parallel", channel_pool="max"),
    ],
    ids=lambda c: c.differences(),
)
def test_round_trip_every_variant(tmp_path, cbam):
    round_trip(tmp_path, "resnet18-cbam", cbam)


def test_variant_metadata_is_shown(tmp_path):
    cbam = CBAMConfig(arrangement="channel", channel_pool="max")
    save_checkpoint(tmp_path / "m.safetensors", build_model("resnet34-cbam", 2, cbam=cbam),
                    ModelMeta("resnet34-cbam", ["x", "y"], cbam=cbam))
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.meta.display_name == "CBAM-ResNet34 (channel only, max pooling)"
    info = model_info_markdown(loaded)
    assert "### CBAM-ResNet34 (channel only, max pooling)" in info
    assert "- **CBAM blocks**: channel (max pooling, r=16) only; a variant of the paper's design" in info


def test_checkpoints_without_cbam_metadata_get_the_design_their_weights_show(tmp_path):
    """Checkpoints written before the options existed (the bundled ones) load as the paper's design; channel-only
    and 1x1-descriptor weights are recognised by their keys."""
    bundled = load_checkpoint(BUNDLED["cbam"].path())
    assert bundled.meta.cbam == CBAMConfig() and bundled.meta.display_name == "CBAM-ResNet50"
    assert "the paper's final design" in model_info_markdown(bundled)
    assert load_checkpoint(BUNDLED["baseline"].path()).meta.cbam is None
    for cbam in (CBAMConfig(arrangement="channel"), CBAMConfig(spatial_pool="conv1x1", kernel_size=3)):
        state = build_model("resnet18-cbam", 2, cbam=cbam).state_dict()
        torch.save(state, tmp_path / "m.pth")
        assert load_checkpoint(tmp_path / "m.pth").meta.cbam == cbam


def test_damaged_cbam_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    for cbam, message in (({"arrangement": "sideways"}, "arrangement 'sideways'"), ({"pool": 1}, "unknown CBAM")):
        save_checkpoint(path, build_model("resnet18-cbam", 2), ModelMeta("resnet18-cbam", ["x", "y"]))
        state, header = _read_raw(path)
        meta = json.loads(header["meta"])
        meta["cbam"] = cbam
        save_file(state, str(path), metadata={**header, "meta": json.dumps(meta)})
        with pytest.raises(CheckpointError, match=f"damaged metadata.*{message}"):
            load_checkpoint(path)
    save_checkpoint(path, build_model("resnet18", 2), ModelMeta("resnet18", ["x", "y"], cbam=CBAMConfig()))
    with pytest.raises(CheckpointError, match="CBAM options need resnet18-cbam"):
        load_checkpoint(path)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_torchvision_imagenet_pth(tmp_path, depth):
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    path = tmp_path / f"resnet{depth}-imagenet.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == f"resnet{depth}" and loaded.meta.num_classes == 1000
    assert loaded.meta.class_names[:2] == ["tench", "goldfish"] and loaded.meta.cbam is None
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X_SMALL), reference(X_SMALL))


def test_state_dicts_without_bn_counters_load(tmp_path):
    """Files saved before PyTorch 0.4.1 (torchvision's first ResNet weights, 2018 CBAM checkpoints) have no
    num_batches_tracked buffers."""
    for reference in (torchvision.models.resnet18().eval(), official_model(10, depth=18)):
        state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
        torch.save(state, tmp_path / "old.pth")
        with torch.no_grad():
            torch.testing.assert_close(load_checkpoint(tmp_path / "old.pth").model(X_SMALL), reference(X_SMALL))


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_official_cbam_checkpoint_layout_every_depth(tmp_path, depth):
    """A plain state dict in the official layout (DataParallel's `module.` prefix, ChannelGate/SpatialGate names,
    (max, mean) pooling order), as torch.save writes it, read back with weights_only=True."""
    reference = official_model(1000, depth=depth)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    assert "module.layer1.0.cbam.ChannelGate.mlp.1.weight" in state
    assert "module.layer4.1.cbam.SpatialGate.spatial.bn.running_var" in state
    path = tmp_path / f"RESNET{depth}_CBAM.pth"
    torch.save(state, path)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == f"resnet{depth}-cbam" and loaded.meta.class_names[0] == "tench"
    assert loaded.meta.cbam == CBAMConfig() and loaded.meta.recipe == {"format": "official CBAM checkpoint"}
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X_SMALL), reference(X_SMALL), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("reduction", [16, 8])
def test_official_training_checkpoint(tmp_path, reduction):
    """What the official train_imagenet.py saves: the state dict inside {epoch, arch, state_dict, best_prec1,
    optimizer}."""
    reference = official_model(1000, reduction=reduction)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    optimizer = torch.optim.SGD(reference.parameters(), 0.1, momentum=0.9).state_dict()
    path = tmp_path / "RESNET50_CBAM_new_name_wrap.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet", "state_dict": state, "best_prec1": 77.3, "optimizer": optimizer},
               path)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == "resnet50-cbam" and loaded.meta.cbam == CBAMConfig(reduction=reduction)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X), reference(X), atol=1e-4, rtol=1e-4)


def test_official_channel_only_checkpoint(tmp_path):
    """CBAM(no_spatial=True) in the official code: no SpatialGate keys, loaded as the channel-only variant."""
    reference = official_model(10, depth=34, no_spatial=True)
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "c.pth")
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert loaded.meta.arch == "resnet34-cbam" and loaded.meta.cbam == CBAMConfig(arrangement="channel")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X_SMALL), reference(X_SMALL), atol=1e-4, rtol=1e-4)


def test_official_layout_channel_order_matters(tmp_path):
    """The (max, mean) -> (mean, max) swap is needed: without it the logits differ."""
    reference = official_model(10)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "a.pth")
    loaded = load_checkpoint(tmp_path / "a.pth")
    conv_ours = loaded.model.layer1[0].cbam.spatial.conv.weight
    conv_theirs = reference.layer1[0].cbam.SpatialGate.spatial.conv.weight
    torch.testing.assert_close(conv_ours[:, 0], conv_theirs[:, 1])
    torch.testing.assert_close(conv_ours[:, 1], conv_theirs[:, 0])


def test_unknown_depth_is_named(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layer3.1.")}
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"BasicBlock stages of \[2, 2, 1, 2\] blocks are none of"):
        load_checkpoint(tmp_path / "odd.pth")


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load does run it
    assert marker.exists()


def test_mismatched_keys_named(tmp_path):
    state = build_model("resnet50", 10).state_dict()
    state.pop("layer2.0.conv1.weight")
    state["layer9.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.pth")
    message = str(err.value)
    assert "missing keys" in message and "layer2.0.conv1.weight" in message
    assert "unexpected keys" in message and "layer9.extra" in message


def test_wrong_architecture_and_class_count(tmp_path):
    model = build_model("resnet50", 3)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, ModelMeta("resnet50", ["a", "b", "c"]))
    with pytest.raises(CheckpointError, match="resnet50-cbam was asked for"):
        load_checkpoint(path, arch="resnet50-cbam")
    save_checkpoint(path, model, ModelMeta("resnet50", ["a", "b"]))
    with pytest.raises(CheckpointError, match="3 outputs but the metadata names 2 classes"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_files(tmp_path, content):
    for name in ("m.safetensors", "m.pth"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("resnet50", 2), ModelMeta("resnet50", ["a", "b"]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(path)


def test_metadata_is_json_in_header(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("resnet50", 2), ModelMeta("resnet50", ["x", "y"], input_size=160))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert json.loads(header["__metadata__"]["meta"])["input_size"] == 160
    assert header["fc.weight"]["dtype"] == "F16"


def test_saved_checkpoint_is_readable_by_other_users(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); a checkpoint baked into an image must stay world-readable."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model("resnet50", 2), ModelMeta("resnet50", ["x", "y"]))
    assert path.stat().st_mode & 0o777 == 0o644
