"""Stopping a run cleanly: SIGINT/SIGTERM ask for a stop at the next step boundary, where last.pt is saved."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks at step boundaries; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
