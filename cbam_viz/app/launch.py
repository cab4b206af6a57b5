"""Serving the app: the command line of `python app.py` and `cbam-viz app`, with defaults from the environment.

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set the defaults of --host / --port, CBAM_VIZ_BASELINE / CBAM_VIZ_CBAM
those of --baseline / --cbam, CBAM_VIZ_WEIGHTS the folder the bundled weights are looked for in first.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path

from cbam_viz.app.allocator import return_freed_memory
from cbam_viz.app.cache import CACHE_MB
from cbam_viz.app.figure_export import ExportFolder
from cbam_viz.app.served import CACHE_SECONDS
from cbam_viz.app.studio import SLOW_SECONDS, Studio
from cbam_viz.app.ui import CSS, HEAD, THEME, build_demo, queue
from cbam_viz.devices import resolve_device
from cbam_viz.errors import CbamVizError
from cbam_viz.io.checkpoints import load_pair
from cbam_viz.io.examples import EXAMPLES_DIR
from cbam_viz.io.weights import BUNDLED, WEIGHTS_ENV

MAX_FILE_SIZE = "50mb"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's options, with defaults from the environment (see the module docstring)."""
    env = os.environ
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=_port(env.get("GRADIO_SERVER_PORT")),
                        help="port (default 7860, or $GRADIO_SERVER_PORT)")
    parser.add_argument("--baseline", type=Path, default=env.get("CBAM_VIZ_BASELINE") or None,
                        help=f"ResNet50 checkpoint (default: the bundled {BUNDLED['baseline'].file_name}, "
                        f"looked for in ${WEIGHTS_ENV}, then the checkout's weights/)")
    parser.add_argument("--cbam", type=Path, default=env.get("CBAM_VIZ_CBAM") or None,
                        help=f"CBAM-ResNet50 checkpoint (default: the bundled {BUNDLED['cbam'].file_name}, "
                        f"looked for in ${WEIGHTS_ENV}, then the checkout's weights/)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run")
    parser.add_argument("--max-file-size", default=MAX_FILE_SIZE, help="upload size limit (default 50mb)")
    parser.add_argument("--queue-size", type=int, default=32, help="requests that may wait in the queue")
    parser.add_argument("--concurrency", type=_positive, default=2,
                        help="model runs of the fast methods at the same time (default 2), beside one ScoreCAM request")
    parser.add_argument("--slow-seconds", type=_positive, default=int(SLOW_SECONDS),
                        help=f"refuse a ScoreCAM request estimated to take longer (default {SLOW_SECONDS:.0f})")
    parser.add_argument("--cache-mb", type=_positive, default=int(CACHE_MB),
                        help=f"memory the caches of decoded images and analyses may hold (default {CACHE_MB:.0f})")
    parser.add_argument("--cache-seconds", type=_positive, default=CACHE_SECONDS,
                        help=f"delete uploads and served pictures this long after they were written "
                        f"(default {CACHE_SECONDS})")
    parser.add_argument("--examples", type=Path, default=EXAMPLES_DIR,
                        help="folder of example images (NAME.png with optional NAME.mask.png; default: the "
                        "checkout's examples/)")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve the API endpoints (compare, paper_figure) as MCP tools at /gradio_api/mcp/ "
                        "(needs the mcp package: pip install '.[mcp]')")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of `python app.py`."""
    parser = argparse.ArgumentParser(description="CBAM Grad-CAM Studio: serve the page, its API and MCP tools.")
    add_arguments(parser)
    return parser.parse_args(argv)


def _port(value: str | None) -> int:
    try:
        return int(value) if value else 7860
    except ValueError:
        raise SystemExit(f"error: GRADIO_SERVER_PORT must be a port number, not {value!r}") from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, at least 1, not {value[:80]!r}")
    return number


def load_studio(args: argparse.Namespace) -> Studio:
    """Load both checkpoints once; CbamVizError (missing or bad file, no CUDA) says what to do."""
    models = load_pair(args.baseline, args.cbam, resolve_device(args.device))
    return Studio(models, examples_dir=args.examples, cache_mb=args.cache_mb, slow_seconds=args.slow_seconds,
                  concurrency=args.concurrency)


def main(argv: list[str] | None = None) -> int:
    """`python app.py ...`: serve the app (see `run`)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Load both models, build the page and serve it until stopped; 2 when the models cannot be loaded."""
    if args.mcp and importlib.util.find_spec("mcp") is None:
        print("error: --mcp needs the mcp package: pip install '.[mcp]' (or 'mcp>=1.21,<2')", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    return_freed_memory()  # before any model or worker thread allocates
    try:
        studio = load_studio(args)
    except CbamVizError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.baseline is None or args.cbam is None:
            print(
                "hint: train the pair (python -m cbam_viz train-pair ...) or pass --baseline PATH --cbam PATH",
                file=sys.stderr,
            )
        return 2
    exports = ExportFolder()
    demo = build_demo(studio, exports, args.cache_seconds)
    queue(demo, studio, args.queue_size)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `docker stop`: close the server cleanly
    try:
        demo.launch(
            server_name=args.host, server_port=args.port, share=False, show_error=False, quiet=True,
            prevent_thread_lock=True, max_file_size=args.max_file_size, css=CSS, head=HEAD, theme=THEME,
            mcp_server=args.mcp,
        )
        print(f"CBAM Grad-CAM Studio is serving on {demo.local_url} (Ctrl+C stops it)", flush=True)
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        # here, not in the server's shutdown: Gradio stops waiting for that after 5 s, and it waits for every
        # open page's connection to close first
        demo.prune_cache(-1.0)
        exports.cleanup()
    return 0
