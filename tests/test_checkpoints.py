"""Checkpoint formats: our safetensors, torchvision `.pth`, the official CBAM layout, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from cbam_viz.checkpoints import CheckpointError, ModelMeta, load_checkpoint, save_checkpoint
from cbam_viz.models import build_model

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


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
    def __init__(self, channels: int, reduction: int, kernel: int) -> None:
        super().__init__()
        self.ChannelGate = OfficialChannelGate(channels, reduction)
        self.SpatialGate = OfficialSpatialGate(kernel)

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


def official_model(num_classes: int, reduction: int = 16, kernel: int = 7) -> nn.Module:
    class OfficialBottleneck(Bottleneck):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cbam = OfficialCBAM(self.conv3.out_channels, reduction, kernel)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.cbam(self.bn3(self.conv3(out))) + identity)

    torch.manual_seed(3)
    model = ResNet(OfficialBottleneck, [3, 4, 6, 3], num_classes=num_classes)
    with torch.no_grad():  # non-trivial BN statistics and spatial gates, so a wrong mapping shows in the logits
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


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


def test_torchvision_imagenet_pth(tmp_path):
    reference = torchvision.models.resnet50().eval()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == "resnet50" and loaded.meta.num_classes == 1000
    assert loaded.meta.class_names[:2] == ["tench", "goldfish"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X), reference(X))


@pytest.mark.parametrize("reduction", [16, 8])
def test_official_cbam_checkpoint_layout(tmp_path, reduction):
    reference = official_model(1000, reduction=reduction)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    assert "module.layer1.0.cbam.ChannelGate.mlp.1.weight" in state
    assert "module.layer4.2.cbam.SpatialGate.spatial.bn.running_var" in state
    path = tmp_path / "RESNET50_CBAM_new_name_wrap.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet", "state_dict": state, "best_prec1": 77.3}, path)
    loaded = load_checkpoint(path)
    assert loaded.meta.arch == "resnet50-cbam" and loaded.meta.class_names[0] == "tench"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X), reference(X), atol=1e-4, rtol=1e-4)


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
