"""`train --arch` at every depth and with the CBAM ablation options: parsing, the resolved config, what resume and
--init accept, and a tiny run whose checkpoint carries its options (the test_train pack, 32 px, CPU)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from test_train import argv, data_dir, parse  # noqa: F401 (data_dir is a fixture)

from cbam_viz import train as tr
from cbam_viz.errors import CbamVizError
from cbam_viz.io.checkpoints import load_checkpoint
from cbam_viz.nn.cbam import CBAMConfig
from cbam_viz.nn.resnet import ARCHS

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANT = ["--channel-pool", "max", "--spatial-kernel", "3", "--arrangement", "parallel", "--reduction", "8"]
VARIANT_CONFIG = CBAMConfig(reduction=8, channel_pool="max", kernel_size=3, arrangement="parallel")


def resolve(*extra: str, saved: dict | None = None, init_cbam: CBAMConfig | None = None) -> tr.Config:
    return tr.resolve_config(parse(["--out", "run", *extra]), saved, "cpu", 1, init_cbam)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_depth_is_accepted(arch):
    cfg = resolve("--arch", arch)
    assert cfg.arch == arch and cfg.cbam == (CBAMConfig() if arch.endswith("-cbam") else None)


def test_cbam_options_resolve_and_are_refused_without_cbam():
    assert resolve("--arch", "resnet101-cbam", *VARIANT).cbam == VARIANT_CONFIG
    assert resolve("--arch", "resnet18-cbam", "--spatial-pool", "conv1x1").cbam == CBAMConfig(spatial_pool="conv1x1")
    with pytest.raises(CbamVizError, match=r"--arrangement channel \(resnet34 has no CBAM blocks\): CBAM options need"):
        resolve("--arch", "resnet34", "--arrangement", "channel")
    with pytest.raises(SystemExit):
        parse(["--out", "run", "--arch", "resnet18-cbam", "--spatial-kernel", "5"])


def test_resume_keeps_the_options_and_refuses_changes():
    saved = tr.resolve_config(parse(["--out", "run", "--arch", "resnet18-cbam", *VARIANT]), None, "cpu", 1)
    saved = asdict(saved)  # as last.pt stores it
    assert resolve(saved=saved).cbam == VARIANT_CONFIG
    assert resolve("--arrangement", "parallel", saved=saved).cbam == VARIANT_CONFIG
    with pytest.raises(CbamVizError, match=r"--channel-pool avg \(the run has max\)"):
        resolve("--channel-pool", "avg", saved=saved)
    # runs saved before the options existed: the paper's design
    old = {k: v for k, v in saved.items() if k != "cbam"} | {"arch": "resnet50-cbam"}
    assert resolve(saved=old).cbam == CBAMConfig()
    with pytest.raises(CbamVizError, match=r"--spatial-kernel 3 \(the run has 7\)"):
        resolve("--spatial-kernel", "3", saved=old)


def test_init_gives_its_options_and_refuses_others():
    assert resolve("--arch", "resnet18-cbam", init_cbam=VARIANT_CONFIG).cbam == VARIANT_CONFIG
    assert resolve("--arch", "resnet18-cbam", "--reduction", "8", init_cbam=VARIANT_CONFIG).cbam == VARIANT_CONFIG
    with pytest.raises(CbamVizError, match=r"--init: --reduction 16 \(the --init checkpoint has 8\)"):
        resolve("--arch", "resnet18-cbam", "--reduction", "16", init_cbam=VARIANT_CONFIG)


def test_tiny_variant_run_and_init_from_it(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert tr.main(argv(data_dir, out, "--arch", "resnet18-cbam", *VARIANT, steps=2)) == 0
    final = load_checkpoint(out / tr.FINAL)
    assert final.meta.arch == "resnet18-cbam" and final.meta.cbam == VARIANT_CONFIG
    assert final.meta.display_name == "CBAM-ResNet18 (parallel, max pooling, 3×3 spatial kernel, r=8)"
    result = tr.train(parse(argv(data_dir, tmp_path / "next", "--init", str(out / tr.FINAL), steps=1)[2:]))
    assert result.config.arch == "resnet18-cbam" and result.config.cbam == VARIANT_CONFIG
    assert load_checkpoint(tmp_path / "next" / tr.FINAL).meta.cbam == VARIANT_CONFIG
