"""CBAM maths against a hand computation (plain Python loops) on a tiny tensor, and the model definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from cbam_viz.nn.attention import AttentionMaps, capture_attention
from cbam_viz.nn.cbam import CBAM, CBAMConfig
from cbam_viz.nn.resnet import ARCHS, build_model, forward_maps


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def hand_mlp(v, w1, b1, w2, b2) -> list[float]:
    c, hidden = len(b2), len(b1)
    h = [max(0.0, sum(w1[j][i] * v[i] for i in range(c)) + b1[j]) for j in range(hidden)]
    return [sum(w2[i][j] * h[j] for j in range(hidden)) + b2[i] for i in range(c)]


def hand_mc(x: np.ndarray, pools: list[str], mlp: tuple) -> np.ndarray:
    """Mc for one image x (C, H, W) with explicit loops: sigmoid of the summed MLP outputs of each pool."""
    c, h, w = x.shape
    descriptors = {
        "avg": [sum(x[k, i, j] for i in range(h) for j in range(w)) / (h * w) for k in range(c)],
        "max": [max(x[k, i, j] for i in range(h) for j in range(w)) for k in range(c)],
    }
    outs = [hand_mlp(descriptors[p], *mlp) for p in pools]
    return np.array([sigmoid(sum(out[k] for out in outs)) for k in range(c)])


def hand_ms(x: np.ndarray, conv: np.ndarray, bn: dict, compress: np.ndarray | None = None) -> np.ndarray:
    """Ms for one image x (C, H, W) with explicit loops: (mean, max) over channels, or a 1x1 conv, then the k x k
    zero-padded convolution, BN with running statistics and a sigmoid."""
    c, h, w = x.shape
    if compress is None:
        pooled = [
            [[sum(x[ch, i, j] for ch in range(c)) / c for j in range(w)] for i in range(h)],
            [[max(x[ch, i, j] for ch in range(c)) for j in range(w)] for i in range(h)],
        ]
    else:
        pooled = [[[sum(compress[ch] * x[ch, i, j] for ch in range(c)) for j in range(w)] for i in range(h)]]
    k = conv.shape[-1]
    pad = k // 2
    ms = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            acc = 0.0
            for ch in range(len(pooled)):
                for di in range(k):
                    for dj in range(k):
                        ii, jj = i + di - pad, j + dj - pad
                        if 0 <= ii < h and 0 <= jj < w:
                            acc += conv[ch, di, dj] * pooled[ch][ii][jj]
            bn_out = (acc - bn["mean"]) / math.sqrt(bn["var"] + 1e-5) * bn["weight"] + bn["bias"]
            ms[i, j] = sigmoid(bn_out)
    return ms


BN = {"mean": 0.1, "var": 0.5, "weight": 1.3, "bias": -0.2}
VARIANTS = {
    "paper": CBAMConfig(reduction=2, kernel_size=3),
    "paper-7x7": CBAMConfig(reduction=2),
    "avg-pool": CBAMConfig(reduction=2, kernel_size=3, channel_pool="avg"),
    "max-pool": CBAMConfig(reduction=2, kernel_size=3, channel_pool="max"),
    "conv1x1": CBAMConfig(reduction=2, kernel_size=3, spatial_pool="conv1x1"),
    "spatial-channel": CBAMConfig(reduction=2, kernel_size=3, arrangement="spatial-channel"),
    "parallel": CBAMConfig(reduction=2, kernel_size=3, arrangement="parallel"),
    "channel-only": CBAMConfig(reduction=2, arrangement="channel"),
}


def hand_cbam(module: CBAM, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Reference (Mc, Ms, output) of `module` for one image, straight from the paper's equations and the order
    its config names."""
    cfg = module.config
    mlp0, mlp2 = module.channel.mlp[0], module.channel.mlp[2]
    mlp = (mlp0.weight.tolist(), mlp0.bias.tolist(), mlp2.weight.tolist(), mlp2.bias.tolist())
    pools = {"avg+max": ["avg", "max"], "avg": ["avg"], "max": ["max"]}[cfg.channel_pool]

    def ms_of(f):
        spatial = module.spatial
        compress = None if spatial.compress is None else spatial.compress.weight[0, :, 0, 0].tolist()
        return hand_ms(f, spatial.conv.weight[0].detach().double().numpy(), BN, compress)

    if cfg.arrangement == "channel":
        mc = hand_mc(x, pools, mlp)
        return mc, None, x * mc[:, None, None]
    if cfg.arrangement == "channel-spatial":
        mc = hand_mc(x, pools, mlp)
        f1 = x * mc[:, None, None]
        ms = ms_of(f1)
        return mc, ms, f1 * ms[None]
    if cfg.arrangement == "spatial-channel":
        ms = ms_of(x)
        f1 = x * ms[None]
        mc = hand_mc(f1, pools, mlp)
        return mc, ms, f1 * mc[:, None, None]
    mc, ms = hand_mc(x, pools, mlp), ms_of(x)  # parallel
    return mc, ms, x * mc[:, None, None] * ms[None]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "with-grad"])
