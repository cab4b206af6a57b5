"""Smoke test of `bench`: it runs end to end at a tiny size and reports every figure (timings are not asserted)."""

from __future__ import annotations

import json

from cbam_viz import bench


def test_bench_smoke(tmp_path, tiny_checkpoints, capsys):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    argv = ["--baseline", str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"])]
    argv += ["--size", "64", "--repeats", "1", "--batch", "2", "--images", "2", "--image-size", "80x60"]
    argv += ["--threads", "1", "--json", str(out)]
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    for label in ("compare()", "familiarity scores", "top-5 CAMs", "pytorch_grad_cam", "export, real",
                  "CBAM-ResNet50 forward", "attention knock-outs"):
        assert label in printed
    result = json.loads(out.read_text())
    assert result["input_size"] == 64 and result["threads"] == 1 and result["device"] == "cpu"
    assert set(result["goals"]) == set(bench.GOALS)
    for value in result["figures"].values():
        assert value > 0
    assert all(len(samples) >= 1 for samples in result["samples_s"].values())
    assert set(result["figures_from_minimums"]) <= set(result["figures"])
    # the scores' own time: one entry per timed compare() (not the warm-up), each inside that compare's time
    assert "timed inside compare()" in printed
    timed, whole = result["samples_s"]["familiarity_scores"], result["samples_s"]["compare_familiarity"]
    assert len(timed) == len(whole) and all(0 < t < w for t, w in zip(timed, whole))
    assert result["figures"]["familiarity_timed_ratio"] > 1


def test_bench_rejects_bad_arguments(capsys):
    assert bench.main(["--image-size", "big"]) == 2
    assert bench.main(["--baseline", "only-one.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and "both --baseline and --cbam" in err and "Traceback" not in err
