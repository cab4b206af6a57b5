"""Files on the server's disk: pictures served to the page, written once each, and the pruning of Gradio's cache.

Uploads and served pictures are deleted `CACHE_SECONDS` (--cache-seconds) after they were written, and the folders
left empty with them, so that disk use stays bounded under a sustained load.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

from gradio.utils import get_upload_folder
from PIL import Image

from cbam_viz.io.fileio import atomic_write_bytes

CACHE_SECONDS = 1800  # uploads and served pictures are deleted this long after they were written (--cache-seconds)
OVERLAYS = "overlays"  # the folder of Gradio's cache that served pictures go to


def save_once(image: Image.Image, folder: str | os.PathLike, fmt: str = "webp", name: str | None = None) -> Path:
    """Write `image` atomically under a new random id and return the path: folder/<id>.fmt, or folder/<id>/name.fmt
    when `name` is given (the name a download gets). A file that is never rewritten, so a client still reading an
    earlier response's picture cannot see it change."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    unique = uuid.uuid4().hex
    path = Path(folder) / (f"{unique}.{fmt}" if name is None else f"{unique}/{name}.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def delete_old_files(folder: str | os.PathLike, older_than: float) -> int:
    """Delete the files in `folder` and below whose ctime is `older_than` seconds or more ago; returns how many."""
    removed, cutoff = 0, time.time() - older_than
    for parent, _, files in os.walk(folder):
        for file in files:
            path = os.path.join(parent, file)
            try:
                if os.lstat(path).st_ctime <= cutoff:
                    os.remove(path)
                    removed += 1
            except OSError:
                pass
    return removed


def prune_empty_folders(root: str | os.PathLike, older_than: float) -> int:
    """Remove the empty folders below `root` untouched for `older_than` seconds; returns how many.

    Deleting old uploads leaves each one's folder behind, so without this the folders alone would grow without
    bound under a sustained load.
    """
    removed, cutoff, root = 0, time.time() - older_than, os.fspath(root)
    for folder, _, files in os.walk(root, topdown=False):
        if folder == root or files:
            continue
        try:
            if os.stat(folder).st_mtime < cutoff:
                os.rmdir(folder)  # fails, harmlessly, if a file arrived meanwhile
                removed += 1
        except OSError:
            pass
    return removed


def served(picture: Image.Image, name: str | None = None) -> str:
    """A picture for an output gr.Image, written once, atomically, under a path no other response uses: a WEBP, or
    a PNG called `name`.png when the picture is one a user downloads.

    Given a PIL image, Gradio saves it as <cache>/<hash of its bytes>/image.webp and rewrites that file in place
    each time, so a client fetching the same overlay for an earlier identical request could read it empty or
    half-written. Given this path in its cache, Gradio serves the file as it is; StudioBlocks' pruning deletes it.
    """
    folder = Path(get_upload_folder()) / OVERLAYS
    return str(save_once(picture, folder) if name is None else save_once(picture, folder, "png", name))


def cache_schedule(cache_seconds: int) -> tuple[int, int]:
    """Cache pruning: (how often to look, in seconds; the age in seconds past which files are deleted)."""
    return max(1, min(60, cache_seconds // 2)), cache_seconds