def test_cbam_matches_hand_computation(grad, variant):
    """Every ablation variant, on both pooling paths (amax for inference, max with indices when a backward
    follows), gives the paper's maps in the order its config names."""
    torch.manual_seed(0)
    module = CBAM(4, VARIANTS[variant], name="blk").eval()
    if module.spatial is not None:
        with torch.no_grad():
            module.spatial.bn.weight.fill_(BN["weight"])
            module.spatial.bn.bias.fill_(BN["bias"])
            module.spatial.bn.running_mean.fill_(BN["mean"])
            module.spatial.bn.running_var.fill_(BN["var"])
    x = torch.randn(1, 4, 4, 5, requires_grad=grad)
    with torch.set_grad_enabled(grad), capture_attention() as maps:
        out = module(x).detach()
    mc, ms, expected = hand_cbam(module, x[0].detach().double().numpy())
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    assert maps.blocks == ["blk"]
    np.testing.assert_allclose(maps.channel["blk"][0].detach().numpy(), mc, atol=1e-6)
    if ms is None:  # channel only: its channel weights are recorded, and no spatial map
        assert not maps.spatial
    else:
        np.testing.assert_allclose(maps.spatial["blk"][0].detach().numpy(), ms, atol=1e-6)
        assert ms.std() > 1e-3  # the maps really vary: a check that cannot pass with constant 0.5 maps
    assert mc.std() > 1e-3


def test_variants_differ_from_each_other():
    """Same weights where shapes allow, different outputs: each option really changes the block."""
    x = torch.randn(1, 4, 4, 5, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for name, config in VARIANTS.items():
        torch.manual_seed(0)
        module = CBAM(4, config).eval()
        if module.spatial is not None:
            torch.nn.init.normal_(module.spatial.bn.weight, 1.0, 0.1)
        with torch.no_grad():
            outputs[name] = module(x)
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outputs[a], outputs[b]), (a, b)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"channel_pool": "lse"}, "channel_pool 'lse'"),
        ({"spatial_pool": "max"}, "spatial_pool 'max'"),
        ({"kernel_size": 5}, "kernel_size 5"),
        ({"arrangement": "spatial"}, "arrangement 'spatial'"),
        ({"reduction": 0}, "reduction must be a positive integer"),
        ({"arrangement": "channel", "kernel_size": 3}, "which arrangement 'channel' lacks"),
    ],
)
def test_config_refuses_unknown_options(values, message):
    with pytest.raises(ValueError, match=message):
        CBAMConfig(**values)
    with pytest.raises(ValueError, match="unknown CBAM option"):
        CBAMConfig.from_dict({"pool": "avg"})


def test_config_describes_itself():
    assert CBAMConfig().describe().endswith("the paper's final design") and CBAMConfig().differences() == ""
    variant = CBAMConfig(arrangement="channel", channel_pool="max")
    assert variant.differences() == "channel only, max pooling"
    assert variant.describe() == "channel (max pooling, r=16) only; a variant of the paper's design"
    assert CBAMConfig.from_dict(variant.to_dict()) == variant


def test_cbam_gradient_matches_amax_formulation():
    """The pooling with indices used under autograd gives amax's gradient (inputs without ties)."""
    torch.manual_seed(0)
    module = CBAM(8, CBAMConfig(reduction=2, kernel_size=3)).double().train()
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


@pytest.mark.parametrize(("arch", "stages"), [("resnet18-cbam", [2, 2, 2, 2]), ("resnet50-cbam", [3, 4, 6, 3])])
def test_spatial_map_starts_at_half_as_in_official_init(arch, stages):
    model = build_model(arch, 7).eval()
    with torch.no_grad(), capture_attention() as maps:
        model(torch.randn(1, 3, 64, 64))
    assert len(maps.blocks) == sum(stages)
    assert [len(maps.stage(s)) for s in (1, 2, 3, 4)] == stages
    for name in maps.blocks:
        assert torch.allclose(maps.spatial[name], torch.full_like(maps.spatial[name], 0.5))


