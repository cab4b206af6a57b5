"""Starting the web app for tests: in this process (to inspect the studio) or as `python app.py` (as users run it)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from cbam_viz.app import launch as app  # noqa: E402, F401  (the tests import it from here)
from cbam_viz.app.ui import build_demo, queue  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(studio, exports, *, max_file_size: str = "1mb", queue_size: int = 16) -> Iterator:
    """The real page and API of `studio`, served in this process on a free loopback port, queued as app.py does."""
    demo = build_demo(studio, exports)
    queue(demo, studio, queue_size)
    demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
        show_error=False, max_file_size=max_file_size, share=False,
    )
    try:
        yield SimpleNamespace(url=demo.local_url, studio=studio, demo=demo)
    finally:
        demo.close()


def wait_until_up(url: str, exit_code: Callable[[], int | None] | None = None, timeout: float = 120.0) -> None:
    """Return once `url` answers HTTP; RuntimeError if `exit_code()` says the server process ended, TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        code = exit_code() if exit_code is not None else None
        if code is not None:
            raise RuntimeError(f"the app exited with {code} before it answered")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


@contextlib.contextmanager
def app_process(
    *args: str, host: str | None = "127.0.0.1", env: dict[str, str] | None = None, timeout: float = 120.0
) -> Iterator:
    """`python app.py --host HOST --port FREE ARGS...` until the block ends; yields url, proc, port and log path.

    host=None leaves --host out (the app's own default).
    """
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"cbam-app-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", *(["--host", host] if host else []), "--port", str(port), *args],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            wait_until_up(url, proc.poll, timeout)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}:\n{log.read_text(errors='replace')[-3000:]}") from None
        yield SimpleNamespace(url=url, proc=proc, port=port, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)
