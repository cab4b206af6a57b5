"""What an export reads: the images named by files, folders and globs, each with a stable, safe output name."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cbam_viz.errors import CbamVizError
from cbam_viz.io.fileio import is_within

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".mpo"}
)
_SAFE_CHARS = re.compile(r"[^\w\-. ]")  # \w: Unicode letters, digits and '_'
_MAX_COMPONENT_BYTES = 120
_NAMED_SKIPS = 3  # how many skipped files a summary names
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})


@dataclass
class Item:
    """One input image: where it is, how the manifest shows it, and its output name."""

    path: str  # what we open (undecodable bytes kept as surrogate escapes, as os.listdir returns them)
    image: str  # the path as shown in the manifest (undecodable bytes as \xNN)
    rel: bytes  # path relative to the common input root, '/'-separated, raw bytes
    id: str = ""  # sanitised, unique output name without extension ("sub/cat", "odd_name-1a2b3c4d")


def _show(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _glob_root(pattern: str) -> str:
    """The folder a glob pattern is anchored at: its components up to the first one with a wildcard."""
    parts = pattern.split(os.sep)
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = os.sep.join(fixed)
    if not root:
        return os.sep if pattern.startswith(os.sep) else "."
    return root


@dataclass
class Skipped:
    """Files of the scanned folders that are not exported, so a summary can say what was left out."""

    not_images: dict[str, str] = field(default_factory=dict)  # absolute path -> name shown (relative to its folder)
    unreadable: dict[str, str] = field(default_factory=dict)  # folders that could not be listed, likewise

    def __bool__(self) -> bool:
        return bool(self.not_images or self.unreadable)

    def describe(self) -> str:
        """'N file(s) skipped (not images: a.txt, b.csv, …)', naming a few of each kind."""
        parts = []
        for found, what, reason in ((self.not_images, "file", "not images"), (self.unreadable, "folder", "unreadable")):
            names = list(found.values())
            if names:
                shown = ", ".join(names[:_NAMED_SKIPS]) + (", …" if len(names) > _NAMED_SKIPS else "")
                parts.append(f"{len(names)} {what}(s) skipped ({reason}: {shown})")
        return ", ".join(parts)


def _walk(top: str, exclude: str, skipped: Skipped) -> Iterator[str]:
    """Image files under `top` (recursively, sorted, symlinked folders not followed), never inside `exclude`; the
    other files and the folders that cannot be listed go to `skipped`."""

    def note(found: dict[str, str], path: str) -> None:
        rel = os.path.relpath(path, top)
        found.setdefault(os.path.abspath(path), _show(path if rel == "." else rel))

    for folder, dirs, files in os.walk(top, onerror=lambda err: note(skipped.unreadable, err.filename or top)):
        dirs[:] = sorted(d for d in dirs if os.path.abspath(os.path.join(folder, d)) != exclude)
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield path
            else:
                note(skipped.not_images, path)


def discover(inputs: Sequence[str], exclude: str | os.PathLike | None = None) -> list[Item]:
    """The Items of `find_inputs`, for callers that need no account of skipped files."""
    return find_inputs(inputs, exclude)[0]


def find_inputs(inputs: Sequence[str], exclude: str | os.PathLike | None = None) -> tuple[list[Item], Skipped]:
    """Expand files, folders (recursive) and globs (expanded here, so quoted globs work) into sorted Items.

    A literal path wins over a glob reading of the same string. Folders and glob-matched folders contribute
    files with an image extension (the rest are listed in the returned `Skipped`); files named explicitly or
    matched by a glob are taken as they are (and become error rows if they are not images). The --out folder
    (`exclude`) is never scanned.
    """
    exclude_abs = os.path.abspath(exclude) if exclude is not None else "\0"
    found: list[tuple[str, str]] = []  # (path, root)
    roots: list[str] = []
    skipped = Skipped()
    for arg in inputs:
        arg = os.fspath(arg)
        if os.path.isdir(arg):
            roots.append(arg)
            found += [(p, arg) for p in _walk(arg, exclude_abs, skipped)]
        elif os.path.lexists(arg):
            roots.append(os.path.dirname(arg) or ".")
            found.append((arg, roots[-1]))
        elif glob.has_magic(arg):
            root = _glob_root(arg)
            matches = sorted(glob.glob(arg, recursive=True))
            matches = [m for m in matches if not is_within(os.path.abspath(m), exclude_abs)]
            if not matches:
                raise CbamVizError(f"no files match {arg!r}")
            roots.append(root)
            for match in matches:
                if os.path.isdir(match):
                    found += [(p, root) for p in _walk(match, exclude_abs, skipped)]
                else:
                    found.append((match, root))
        else:
            raise CbamVizError(f"input not found: {_show(arg)}")
    if not found:
        because = f": {skipped.describe()}" if skipped else ""
        raise CbamVizError(f"no images found in {', '.join(_show(a) for a in inputs)}{because}")
    taken = {os.path.abspath(path) for path, _ in found}  # a file also named on its own is exported, not skipped
    skipped.not_images = {path: name for path, name in skipped.not_images.items() if path not in taken}
    return _items(found, roots), skipped


def _items(found: list[tuple[str, str]], roots: list[str]) -> list[Item]:
    """One Item per distinct file, named relative to the common root of the inputs, sorted, with unique ids."""
    common = os.path.commonpath([os.path.abspath(r) for r in roots])
    items: dict[str, Item] = {}
    for path, _ in found:
        absolute = os.path.abspath(path)
        if absolute in items:
            continue
        rel = os.path.relpath(absolute, common)
        items[absolute] = Item(path=path, image=_show(path), rel=os.fsencode(rel).replace(os.sep.encode(), b"/"))
    ordered = sorted(items.values(), key=lambda it: it.rel)
    assign_ids(ordered)
    return ordered


def _clean(component: bytes) -> tuple[str, bool]:
    """A safe file or folder name for one raw path component, and whether it differs from the original."""
    try:
        text = component.decode("utf-8")
        altered = False
    except UnicodeDecodeError:
        text, altered = component.decode("utf-8", "replace"), True
    cleaned = _SAFE_CHARS.sub("_", unicodedata.normalize("NFC", text))
    cleaned = re.sub(r"^[. ]+", lambda m: "_" * len(m[0]), cleaned)  # no '.', '..', hidden or blank-led names
    cleaned = re.sub(r"[. ]+$", lambda m: "_" * len(m[0]), cleaned)
    if cleaned.split(".")[0].lower() in _RESERVED:
        cleaned = "_" + cleaned
    while len(cleaned.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        cleaned = cleaned[:-1]
    cleaned = cleaned or "_"
    return cleaned, altered or cleaned != text


def _short_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:8]


def assign_ids(items: Sequence[Item]) -> None:
    """Give every item a unique, safe output id; a hash of its raw relative path marks altered or clashing names."""
    hashed = []
    for item in items:
        *folders, name = item.rel.split(b"/")
        stem = name.rsplit(b".", 1)[0] if b"." in name[1:] else name
        parts = [_clean(c) for c in (*folders, stem)]
        item.id = "/".join(p for p, _ in parts)
        if any(altered for _, altered in parts):
            item.id += "-" + _short_hash(item.rel)
            hashed.append(True)
        else:
            hashed.append(False)
    while True:  # clashes: same id up to case, or a file output named like a folder of another id
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.id.casefold(), []).append(index)
        folders = {
            "/".join(item.id.casefold().split("/")[:depth])
            for item in items
            for depth in range(1, item.id.count("/") + 1)
        }
        clashes = [i for group in groups.values() if len(group) > 1 for i in group if not hashed[i]]
        clashes += [
            i
            for i, item in enumerate(items)
            if not hashed[i] and any(item.id.casefold() + ext in folders for ext in (".png", ".npy"))
        ]
        if not clashes:
            return
        for index in set(clashes):
            items[index].id += "-" + _short_hash(items[index].rel)
            hashed[index] = True
