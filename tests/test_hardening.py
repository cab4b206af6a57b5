"""Hardening for a demo hosted for strangers: every kind of bad file through the /compare API, the page and the
export CLI (tests/badfiles.py generates them); what the server exposes; a malicious checkpoint at start-up.

Each bad file must give the models' correct answer for what a viewer shows, or a one-line message that names the
file by its base name, with no traceback and no server path; the server must answer the next good request right.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from cbam_viz.app.figure_export import ExportFolder
from cbam_viz.app.server import MAX_UPLOAD_FILES, request_bounds
from cbam_viz.app.studio import Studio
from cbam_viz.cam.engine import fit_within
from cbam_viz.export.discover import IMAGE_SUFFIXES
from tests import badfiles
from tests.apphelpers import ROOT, app, app_process, free_port, serve
from tests.conftest import CLASS_NAMES, random_image
from tests.loadharness import call_rest, compare_answer, expected_answer, upload_raw, upload_stream

pytestmark = pytest.mark.timeout(600)

KINDS = [entry.kind for entry in badfiles.entries(Path("unused"))]
SERVER_PATHS = re.compile(r"(/tmp|/work|/home|/root|/var|/usr|/etc|gradio_api|[A-Za-z]:\\)")


def assert_clear(message: str, web: bool = True) -> None:
    """A message for a person: one line, no traceback, no server path, not Gradio's anonymous fallback; on the web
    no live HTML either (a file name may hold some; the CLI's manifest may show it as it is)."""
    assert message.strip() and "\n" not in message.strip(), message
    assert "Traceback" not in message and "verbose error" not in message and "Exception" not in message, message
    assert not SERVER_PATHS.search(message), message
    assert not web or ("<img" not in message and "<script" not in message), message


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, badfiles.Entry]:
    root = tmp_path_factory.mktemp("badfiles")
    entries = badfiles.write_corpus(root / "corpus", marker=root / "pickle-was-run")
    assert len(entries) >= 25 and len({e.kind for e in entries}) == len(entries)
    return {entry.kind: entry for entry in entries}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """The page and API in this process with the tiny models and a 1 MB upload cap (as test_app's server)."""
    studio = Studio(tiny_models, examples_dir=None)
    with serve(studio, ExportFolder(tmp_path_factory.mktemp("exports")), max_file_size="1mb") as served:
        yield served


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


# ------------------------------------------------------------------------------------------ the corpus: API
@pytest.mark.parametrize("kind", KINDS)
def test_corpus_through_the_api(kind, corpus, server, client, tiny_models, one_thread, tmp_path):
    entry = corpus[kind]
    if entry.sparse:  # 200 MB: gradio_client refuses before sending, the server's request bound answers 413
        with pytest.raises(ValueError, match="exceeds the maximum file size"):
            client.predict(handle_file(str(entry.path)), api_name="/compare")
        response = upload_stream(server.url, entry.path)
        assert response.status_code == 413 and "an upload request may be at most 3 MB" in response.text
    else:
        if isinstance(entry.name, bytes):  # a browser or curl can send it; gradio_client cannot encode it
            uploaded = upload_raw(server.url, entry.name, entry.path.read_bytes())
            payload = {"path": uploaded, "orig_name": Path(uploaded).name, "meta": {"_type": "gradio.FileData"}}
        else:
            payload = handle_file(str(entry.path))
        if entry.ok:
            answer = client.predict(payload, api_name="/compare")
            plain = isinstance(entry.name, str) and re.fullmatch(r"[\w.-]+", entry.name)
            name = entry.name if plain else None  # Gradio tidies odd names ('..\\..\\x.jpg' -> '....x.jpg')
            assert compare_answer(answer, expected_answer(badfiles.reference(entry), tiny_models), name) == []
            shown = answer[2]["image"]["name"]
            assert "/" not in shown and "\\" not in shown and shown.strip()
            if kind == "exif-rotated":  # the displayed orientation (stored 64x96), and the heatmap with it
                assert (answer[2]["image"]["width"], answer[2]["image"]["height"]) == (96, 64)
        else:
            with pytest.raises(AppError) as caught:
                client.predict(payload, api_name="/compare")
            message = str(caught.value)
            assert entry.error in message, message
            assert_clear(message)
            assert message.split(" is ")[0] in (entry.label, re.sub(r"[<>]", "", entry.label)), message
    # the server is still up and answers the next good request correctly
    good = random_image(1000 + KINDS.index(kind), (60 + KINDS.index(kind), 50))
    good.save(tmp_path / "next.png")
    answer = client.predict(handle_file(str(tmp_path / "next.png")), target="white star", api_name="/compare")
    assert compare_answer(answer, expected_answer(good, tiny_models, {"target": "white star"}), "next.png") == []


