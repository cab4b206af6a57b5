"""The installable package: declared dependencies, the `cbam-viz` console script from a built wheel, the public API,
the README's library snippet, and the PyTorch Hub entry points."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

import cbam_viz
from cbam_viz.errors import CbamVizError

ROOT = Path(__file__).resolve().parent.parent


def test_declared_dependencies_are_the_tested_pins_as_lower_bounds():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = {re.split(r"[<>=]", d)[0]: re.search(r">=([^,]+)", d)[1] for d in declared}
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name] = version
    assert lower == pins


def import_graph() -> dict[str, set[str]]:
    """Each cbam_viz module's imports of other cbam_viz modules, at any depth of the file (lazy imports too)."""
    modules = {}
    for path in (ROOT / "cbam_viz").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_module_imports_itself_through_others():
    graph, state, cycles = import_graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert len(graph) > 60 and cycles == []
    # the core never reaches up to the app or a command
    for core in ("cbam_viz.nn.cbam", "cbam_viz.nn.resnet", "cbam_viz.io.checkpoints", "cbam_viz.cam.engine"):
        assert not {t for t in graph[core] if t.startswith(("cbam_viz.app", "cbam_viz.cli", "cbam_viz.train"))}


def test_the_public_api_and_a_fast_import():
    for name in ("build_model", "CBAMConfig", "load_checkpoint", "load_pair", "compare"):
        assert name in cbam_viz.__all__ and callable(getattr(cbam_viz, name))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cbam_viz.nothing  # noqa: B018
    code = "import sys, cbam_viz; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_readme_library_snippet_runs_on_an_example(monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("## Library use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    imports = [line for line in snippet.splitlines() if "import" in line]
    assert imports == ["from cbam_viz import compare, load_pair"]
    monkeypatch.chdir(ROOT / "examples")
    exec(snippet.replace('"photo.jpg"', '"camel.jpg"'), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("baseline ") and lines[1].startswith("cbam ")
    assert lines[2] == "torch.Size([7, 7])"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (without dependencies, which this venv has) into a folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "cbam_viz", source / "cbam_viz", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp.glob("cbam_viz-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "cbam_viz/familiarity/unfamiliar_photos.json" in names
    assert not any(n.startswith(("tests/", "weights/")) for n in names)
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


def test_the_console_script_of_the_installed_wheel(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    script = installed / "bin" / "cbam-viz"

    def cbam_viz_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    top = cbam_viz_cli("--help")
    assert top.returncode == 0 and top.stdout.startswith("usage: cbam-viz")
    for command in ("app", "export", "train", "train-pair"):
        assert command in top.stdout
    app = cbam_viz_cli("app", "--help")
    assert app.returncode == 0 and "--baseline" in app.stdout and "--mcp" in app.stdout
    # Installed without the checkout, the bundled weights are looked for where CBAM_VIZ_WEIGHTS says.
    env["CBAM_VIZ_WEIGHTS"] = str(tmp_path)
    missing = cbam_viz_cli("app", "--port", "1")
    assert missing.returncode == 2 and "CBAM_VIZ_WEIGHTS" in missing.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import cbam_viz; print(cbam_viz.__file__)"], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(installed)


def test_torch_hub_entry_points():
    model = torch.hub.load(str(ROOT), "resnet50_cbam", source="local")
    assert len(model.class_names) == 32 and hasattr(model.layer4[2], "cbam")
    random = torch.hub.load(str(ROOT), "resnet18_cbam", source="local", pretrained=False, num_classes=5)
    assert random.fc.out_features == 5 and hasattr(random.layer1[0], "cbam")
    with pytest.raises(CbamVizError, match="no bundled weights"):
        torch.hub.load(str(ROOT), "resnet101", source="local")
