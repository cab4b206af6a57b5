"""`python app.py --mcp`: the compare endpoint as an MCP tool, listed and called through the `mcp` client package.

The `mcp` package is optional for the app (pyproject's `mcp` extra) and part of requirements-test.txt; without it
this module is skipped and says so.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import sys
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
from PIL import Image

from cbam_viz.cam.engine import compare
from tests.apphelpers import ROOT, app, app_process

mcp = pytest.importorskip("mcp", reason="the mcp package is missing: pip install -r requirements-test.txt")
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

EXAMPLE = ROOT / "tests" / "fixtures" / "scenes" / "green_disc.png"


def data_url(path: Path) -> str:
    """The file as a base64 data: URL, the form an MCP client sends a file in."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


async def session_calls(url: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[list, list]:
    """List the server's tools, then make each (tool, arguments) call over one MCP connection; (tools, results)."""

    async def progress(_done: float, _total: float | None, _message: str | None) -> None:
        """A progress callback: with one, Gradio returns each output of a multi-output tool as its own item."""

    async with streamable_http_client(url) as (read, write, _), mcp.ClientSession(read, write) as session:
        await session.initialize()
        tools = (await session.list_tools()).tools
        results = [
            await session.call_tool(name, args, read_timeout_seconds=timedelta(seconds=120), progress_callback=progress)
            for name, args in calls
        ]
    return tools, results


@pytest.fixture(scope="module")
def mcp_server(tiny_checkpoints):
    """`python app.py --mcp` with the tiny checkpoints, as a user starts it."""
    env = {"CBAM_VIZ_BASELINE": str(tiny_checkpoints["baseline"]), "CBAM_VIZ_CBAM": str(tiny_checkpoints["cbam"])}
    with app_process("--mcp", "--examples", str(EXAMPLE.parent), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def image_server():
    """A plain HTTP server for the examples folder, to offer the tool an http URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(EXAMPLE.parent), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_compare_tool_lists_and_answers_like_the_library(mcp_server, image_server, tiny_models):
    calls = [("compare", {"image": data_url(EXAMPLE)}), ("compare", {"image": image_server + EXAMPLE.name})]
    tools, (result, by_url) = asyncio.run(session_calls(mcp_server.url + "gradio_api/mcp/", calls))

    tool = {t.name: t for t in tools}["compare"]
    assert tool.description.startswith("Grad-CAM (or another CAM method) of ResNet50 and CBAM-ResNet50")
    schema = tool.inputSchema
    assert schema["required"] == ["image"]
    assert list(schema["properties"]) == ["image", "target", "method", "layer", "opacity", "colormap", "box",
                                           "attention_effects"]
    assert all(p["description"] for p in schema["properties"].values())  # from compare's Args: section
    assert "data: URL" in schema["properties"]["image"]["description"]

    assert not result.isError, result.content
    kinds = [c.type for c in result.content]
    assert kinds == ["image", "text", "image", "text", "text"], kinds  # two overlays (each with its URL), scores
    for overlay in (result.content[0], result.content[2]):
        with Image.open(io.BytesIO(base64.b64decode(overlay.data))) as im:
            assert im.size == (224, 168)
    scores = ast.literal_eval(result.content[4].text)  # Gradio sends the JSON output as a Python literal
    reference = compare(Image.open(EXAMPLE).convert("RGB"), tiny_models)
    for key in ("baseline", "cbam"):
        entry, ref = scores["models"][key], reference.results[key]
        assert [p["label"] for p in entry["top5"]] == [p.label for p in ref.top5]
        assert entry["target"]["p"] == pytest.approx(ref.target.prob, abs=1e-5)
        assert "familiarity" in entry
    assert scores["localization"] == {"source": "example mask", "box": None}
    assert -1.0 <= scores["models"]["cbam"]["attention_agreement"]["pearson"] <= 1.0

    # the server fetches no URL, for MCP as for the HTTP API, and says what to send instead
    assert by_url.isError
    assert "is a URL, which the server does not fetch" in by_url.content[0].text


def test_mcp_is_off_by_default_and_needs_its_package(monkeypatch, capsys):
    assert app.parse_args([]).mcp is False and app.parse_args(["--mcp"]).mcp is True
    monkeypatch.setitem(sys.modules, "mcp", None)  # as if the package were not installed
    assert app.main(["--mcp"]) == 2
    assert "--mcp needs the mcp package" in capsys.readouterr().err
