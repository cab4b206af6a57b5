"""The Gradio server around the page: one-line user errors, upload checks before Gradio's, and cache pruning."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import inspect
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from cbam_viz.app.allocator import IDLE_TRIM
from cbam_viz.app.served import OVERLAYS, cache_schedule, delete_old_files, prune_empty_folders
from cbam_viz.app.uploads import SEND_A_FILE, check_upload
from cbam_viz.errors import CbamVizError

log = logging.getLogger("cbam_studio")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into a gr.Error with a human message: our CbamVizError text, or a generic line.

    The message is HTML-escaped (Gradio renders it as HTML and file names come from users); unexpected errors
    are logged with their traceback on the server, never sent to the page. The last request to end trims the heap.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with IDLE_TRIM.request():
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CbamVizError as err:
            log.info("%s: %s", fn.__name__, err)
            raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                "Something went wrong on the server while handling this request; the server log has the details.",
                print_exception=False,
            ) from None

    return wrapper


class UnnamedUploadPart:
    """ASGI middleware: a multipart upload part without a file name is a plain form field, which Gradio's upload
    route fails on with a TypeError (HTTP 500); answer 400 with what to send instead."""

    MESSAGE = "send the image as a file: the multipart field 'files' needs a file name (curl: -F files=@photo.jpg)"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/gradio_api/upload"):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except TypeError as err:
            if started or "GradioUploadFile" not in str(err):
                raise
            await PlainTextResponse(self.MESSAGE, status_code=400)(scope, receive, send)


MAX_UPLOAD_FILES = 8  # files one upload request may carry: the paper figure's extra images


class RequestBounds:
    """ASGI middleware: a request body over its bound is refused (HTTP 413, a one-line reason) before it is read
    whole, by its Content-Length or, for a body sent in chunks, as soon as its running count passes the bound; an
    upload carries at most `max_files` files. Bounds: `upload_bytes` for /gradio_api/upload, `body_bytes` else."""

    FILENAME = b"; filename="  # each file part of a multipart upload names its file

    def __init__(self, app: Any, body_bytes: float, upload_bytes: float, max_files: int = MAX_UPLOAD_FILES) -> None:
        self.app, self.body_bytes, self.upload_bytes, self.max_files = app, body_bytes, upload_bytes, max_files

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        upload = scope["path"].endswith("/gradio_api/upload")
        limit = self.upload_bytes if upload else self.body_bytes
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._refuse(scope, send, self._too_large(upload, limit))
            return
        state = {"bytes": 0, "files": 0, "tail": b"", "refused": None, "started": False}

        async def counted() -> dict:
            message = await receive()
            if message["type"] == "http.request" and state["refused"] is None:
                chunk = message.get("body", b"")
                state["bytes"] += len(chunk)
                if upload:
                    window = state["tail"] + chunk
                    state["files"] += window.count(self.FILENAME)
                    state["tail"] = window[-(len(self.FILENAME) - 1) :]
                if state["bytes"] > limit:
                    state["refused"] = self._too_large(upload, limit)
                elif state["files"] > self.max_files:
                    state["refused"] = f"an upload takes at most {self.max_files} files; this one has more"
                if state["refused"] is not None:
                    return {"type": "http.disconnect"}  # the app stops reading; nothing more is buffered
            return message

        async def guarded(message: dict) -> None:
            if state["refused"] is None:
                state["started"] = state["started"] or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if state["refused"] is None:
                raise
        if state["refused"] is not None:
            if not state["started"]:
                await self._refuse(scope, send, state["refused"])
            # the chunks the app read before the refusal stay in a reference cycle (its exception for the
            # disconnect holds them in its traceback) until a full collection, which allocations of bytes
            # alone do not trigger
            await asyncio.to_thread(IDLE_TRIM.collect)

    @staticmethod
    def _too_large(upload: bool, limit: float) -> str:
        what = "an upload request" if upload else "a request body"
        return f"{what} may be at most {limit / 2**20:.0f} MB; this one is larger"

    @staticmethod
    async def _refuse(scope: dict, send: Callable, reason: str) -> None:
        log.info("refused: %s", reason)
        await PlainTextResponse(reason, status_code=413)(scope, None, send)


def request_bounds(max_file_size: float | None) -> tuple[float, float]:
    """(any request body, an upload request) in bytes for an app whose uploads are capped at `max_file_size`: an
    image sent as a base64 data: URL in JSON, and an upload of two images' worth, each with a MiB to spare."""
    cap = float(max_file_size) if max_file_size else 50 * 2**20
    return cap * 4 / 3 + 2**20, 2 * cap + 2**20


