"""A thread-safe LRU cache bounded by entry count and/or weight (bytes, with `nbytes`), computing each key once at a
time: the app's caches and the stamp scenes' resized stamps use it."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch
from PIL import Image


def nbytes(value: Any) -> int:
    """Bytes of memory the arrays, tensors and images in `value` hold (through dataclasses, dicts and sequences):
    what a cache entry costs. A tensor view counts its whole storage, which it keeps alive."""
    if isinstance(value, np.ndarray):
        return max(value.nbytes, nbytes(value.base))  # a view keeps its whole base alive
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands()) * (4 if value.mode in ("I", "F") else 1)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


class LRU:
    """A small thread-safe LRU cache; `get_or_compute` runs one computation per key at a time.

    `size` bounds the entries, `budget` (with `weigh`, e.g. `nbytes`) their total weight: the oldest go first.
    """

    def __init__(
        self, size: int | None = None, weigh: Callable[[Any], float] | None = None, budget: float | None = None
    ) -> None:
        self.size = math.inf if size is None else max(1, int(size))
        self.weigh, self.budget = weigh, budget  # optional: also evict while the total weight exceeds budget
        self._weight = 0.0
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Lock] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def weight(self) -> float:
        """The total weight of the entries held (bytes, with `nbytes`)."""
        with self._lock:
            return self._weight

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value held for `key` (now the most recently used), or `default`."""
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Hold `value` for `key`, evicting the least recently used entries past the size or the weight budget."""
        with self._lock:
            if key in self._data:
                self._weight -= self._weigh(self._data[key])
            self._data[key] = value
            self._weight += self._weigh(value)
            self._data.move_to_end(key)
            while len(self._data) > self.size or (
                self.budget is not None and self._weight > self.budget and len(self._data) > 1
            ):
                _, old = self._data.popitem(last=False)
                self._weight -= self._weigh(old)

    def _weigh(self, value: Any) -> float:
        return float(self.weigh(value)) if self.weigh is not None else 0.0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value for `key`, computed by `compute` if absent; other threads asking for the same key wait for it."""
        missing = object()
        value = self.get(key, missing)
        if value is not missing:
            return value
        with self._lock:
            flight = self._inflight.setdefault(key, threading.Lock())
        with flight:
            value = self.get(key, missing)
            if value is not missing:
                return value
            try:
                value = compute()
                self.put(key, value)
            finally:
                with self._lock:
                    if self._inflight.get(key) is flight:
                        del self._inflight[key]
        return value
