"""Uploads as they arrive from the page or the API: which payloads are files this app received, and their names.

An image is identified by a hash of its decoded pixels (`image_key`), so the same picture uploaded twice, picked
from the examples or sent through the API is one entry of the studio's caches.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from cbam_viz.io.fileio import is_within
from cbam_viz.io.images import ImageError

SEND_A_FILE = "send the image as a file upload (gradio_client: handle_file(path))"
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(frozen=True)
class SourceImage:
    """An uploaded image, decoded: RGB at full size, a hash of its pixels, and its base name (no directory)."""

    image: Image.Image
    key: str
    name: str


def image_key(image: Image.Image) -> str:
    """A hash of the pixels (and size and mode): equal for the same picture however it arrived."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def check_upload(
    payload: object, within: Sequence[str | os.PathLike] | None = None
) -> tuple[str, str | None, str | None] | None:
    """(label, path, data URL) that an upload payload names, None when empty; no file is opened or decoded.

    `within`: the folders an uploaded file must be in (the server's upload folder). The web app passes it, and
    then only FileData dicts naming a file there (or carrying a data: URL) are uploads: a text string or any
    other server path gets an ImageError saying what to send, so an API call can never name a server file.
    """
    if payload is None or (payload == "" and within is None):
        return None
    if isinstance(payload, (str, os.PathLike)):
        if within is not None:
            text = os.fspath(payload)
            if not text:
                raise ImageError(f"no image was sent: {SEND_A_FILE}")
            if _URL.match(text):
                raise ImageError(f"the image was sent as a URL, which the server does not fetch: {SEND_A_FILE}")
            raise ImageError(f"the image was sent as a text string, not a file: {SEND_A_FILE}")
        path, name, url = os.fspath(payload), None, None
    elif isinstance(payload, dict):
        path, name, url = payload.get("path"), payload.get("orig_name"), payload.get("url")
    else:
        kind = type(payload).__name__
        raise ImageError(f"the image was sent as a value of type {kind}, not a file: {SEND_A_FILE}")
    label = base_name(name or path or "image")
    if isinstance(url, str) and url.startswith("data:"):
        return label, None, url
    if not path or not isinstance(path, str):
        raise ImageError(f"no image file was received: {SEND_A_FILE}")
    if _URL.match(path):
        raise ImageError(f"{label} is a URL, which the server does not fetch: {SEND_A_FILE}")
    if within is not None and not _inside(path, within):
        raise ImageError(f"{label} was not uploaded to this app: {SEND_A_FILE}")
    return label, path, None


def _inside(path: object, folders: Sequence[str | os.PathLike]) -> bool:
    """Whether `path`, with symlinks and '..' resolved, lies inside one of `folders` (no file is opened)."""
    try:
        real = os.path.realpath(os.fspath(path))  # type: ignore[arg-type]
    except (TypeError, ValueError, OSError):
        return False
    for folder in folders:
        root = os.path.realpath(os.fspath(folder))
        if real != root and is_within(real, root):
            return True
    return False


def base_name(name: object) -> str:
    """A file name as messages and panels show it: no directory (of the server or the client), unprintables as '?'."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c if c.isprintable() else "?" for c in base) or "image"
