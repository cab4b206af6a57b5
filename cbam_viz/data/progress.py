"""Progress bars for the long steps of `data build`."""

from __future__ import annotations

import sys
from typing import Any, Iterable


def progress_bar(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    """A tqdm bar on stderr when enabled (and tqdm importable); the bare iterable otherwise."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a runtime dependency
        return iterable
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)