def test_activity_is_the_per_image_spatial_range_and_channel_spread():
    maps = AttentionMaps(
        channel={"layer4.0": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.0, 1.0]]), "layer4.1": torch.rand(2, 4)},
        spatial={"layer4.0": torch.stack([torch.full((3, 3), 0.7), torch.linspace(0.2, 0.9, 9).view(3, 3)])},
    )
    activity = maps.activity()
    torch.testing.assert_close(activity["layer4.0"]["spatial_range"], torch.tensor([0.0, 0.7]))
    torch.testing.assert_close(activity["layer4.0"]["channel_std"], torch.tensor([0.0, (1 / 3) ** 0.5]))
    assert set(activity["layer4.1"]) == {"channel_std"}  # no spatial gate, no spatial figure


# The paper's Table 4 (ImageNet-1k, in millions), and the exact counts of our blocks: the channel MLP is shared by
# the pools and has biases, the spatial gate is a bias-free k x k conv followed by a BN (2 parameters).
PAPER_PARAMETERS = {
    "resnet18": (11.69, 11_689_512), "resnet18-cbam": (11.78, 11_779_392),
    "resnet34": (21.80, 21_797_672), "resnet34-cbam": (21.96, 21_960_468),
    "resnet50": (25.56, 25_557_032), "resnet50-cbam": (28.09, 28_089_624),
    "resnet101": (44.55, 44_549_160), "resnet101-cbam": (49.33, 49_330_172),
}  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_match_paper(arch):
    millions, exact = PAPER_PARAMETERS[arch]
    count = sum(p.numel() for p in build_model(arch, 1000).parameters())
    assert round(count / 1e6, 2) == millions and count == exact


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_baseline_loads_torchvision_state_dict_one_to_one(depth):
    reference = getattr(torchvision.models, f"resnet{depth}")(num_classes=1000).eval()
    model = build_model(f"resnet{depth}", 1000).eval()
    assert model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
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


def test_basic_blocks_get_cbam_before_the_residual_add_too():
    """As in the official code: CBAM on the BasicBlock's branch (planes channels), after bn2, before the add."""
    model = build_model("resnet34-cbam", 3).eval()
    blocks = [m for m in model.modules() if hasattr(m, "cbam")]
    assert len(blocks) == 16 and blocks[-1].cbam.channel.mlp[0].in_features == 512
    block = model.layer3[0]
    for m in block.cbam.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.1)
    x = torch.randn(1, 128, 8, 8)
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        expected = block.relu(block.cbam(branch) + block.downsample(x))
        torch.testing.assert_close(block(x), expected)
        assert not torch.allclose(block(x), block.relu(branch + block.downsample(x)))


def test_cbam_options_reach_every_block_and_need_a_cbam_arch():
    config = CBAMConfig(arrangement="parallel", spatial_pool="conv1x1", kernel_size=3, reduction=8)
    model = build_model("resnet18-cbam", 3, cbam=config)
    blocks = [m.cbam for m in model.modules() if hasattr(m, "cbam")]
    assert len(blocks) == 8 and all(b.config == config and b.spatial.conv.kernel_size == (3, 3) for b in blocks)
    assert blocks[0].spatial.compress.in_channels == 64 and blocks[0].channel.mlp[0].out_features == 8
    assert [b.name for b in blocks][:3] == ["layer1.0", "layer1.1", "layer2.0"]
    with pytest.raises(ValueError, match="CBAM options need resnet18-cbam"):
        build_model("resnet18", 3, cbam=config)
    with pytest.raises(ValueError, match="unknown architecture 'resnet152'"):
        build_model("resnet152", 3)


@pytest.mark.parametrize("size", [(64, 64), (96, 48), (33, 71)])
def test_any_input_size_and_forward_maps(size):
    model = build_model("resnet50-cbam", 5).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits, layer3, features = forward_maps(model, x)
        torch.testing.assert_close(logits, model(x))
        torch.testing.assert_close(features, model.layer4(layer3))
    assert logits.shape == (2, 5) and features.shape[:2] == (2, 2048) and layer3.shape[:2] == (2, 1024)
