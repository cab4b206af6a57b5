"""README.md's Hugging Face Spaces front matter: it parses, names the pinned Gradio and an existing app file, and
leaves the README opening, for a reader, with `make run` and `make test`."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def front_matter() -> tuple[dict, str]:
    """(the YAML block between the leading '---' lines, parsed; the Markdown after it)."""
    match = re.match(r"---\n(.*?)\n---\n", README, re.S)
    assert match, "README.md must start with a '---' YAML block"
    return yaml.safe_load(match.group(1)), README[match.end():]


def test_spaces_front_matter_matches_the_project():
    meta, _ = front_matter()
    pins = dict(re.findall(r"^([\w-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pins["gradio"]
    assert meta["python_version"] == "3.11"  # a string: YAML would read 3.11 unquoted as a float
    assert (ROOT / meta["app_file"]).is_file()
    assert meta["suggested_hardware"] == "cpu-basic"
    assert meta["title"] and meta["emoji"] and meta["license"]
    assert 0 < len(meta["short_description"]) <= 60  # the Hub's limit
    assert isinstance(meta["tags"], list) and "grad-cam" in meta["tags"]


def test_readme_still_opens_with_the_two_commands():
    _, body = front_matter()
    first_block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    assert body.startswith("# CBAM Grad-CAM Studio\n")
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make run", "make test"]
