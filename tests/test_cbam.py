"""CBAM maths against a hand computation (plain Python loops) on a tiny tensor, and the model definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from cbam_viz.attention import capture_attention
from cbam_viz.cbam import CBAM
from cbam_viz.models import build_model, forward_features


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def hand_cbam(x: np.ndarray, w1, b1, w2, b2, conv, bn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference CBAM for one image x (C, H, W) written with explicit loops, straight from the paper's equations."""
    c, h, w = x.shape

    def mlp(v):
        hidden = [max(0.0, sum(w1[j][i] * v[i] for i in range(c)) + b1[j]) for j in range(len(b1))]
        return [sum(w2[i][j] * hidden[j] for j in range(len(b1))) + b2[i] for i in range(c)]

    avg = [sum(x[k, i, j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)]
    mx = [max(x[k, i, j] for i in range(h) for j in range(w)) for k in range(c)]
    mc = np.array([sigmoid(a + m) for a, m in zip(mlp(avg), mlp(mx))])
    f1 = x * mc[:, None, None]
    pooled = np.stack([f1.mean(axis=0), f1.max(axis=0)])  # (mean, max) over channels
    k = conv.shape[-1]
    pad = k // 2
    ms = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            acc = 0.0
            for ch in range(2):
                for di in range(k):
                    for dj in range(k):
                        ii, jj = i + di - pad, j + dj - pad
                        if 0 <= ii < h and 0 <= jj < w:
                            acc += conv[ch, di, dj] * pooled[ch, ii, jj]
            bn_out = (acc - bn["mean"]) / math.sqrt(bn["var"] + 1e-5) * bn["weight"] + bn["bias"]
            ms[i, j] = sigmoid(bn_out)
    return mc, ms, f1 * ms[None]


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "with-grad"])
def test_cbam_matches_hand_computation(grad):
    """Both pooling paths (amax for inference, max with indices when a backward follows) give the paper's maps."""
    torch.manual_seed(0)
    module = CBAM(4, reduction=2, kernel_size=3, name="blk").eval()
    with torch.no_grad():
        module.spatial.bn.weight.fill_(1.3)
        module.spatial.bn.bias.fill_(-0.2)
        module.spatial.bn.running_mean.fill_(0.1)
        module.spatial.bn.running_var.fill_(0.5)
    x = torch.randn(1, 4, 3, 5, requires_grad=grad)
    with torch.set_grad_enabled(grad), capture_attention() as maps:
        out = module(x).detach()
    mlp0, mlp2 = module.channel.mlp[0], module.channel.mlp[2]
    mc, ms, expected = hand_cbam(
        x[0].detach().double().numpy(),
        mlp0.weight.tolist(), mlp0.bias.tolist(), mlp2.weight.tolist(), mlp2.bias.tolist(),
        module.spatial.conv.weight[0].detach().double().numpy(),
        {"mean": 0.1, "var": 0.5, "weight": 1.3, "bias": -0.2},
    )
    np.testing.assert_allclose(maps.channel["blk"][0].detach().numpy(), mc, atol=1e-6)
    np.testing.assert_allclose(maps.spatial["blk"][0].detach().numpy(), ms, atol=1e-6)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    # the maps really vary: a check that cannot pass with constant 0.5 maps
    assert ms.std() > 1e-3 and mc.std() > 1e-3


def test_cbam_gradient_matches_amax_formulation():
    """The pooling with indices used under autograd gives amax's gradient (inputs without ties)."""
    torch.manual_seed(0)
    module = CBAM(8, reduction=2, kernel_size=3).double().train()
    with torch.no_grad():
        module.spatial.bn.weight.fill_(1.3)
    mlp, spatial = module.channel.mlp, module.spatial

    def reference(x: torch.Tensor) -> torch.Tensor:
        mc = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))[:, :, None, None]
        y = x * mc
        pooled = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        return y * torch.sigmoid(spatial.bn(spatial.conv(pooled)))

    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    ours = torch.autograd.grad(module(x), x, upstream)[0]
    expected = torch.autograd.grad(reference(x), x, upstream)[0]
    torch.testing.assert_close(ours, expected)


def test_spatial_map_starts_at_half_as_in_official_init():
    model = build_model("resnet50-cbam", 7).eval()
    with torch.no_grad(), capture_attention() as maps:
        model(torch.randn(1, 3, 64, 64))
    assert len(maps.blocks) == 16
    assert [len(maps.stage(s)) for s in (1, 2, 3, 4)] == [3, 4, 6, 3]
    for name in maps.blocks:
        assert torch.allclose(maps.spatial[name], torch.full_like(maps.spatial[name], 0.5))


@pytest.mark.parametrize(("arch", "millions"), [("resnet50", 25.56), ("resnet50-cbam", 28.09)])
def test_parameter_counts_match_paper(arch, millions):
    count = sum(p.numel() for p in build_model(arch, 1000).parameters())
    assert round(count / 1e6, 2) == millions


def test_baseline_loads_torchvision_state_dict_one_to_one():
    reference = torchvision.models.resnet50(num_classes=1000).eval()
    model = build_model("resnet50", 1000).eval()
    assert model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_cbam_sits_before_residual_add_in_every_block():
    model = build_model("resnet50-cbam", 3).eval()
    blocks = [m for m in model.modules() if hasattr(m, "cbam")]
    assert len(blocks) == 16
    block = model.layer2[0]
    x = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        branch = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))))
        expected = block.relu(block.cbam(branch) + block.downsample(x))
        torch.testing.assert_close(block(x), expected)
        assert not torch.allclose(block(x), block.relu(branch + block.downsample(x)))


@pytest.mark.parametrize("size", [(64, 64), (96, 48), (33, 71)])
def test_any_input_size_and_forward_features(size):
    model = build_model("resnet50-cbam", 5).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits, features = forward_features(model, x)
        torch.testing.assert_close(logits, model(x))
    assert logits.shape == (2, 5) and features.shape[:2] == (2, 2048)
