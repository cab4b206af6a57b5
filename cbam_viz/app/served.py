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


def save_once(image: Image.Image, folder: str | os.PathLike, fmt: str = "webp") -> Path:
    """Write `image` as folder/<new random id>.fmt, atomically, and return the path: a file that is never
    rewritten, so a client still reading an earlier response's picture cannot see it change."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    path = Path(folder) / f"{uuid.uuid4().hex}.{fmt}"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def delete_old_files(folder: str | os.PathLike, older_than: float) -> int:
    """Delete the files directly in `folder` whose ctime is `older_than` seconds or more ago; returns how many."""
    removed, cutoff = 0, time.time() - older_than
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_ctime <= cutoff:
                os.remove(entry.path)
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


def served(picture: Image.Image) -> str:
    """A picture for an output gr.Image, written once, atomically, under a name no other response uses.

    Given a PIL image, Gradio saves it as <cache>/<hash of its bytes>/image.webp and rewrites that file in place
    each time, so a client fetching the same overlay for an earlier identical request could read it empty or
    half-written. Given this path in its cache, Gradio serves the file as it is; StudioBlocks' pruning deletes it.
    """
    return str(save_once(picture, Path(get_upload_folder()) / OVERLAYS))


def cache_schedule(cache_seconds: int) -> tuple[int, int]:
    """Cache pruning: (how often to look, in seconds; the age in seconds past which files are deleted)."""
    return max(1, min(60, cache_seconds // 2)), cache_seconds