def test_the_pickle_was_never_run(corpus, client):
    entry = corpus["pickle-as-png"]
    with pytest.raises(AppError, match="is not an image file"):
        client.predict(handle_file(str(entry.path)), api_name="/compare")
    assert not (entry.path.parent.parent / "pickle-was-run").exists()


# ------------------------------------------------------------------------------------------ the corpus: CLI
def test_corpus_through_the_export_cli(corpus, tiny_checkpoints, tiny_models, one_thread, tmp_path):
    folder = next(iter(corpus.values())).path.parent
    out = tmp_path / "out"
    watched = [folder.parent, tmp_path]
    before = {p: p.stat().st_mtime_ns for root in watched for p in root.rglob("*")}
    explicit = [str(e.path) for e in corpus.values() if e.path.suffix.lower() not in IMAGE_SUFFIXES]  # .svg, ...
    dotted = os.path.join(str(folder), "..", folder.name, "one.png")  # '..' in an argument
    proc = subprocess.run(
        [sys.executable, "-m", "cbam_viz", "export", str(folder), *explicit, dotted, "--out", str(out),
         "--baseline", str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"]), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    bad = sum(not e.ok for e in corpus.values())
    assert f"{len(corpus) - bad} image(s) exported" in proc.stdout and f"{bad} unreadable" in proc.stdout, proc.stdout

    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    assert len(rows) == 2 * len(corpus)  # one row per image and model, the '..' argument deduplicated
    for entry in corpus.values():
        shown = os.fsencode(str(entry.path)).decode("utf-8", "backslashreplace")
        found = by_image.get(shown)
        assert found and sorted(r["model"] for r in found) == ["baseline", "cbam"], (entry.kind, shown)
        if not entry.ok:
            for row in found:
                assert row["overlay"] is None and entry.error in row["error"], (entry.kind, row["error"])
                assert_clear(row["error"], web=False)
            continue
        image = badfiles.reference(entry)
        expected = expected_answer(image, tiny_models)
        for row in found:
            assert row["error"] is None, (entry.kind, row["error"])
            overlay = (out / row["overlay"]).resolve()
            assert overlay.is_relative_to(out.resolve()) and overlay.is_file()
            assert (row["image_width"], row["image_height"]) == image.size
            shown_size = fit_within(image, 1024).size
            assert (row["overlay_width"], row["overlay_height"]) == shown_size, entry.kind
            labels, probs, target_p = expected.models[row["model"]]
            assert row["target_prob"] == pytest.approx(target_p, abs=1e-4), entry.kind
            with Image.open(overlay) as im:
                pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
            assert np.abs(pixels - expected.overlays[row["model"]]).mean() < 1.0, entry.kind  # lossless PNG
    # nothing was written outside --out, and the inputs were left alone
    after = {p: p.stat().st_mtime_ns for root in watched for p in root.rglob("*")}
    outside = [p for p in set(after) - set(before) if not p.is_relative_to(out)]
    assert outside == [] and all(after[p] == before[p] for p in before if p in after), outside
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    assert not (folder.parent / "pickle-was-run").exists()


# ------------------------------------------------------------------------------------------ the corpus: page
PAGE_FILES = {  # representative bad files and the toast each must give
    "truncated-jpeg": "truncated.jpg is truncated or corrupt",
    "html-as-jpg": "page.jpg is not an image file",
    "png-bomb": "bomb.png is too large",
    "empty": "empty.jpg is empty",
    "html-in-name": "onerror=alert(1)",  # shown as text, never as an element
}


def test_page_gives_clear_messages_for_bad_files(corpus, tiny_checkpoints, tmp_path):
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium, upload, wait_for_heatmaps

    require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    oversized = tmp_path / "oversized.png"
    oversized.write_bytes(badfiles.encode(badfiles.noise((900, 900), 5), "PNG"))  # ~2.4 MB, over the 1 MB cap
    assert oversized.stat().st_size > 2**20
    env = {"GRADIO_SERVER_NAME": ""}
    with app_process(
        "--baseline", str(tiny_checkpoints["baseline"]), "--cbam", str(tiny_checkpoints["cbam"]),
        "--max-file-size", "1mb", host=None, env=env,
    ) as running, sync_api.sync_playwright() as playwright:
        assert listening_addresses(running.port) == {"127.0.0.1"}  # no --host: loopback only
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            dialogs = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(running.url)
            page.wait_for_selector("#input-image input[type=file]", state="attached")
            for kind, expected in PAGE_FILES.items():
                upload(page, corpus[kind].path)
                toast = page.locator(".toast-body", has_text=expected).first
                toast.wait_for()
                text = " ".join(toast.inner_text().split())
                assert_clear(text, web=False)
                assert toast.locator("img, script").count() == 0, kind
            # over the upload cap: the page says so (Gradio's own check) and nothing reaches the models
            upload(page, oversized)
            toast = page.locator(".toast-body", has_text="exceed the maximum allowed size").first
            toast.wait_for()
            assert "oversized.png" in toast.inner_text() and "/tmp" not in toast.inner_text()
            # the next good file works: an EXIF-rotated photo, analysed as it is displayed
            upload(page, corpus["exif-rotated"].path)
            wait_for_heatmaps(page)
            size = page.eval_on_selector("#heatmap-cbam img", "img => [img.naturalWidth, img.naturalHeight]")
            assert size == [96, 64]
            # and a bundled example (Gradio copies examples into its upload folder: they stay allowed)
            page.locator(".gallery-item, [data-testid='example'] img, .example").first.click()
            page.wait_for_function(
                "document.querySelector('#caption-cbam').innerText.includes('P = ')"
                " && document.querySelector('#heatmap-cbam img').naturalWidth === 224"
            )
            assert dialogs == []  # the HTML in a file name never ran
        finally:
            browser.close()


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses a TCP socket listens on at `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                raw = bytes.fromhex(address)
                if size == 8:
                    found.add(".".join(str(b) for b in raw[::-1]))
                else:
                    found.add(":".join(raw[i : i + 4][::-1].hex() for i in range(0, 16, 4)))
    return found


# ------------------------------------------------------------------------------------------ exposure
def test_api_cannot_name_a_file_on_the_server(server, client, tiny_models, tmp_path):
    """With preprocess=False, Gradio checks only payloads carrying FileData's `meta`; the app checks the rest."""
    secret = tmp_path / "secret.png"
    random_image(77, (80, 60)).save(secret)
    folder = Path(get_upload_folder()) / f"hardening-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    link = folder / "innocent.png"
    link.symlink_to(secret)
    try:
        for payload in (
            {"path": str(secret)},
            {"path": str(link)},  # a symlink in the upload folder that leads out of it
            {"path": f"{get_upload_folder()}/../../{secret.relative_to('/')}"},
            {"path": str(secret), "orig_name": "x.png", "url": None, "size": None, "mime_type": None},
        ):
            for api_name, kwargs in (("/compare", {}), ("/paper_figure", {"include_current": True})):
                with pytest.raises(AppError) as caught:
                    client.predict(payload, api_name=api_name, **kwargs)
                message = str(caught.value)
                assert "was not uploaded to this app" in message, (payload, api_name, message)
                assert_clear(message)
        # uploading the same file is what a client does, and that works
        answer = client.predict(handle_file(str(secret)), api_name="/compare")
        assert compare_answer(answer, expected_answer(Image.open(secret).convert("RGB"), tiny_models)) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


SEND = "send the image as a file upload (gradio_client: handle_file(path))"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("PATH", f"the image was sent as a text string, not a file: {SEND}"),
        ("https://example.com/cat.jpg", f"the image was sent as a URL, which the server does not fetch: {SEND}"),
        ("missing.jpg", f"the image was sent as a text string, not a file: {SEND}"),
        ("", f"no image was sent: {SEND}"),
        (12, f"the image was sent as a value of type int, not a file: {SEND}"),
    ],
)
def test_images_sent_without_handle_file_get_a_message_saying_what_to_send(client, tmp_path, payload, expected):
    """Gradio validates every payload against the component's data model even with preprocess=False, and its
    pydantic error came back as the anonymous 'has not enabled verbose error reporting'."""
    if payload == "PATH":
        payload = str(tmp_path / "photo.png")
        random_image(3, (40, 30)).save(payload)
    for api_name, kwargs in (("/compare", {}), ("/paper_figure", {"include_current": True})):
        with pytest.raises(AppError) as caught:
            client.predict(payload, api_name=api_name, **kwargs)
        assert str(caught.value) == expected, (api_name, str(caught.value))
        assert_clear(str(caught.value))
    with pytest.raises(AppError, match=re.escape(SEND)):
        client.predict(extra_images=[payload or "x"], include_current=False, api_name="/paper_figure")


def test_raw_rest_calls_get_answers_or_messages(server, tiny_models, tmp_path):
    image = random_image(8, (70, 50))
    uploaded = upload_raw(server.url, b"rest.png", badfiles.encode(image, "PNG"))
    meta = {"meta": {"_type": "gradio.FileData"}}
    # only the image, as the README promises: the other inputs take their defaults
    for payload in ({"path": uploaded, **meta}, {"path": uploaded, "orig_name": "rest.png"}):
        event, data = call_rest(server.url, [payload])
        assert event == "complete", data
        scores = data[2]
        assert (scores["target"], scores["method"], scores["layer"]) == ("top1", "gradcam", "layer4")
        expected = expected_answer(image, tiny_models)
        assert [p["label"] for p in scores["models"]["cbam"]["top5"]] == expected.models["cbam"][0]
    # meta naming a server file: refused by the app before Gradio's own anonymous check
    event, data = call_rest(server.url, [{"path": "/etc/passwd", **meta}, "top1", "gradcam", "layer4", 0.5, "jet", ""])
    assert event == "error" and data["error"] == f"passwd was not uploaded to this app: {SEND}", data
    event, data = call_rest(server.url, [])
    assert event == "error" and data["error"].startswith("missing input image: send the inputs in the order [image,")
    assert_clear(data["error"])
    event, data = call_rest(server.url, ["missing.jpg"])
    assert event == "error" and data["error"] == f"the image was sent as a text string, not a file: {SEND}"
    # a list in place of the one image: a message, not a blank error
    event, data = call_rest(server.url, [[{"path": uploaded, **meta}]])
    assert event == "error" and data["error"] == f"send one image here, not a list: {SEND}", data


def test_request_bodies_and_uploads_over_their_bounds_are_refused_before_they_are_read(server):
    """With a 1 MB upload cap: a JSON body over 4/3 MB + 1 MiB, an upload over 2 MB + 1 MiB (by Content-Length or
    as it streams in chunks) and an upload of more than MAX_UPLOAD_FILES files get 413 with the reason."""
    body_bytes, upload_bytes = request_bounds(2**20)
    call = server.url + "gradio_api/call/compare"
    big = b'{"data": ["' + b"A" * int(body_bytes) + b'"]}'
    response = httpx.post(call, content=big, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "a request body may be at most 2 MB" in response.text, response.text

    def chunks(total: int):  # no Content-Length: the bound applies as the body streams in
        yield b'{"data": ["'
        for _ in range(total // 65536):
            yield b"A" * 65536

    response = httpx.post(call, content=chunks(int(body_bytes) + 2**20), timeout=60)
    assert response.status_code == 413 and "a request body may be at most" in response.text, response.text
    upload = server.url + "gradio_api/upload"
    response = httpx.post(upload, files=[("files", ("big.png", b"\x89PNG" + b"0" * int(upload_bytes)))], timeout=60)
    assert response.status_code == 413 and "an upload request may be at most 3 MB" in response.text, response.text
    many = [("files", (f"p{i}.png", b"\x89PNG")) for i in range(MAX_UPLOAD_FILES + 1)]
    response = httpx.post(upload, files=many, timeout=60)
    assert response.status_code == 413 and f"at most {MAX_UPLOAD_FILES} files" in response.text, response.text
    within = httpx.post(upload, files=many[:MAX_UPLOAD_FILES], timeout=60)
    assert within.status_code == 200 and len(within.json()) == MAX_UPLOAD_FILES
    assert httpx.get(server.url, timeout=60).status_code == 200  # the server goes on serving


def test_an_upload_part_without_a_file_name_gets_400_with_what_to_send(server):
    for files in ({"files": ("", b"\x89PNG not really")}, {"files": (None, b"plain form field")}):
        response = httpx.post(server.url + "gradio_api/upload", files=files, timeout=60)
        assert response.status_code == 400, (response.status_code, response.text[:200])
        assert response.text == "send the image as a file: the multipart field 'files' needs a file name " \
            "(curl: -F files=@photo.jpg)"
    good = httpx.post(server.url + "gradio_api/upload", files={"files": ("ok.png", b"\x89PNG")}, timeout=60)
    assert good.status_code == 200 and good.json()[0].endswith("ok.png")


def test_too_many_figure_images_are_refused_before_any_is_decoded(server, client, monkeypatch, tmp_path):
    """Each upload may be up to the cap (50 MB, 64 MP decoded): all of them were decoded before the count check."""
    decoded = []

    def decode(*args):
        decoded.append(args)
        raise RuntimeError("decoded")  # an Exception: the handler answers (pytest.fail here would hang the request)

    monkeypatch.setattr(server.studio, "_decode", decode)
    files = []
    for i in range(9):
        files.append(tmp_path / f"f{i}.png")
        random_image(600 + i, (40, 30)).save(files[-1])
    with pytest.raises(AppError, match="the figure takes at most 8 images; 9 were given"):
        client.predict(extra_images=[handle_file(str(f)) for f in files], include_current=False,
                       api_name="/paper_figure")
    assert decoded == []


def test_only_the_apps_own_files_are_served(server, tiny_checkpoints, tmp_path):
    uploaded = upload_raw(server.url, b"mine.png", badfiles.encode(random_image(5), "PNG"))
    mine = httpx.get(server.url + "gradio_api/file=" + uploaded)
    assert mine.status_code == 200 and mine.content[:4] == b"\x89PNG"  # the route itself works
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    refused = [
        "/etc/passwd", str(ROOT / "app.py"), str(ROOT / "tests" / "conftest.py"), str(ROOT / ".git" / "config"),
        str(ROOT / "examples" / "penguin.jpg"), str(ROOT / "requirements.txt"), str(tiny_checkpoints["cbam"]),
        str(secret), f"{Path(uploaded).parent}/../../../etc/passwd", f"{get_upload_folder()}/../{secret.name}",
    ]
    for path in refused:
        for url in (
            f"{server.url}gradio_api/file={path}",
            f"{server.url}gradio_api/file={urllib.parse.quote(path)}",
            f"{server.url}file={path}",
        ):
            response = httpx.get(url)
            assert response.status_code in (403, 404), (url, response.status_code)
            assert "root:" not in response.text and "top secret" not in response.text and "torch" not in response.text
    for url in (f"{server.url}gradio_api/file=..%2f..%2f..%2fetc%2fpasswd", f"{server.url}static/..%2f..%2fapp.py",
                f"{server.url}assets/..%2f..%2f..%2fapp.py", f"{server.url}gradio_api/file=%2e%2e/%2e%2e/etc/passwd"):
        response = httpx.get(url)
        assert response.status_code in (400, 403, 404), (url, response.status_code)
        assert "root:" not in response.text and "def main" not in response.text


def test_app_binds_loopback_caps_uploads_and_never_shares(monkeypatch, tiny_models):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADIO_SHARE", "True")  # even this does not open a share link
    seen = {}

    def launch(self, **kwargs):
        seen.update(kwargs, demo=self)

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(app, "load_studio", lambda args: Studio(tiny_models, examples_dir=None))
    assert app.main([]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False
    assert seen["max_file_size"] == "50mb" and seen["show_error"] is False
    assert not seen.get("allowed_paths")
    assert seen["demo"]._queue.max_size == 32  # a bounded queue
    source = (ROOT / "cbam_viz" / "app" / "launch.py").read_text()
    assert "share=True" not in source and "allowed_paths" not in source


def test_docker_image_runs_as_a_user_without_write_access_to_the_code():
    from tests.test_docker import instructions

    found = instructions((ROOT / "Dockerfile").read_text())
    users = [i for i, (word, _) in enumerate(found) if word == "USER"]
    assert users and found[users[-1]][1].split(":")[0] not in ("root", "0")
    after = [word for word, _ in found[users[-1] :]]
    assert not {"COPY", "ADD", "RUN"} & set(after), after  # everything the container runs, it runs as that user
    assert not any("--chown" in args for _, args in found)  # the code stays root-owned: read-only to the app


# ------------------------------------------------------------------------------------------ checkpoints
def test_app_refuses_a_malicious_checkpoint_with_one_line(tiny_checkpoints, tmp_path):
    marker = tmp_path / "pwned"
    badfiles.Malicious.marker = str(marker)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": badfiles.Malicious()}, evil)
    proc = subprocess.run(
        [sys.executable, "app.py", "--baseline", str(evil), "--cbam", str(tiny_checkpoints["cbam"]),
         "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "evil.pth" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_page_events_sent_without_their_event_data_get_a_message_or_change_nothing(tiny_models, tmp_path):
    from cbam_viz.app.handlers import Handlers

    handlers = Handlers(Studio(tiny_models, examples_dir=None), ExportFolder(tmp_path))
    with pytest.raises(gr.Error, match="a corner comes from a click on the localization preview"):
        handlers.click_corner(None, None)
    assert handlers.pick_target() == gr.skip() and handlers.pick_example() == gr.skip()
    outside = gr.EventData(None, {"index": 0, "value": {"image": {"path": "/etc/passwd"}}})  # names a server file
    assert handlers.pick_example(outside) == gr.skip()
    inside = Path(handlers.uploads[0]) / "events-test" / "example.png"
    inside.parent.mkdir(parents=True, exist_ok=True)
    random_image(67).save(inside)
    assert handlers.pick_example(gr.EventData(None, {"index": 0, "value": {"image": {"path": str(inside)}}})) == str(
        inside
    )
    assert handlers.pick_target(gr.EventData(None, {"index": 0, "value": CLASS_NAMES[2]})) == CLASS_NAMES[2]
