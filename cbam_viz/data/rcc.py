"""Read files out of a Qt binary resource bundle (`.rcc`), the way GCompris ships its activities' photos.

Layout (big-endian): magic ``qres``, format version, then the offsets of the tree, the data and the names. Each
tree node is a name offset and flags (1 = zlib, 2 = directory, 4 = zstd); a directory holds a child count and the
index of its first child, a file its data offset. Format 2 and later add an 8-byte modification time per node.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from cbam_viz.errors import CbamVizError

_ZLIB, _DIRECTORY, _ZSTD = 1, 2, 4


def read_rcc(path: str | Path) -> dict[str, bytes]:
    """Every file in the bundle at `path`: {resource path: bytes}; CbamVizError for a file that is not one."""
    blob = Path(path).read_bytes()
    if blob[:4] != b"qres" or len(blob) < 20:
        raise CbamVizError(f"{Path(path).name} is not a Qt resource bundle (.rcc)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version < 2 else 22
    files: dict[str, bytes] = {}
    pending = [(0, "")]
    while pending:
        index, prefix = pending.pop()
        at = tree + index * node_size
        name_at, flags = struct.unpack(">IH", blob[at : at + 6])
        name = _name(blob, names + name_at) if index else ""
        path_here = f"{prefix}{name}"
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            pending += [(first + k, f"{path_here}/" if path_here else "") for k in range(count)]
            continue
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        payload = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & _ZSTD:
            raise CbamVizError(f"{Path(path).name}: {path_here} is zstd-compressed, which this reader does not decode")
        files[path_here] = zlib.decompress(payload[4:]) if flags & _ZLIB else payload  # zlib data: 4-byte size first
    return files


def _name(blob: bytes, at: int) -> str:
    (length,) = struct.unpack(">H", blob[at : at + 2])
    return blob[at + 6 : at + 6 + 2 * length].decode("utf-16-be")  # after the length: a 4-byte hash, then UTF-16