class StudioBlocks(gr.Blocks):
    """gr.Blocks that checks each request's payload before Gradio does, so that a bad one gets our one-line message.

    Even with preprocess=False, Gradio checks an event's payload before the handler runs (the number of inputs,
    then file paths against its upload folder, then each component's data model) and raises plain exceptions,
    which show_error=False turns into an anonymous error. `validate_inputs` is the first of those checks, so here
    missing trailing inputs get the handler's defaults (a raw REST call may send only the image), and the file
    inputs (`file_inputs`, component ids) go through `check_upload` (`uploads`: the allowed folders).

    It also prunes Gradio's cache itself (`cache_schedule`): files this app wrote or received (uploads, served
    pictures) are deleted once older than the age, and the folders left empty with them, so that disk use stays
    bounded under a sustained load. Gradio's own delete_cache cannot do this: its task iterates over the live sets
    of files that requests add to, fails with "Set changed size during iteration" under load, and never runs again.
    """

    file_inputs: frozenset[int] = frozenset()
    file_lists: frozenset[int] = frozenset()  # those of file_inputs that take several files
    uploads: tuple[str, ...] = ()
    cache_seconds: int | None = None  # None: no pruning

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        """Fill missing trailing inputs with the handler's defaults and check file inputs, then Gradio's checks."""
        if len(inputs) < len(block_fn.inputs) and block_fn.fn is not None:
            params = list(inspect.signature(block_fn.fn).parameters.values())[len(inputs) : len(block_fn.inputs)]
            required = [p.name for p in params if p.default is inspect.Parameter.empty]
            if required:
                names = ", ".join(p.name for p in inspect.signature(block_fn.fn).parameters.values())
                raise gr.Error(
                    f"missing input {required[0]}: send the inputs in the order [{names}]; {SEND_A_FILE}",
                    print_exception=False,
                )
            inputs.extend(p.default for p in params)
        for block, value in zip(block_fn.inputs, inputs):
            if block._id in self.file_inputs:
                if isinstance(value, list) and block._id not in self.file_lists:
                    raise gr.Error(f"send one image here, not a list: {SEND_A_FILE}", print_exception=False)
                for payload in value if isinstance(value, list) else [value]:
                    try:
                        check_upload(payload, self.uploads)
                    except CbamVizError as err:
                        raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from None
        super().validate_inputs(block_fn, inputs)

    def launch(self, *args: Any, app_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Gradio's launch, with the upload-part middleware and the cache-pruning lifespan added."""
        app_kwargs = dict(app_kwargs or {})
        body_bytes, upload_bytes = request_bounds(gr.utils._parse_file_size(kwargs.get("max_file_size")))
        app_kwargs["middleware"] = [
            *app_kwargs.get("middleware", []),
            Middleware(RequestBounds, body_bytes=body_bytes, upload_bytes=upload_bytes),
            Middleware(UnnamedUploadPart),
        ]
        app_kwargs.setdefault("lifespan", self._prune_folders)
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)

    @contextlib.asynccontextmanager
    async def _prune_folders(self, _app: Any) -> Any:
        if self.cache_seconds is None:
            yield
            return
        frequency, age = cache_schedule(self.cache_seconds)

        async def prune() -> None:
            while True:
                await asyncio.sleep(frequency)
                await asyncio.to_thread(self.prune_cache, age)

        task = asyncio.create_task(prune())
        try:
            yield
        finally:
            task.cancel()

    def prune_cache(self, age: float) -> None:
        """Delete the files this app wrote or received that are older than `age` seconds (by ctime, as Gradio
        does), except those Gradio keeps for good (the examples, reused by the next start), then the folders left
        empty."""
        kept = set().union(*(getattr(block, "keep_in_cache", set()) for block in list(self.blocks.values())))
        cutoff = time.time() - age
        for files in self.temp_file_sets:
            for path in list(files):  # a snapshot: requests add files meanwhile
                if path in kept:
                    continue
                try:
                    if os.lstat(path).st_ctime <= cutoff:
                        os.remove(path)
                        files.discard(path)
                except FileNotFoundError:
                    files.discard(path)
                except OSError:
                    pass
        # the pictures served in updates belong to the copies of their components that Gradio keeps per visitor,
        # which it does not list: every file of the overlays folder is one of this app's, and old ones go by age
        delete_old_files(Path(get_upload_folder()) / OVERLAYS, age)
        prune_empty_folders(get_upload_folder(), age)
