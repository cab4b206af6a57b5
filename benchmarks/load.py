"""Load and soak test of the web app: concurrent gradio_client users, then a long sequential run.

    python benchmarks/load.py                          # 8 clients x 25 requests, then a 500-request soak
    python benchmarks/load.py --clients 4 --requests 5 --soak 60      # what `make test` runs (tests/test_load.py)
    python benchmarks/load.py --baseline a.safetensors --cbam b.safetensors
    python benchmarks/load.py --url http://127.0.0.1:7860/ --pid PID --baseline ... --cbam ...   # a running app

The app is started as `app.main([...])` in a child process (the same code path as `python app.py`, with its
queue and concurrency defaults) whose control pipe reports its memory, open files, threads and the hooks
registered on every module of both models. Without --baseline/--cbam the bundled weights are used when present,
else tiny random-weight checkpoints (5 classes, 64 px input) are written to a temporary folder.

Concurrent phase: every request sends its own image (distinct pixels and size) with its own controls (each
model's top-1, a class name, HiResCAM, layer3); every answer is compared with the same request computed locally
by `cbam_viz.cam.engine.compare` (top-5 and P of both models, image size, and the overlay pixels), so results mixed up
between requests or users are caught, not just errors. Beside ScoreCAM: two ScoreCAM requests (layer1; the
second must be refused while the first runs) and meanwhile 4 requests per client, latency and correctness.
Identical phase: the same clients all sending one photo
with the same controls, each overlay URL fetched as soon as its answer arrives: an empty, short or broken file
means a served file was rewritten while it was read. Soak: N sequential requests (new images, the same mix, and
an unreadable file every 20th); RSS growth after warm-up, open file descriptors, hook counts, and the disk use of
the app's Gradio cache (its own GRADIO_TEMP_DIR, --cache-seconds 60 so that the soak reaches the plateau) with
the age of its oldest file, which pruning must keep near --cache-seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.loadharness import (  # noqa: E402
    AppHandle,
    ExternalApp,
    make_jobs,
    references,
    run_beside_scorecam,
    run_concurrent,
    run_identical,
    soak,
    split,
    start_app,
)


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    from tests.conftest import make_checkpoint

    return (make_checkpoint(folder / "baseline.safetensors", "resnet50", 0),
            make_checkpoint(folder / "cbam.safetensors", "resnet50-cbam", 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent gradio_client users (default 8)")
    parser.add_argument("--requests", type=int, default=25, help="requests per user (default 25)")
    parser.add_argument("--soak", type=int, default=500, help="sequential requests of the soak (default 500)")
    parser.add_argument("--warmup", type=int, default=None, help="soak requests before the RSS baseline (10%%)")
    parser.add_argument("--baseline", type=Path, help="ResNet50 checkpoint (default: bundled, else tiny random)")
    parser.add_argument("--cbam", type=Path, help="CBAM-ResNet50 checkpoint (default: bundled, else tiny random)")
    parser.add_argument("--soak-verify-every", type=int, default=5,
                        help="check every Nth soak answer in full against a local run (default 5; all others must "
                        "be answers, and every concurrent answer is checked)")
    parser.add_argument("--url", help="use an app already running there instead of starting one (no hook counts)")
    parser.add_argument("--pid", type=int, help="with --url: the app's process id, for RSS and open files")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads in the app (default: PyTorch's)")
    parser.add_argument("--max-rss-growth", type=float, default=50.0, help="allowed RSS growth in MB (default 50)")
    parser.add_argument("--cache-seconds", type=int, default=60,
                        help="the app's --cache-seconds, short so that the soak reaches the cache's plateau "
                        "(default 60; the app's own default is 1800)")
    args = parser.parse_args(argv)

    from cbam_viz.io.checkpoints import load_pair
    from cbam_viz.io.weights import BUNDLED
    from tests.conftest import random_image

    work = Path(tempfile.mkdtemp(prefix="cbam-load-"))
    if args.baseline and args.cbam:
        baseline, cbam, which = args.baseline, args.cbam, "given checkpoints"
    elif all(weights.find() for weights in BUNDLED.values()):
        baseline, cbam, which = BUNDLED["baseline"].path(), BUNDLED["cbam"].path(), "bundled weights"
    else:
        baseline, cbam = tiny_checkpoints(work)
        which = "tiny random-weight checkpoints (no bundled weights found; 64 px input)"
    load = os.getloadavg()
    print(f"models: {which}; machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    models = load_pair(baseline, cbam)
    concurrent_jobs = make_jobs(work / "concurrent", args.clients * args.requests)
    warmup = args.warmup if args.warmup is not None else max(1, args.soak // 10)
    soak_jobs = make_jobs(work / "soak", args.soak, start=100_000, bad_every=20)
    beside_jobs = make_jobs(work / "beside", args.clients * 4, start=50_000)
    print("starting the app; computing the reference answers locally meanwhile ...", flush=True)
    if args.url:  # its checkpoints must be the ones given here, or every answer is reported as different
        handle: AppHandle | ExternalApp = ExternalApp(args.url.rstrip("/") + "/", args.pid)
    else:  # a cache folder of its own, so that its disk use is the app's alone
        handle = start_app(baseline, cbam, log=work / "app.log", threads=args.threads, wait=False,
                           cache_seconds=args.cache_seconds, env={"GRADIO_TEMP_DIR": str(work / "gradio")})
    same = work / "same.png"
    random_image(7, (500, 375)).save(same)
    failed = False
    try:
        expected = references([*concurrent_jobs, *beside_jobs], models)
        expected.update(references(soak_jobs, models, every=args.soak_verify_every))
        handle.wait_ready()
        first = handle.stats()
        print(f"app pid {handle.pid} at {handle.url}: queue max size {first['queue_max_size']}, "
              f"RSS {first['rss_mb']:.0f} MB, {first['fds']} fds, {first['hooks']} hooks")
        loaded = run_concurrent(handle.url, split(concurrent_jobs, args.clients), expected)
        print(f"concurrent ({args.clients} clients x {args.requests}): {loaded.summary()}")
        for problem in loaded.problems[:20]:
            print("  " + problem)
        identical = run_identical(handle.url, same, args.clients, args.requests)
        print(f"identical ({args.clients} clients x {args.requests}, one photo): {identical.summary()}")
        for problem in identical.problems[:20]:
            print("  " + problem)
        slowed = run_beside_scorecam(handle.url, same, split(beside_jobs, args.clients), expected, slow_requests=2)
        print(f"{args.clients} clients x {len(beside_jobs) // args.clients} {slowed.summary()}")
        for problem in slowed.beside.problems[:20]:
            print("  " + problem)
        soaked = soak(handle, soak_jobs, expected, warmup)
        print(f"soak: {soaked.summary()}")
        for problem in soaked.problems[:20]:
            print("  " + problem)
        failed = bool(loaded.problems or soaked.problems) or soaked.rss_growth_mb > args.max_rss_growth
        failed |= bool(identical.problems) or identical.bad_files > 0 or bool(slowed.beside.problems)
        failed |= soaked.end["hooks"] != soaked.start["hooks"]
        failed |= soaked.end["fds"] is not None and soaked.end["fds"] > soaked.warm["fds"] + 5
        if not args.url:  # nothing in the cache outlives its age by more than one pruning round (and some slack)
            from cbam_viz.app.served import cache_schedule

            failed |= max(soaked.oldest, default=0.0) > sum(cache_schedule(args.cache_seconds)) + 10
        load = os.getloadavg()
        print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        handle.stop()
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
