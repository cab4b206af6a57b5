"""--device as the app, the export, the benchmark and training read it (devices.resolve_device)."""

from __future__ import annotations

import pytest
import torch

from cbam_viz.devices import resolve_device
from cbam_viz.errors import CbamVizError


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(("name", "expected"), [("tpu", "unknown device 'tpu'"), ("meta", "unsupported device"),
                                                ("x" * 500, "(500 characters); use cpu or cuda")])
def test_other_devices_are_refused_with_what_to_pass(name, expected):
    with pytest.raises(CbamVizError) as caught:
        resolve_device(name)
    assert expected in str(caught.value)


def test_cuda_follows_local_rank_or_says_there_is_none():
    if not torch.cuda.is_available():
        with pytest.raises(CbamVizError, match="no CUDA device is available.*use --device cpu"):
            resolve_device("cuda")
        return
    count = torch.cuda.device_count()
    assert resolve_device("cuda", {"LOCAL_RANK": str(count + 1)}) == torch.device("cuda", (count + 1) % count)
    with pytest.raises(CbamVizError, match="CUDA device\\(s\\) are visible"):
        resolve_device(f"cuda:{count}")
