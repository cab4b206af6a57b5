"""Load and soak test of the web app: concurrent gradio_client users and a long sequential run, then the hostile
phases: large request bodies, ScoreCAM against its time limit, and every hostile input.

    python benchmarks/load.py                          # 8 clients x 25 requests, a 500-request soak, then the rest
    python benchmarks/load.py --clients 4 --requests 5 --soak 60 --bodies 2 --body-mb 20   # a short run
    python benchmarks/load.py --baseline a.safetensors --cbam b.safetensors
    python benchmarks/load.py --url http://127.0.0.1:7860/ --pid PID --baseline ... --cbam ...   # a running app

`make test` runs each phase at reduced counts (tests/test_load.py). The app is started as `app.main([...])` in a
child process (the same code path as `python app.py`, with its queue and concurrency defaults) whose control pipe
reports its memory, open files, threads and the hooks registered on every module of both models. Without
--baseline/--cbam the bundled weights are used when present, else tiny random-weight checkpoints (5 classes, 64 px
input) are written to a temporary folder. RSS is VmRSS in MB of 2^20 bytes (MiB) throughout.

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
the age of its oldest file, which pruning must keep near --cache-seconds. The soak's RSS at its end is the plateau,
which must be at most --max-plateau.

Large bodies: --bodies POST /gradio_api/call/compare bodies of --body-mb MB each (the image as a base64 data: URL),
generated as they are sent, every other one with its Content-Length and the others in chunks without one, the last
two at once: each must get HTTP 413 with its reason, and 5 s later the RSS must be within --max-rss-growth of the
plateau. ScoreCAM's limit: ScoreCAM at layer1 to layer4 for one photo, one after another, against the app's
--slow-seconds: each is refused at once with its reason, or is accepted and answers or stops at the limit saying
so, no accepted run taking more than 5 s past the limit; then ScoreCAM at layer1 for another photo must be accepted
again, tried every 30 s for up to --recover-seconds while an earlier slow run's estimate fades. Hostile inputs:
every file of the corpus (tests/badfiles.py) through /compare, raw REST inputs (a list in place of the image, ...)
and the page's events without their click: 0 may get an error without a message, every file must be answered or
refused as the corpus says, and the pickle among them must never run.
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
    SoakResult,
    make_jobs,
    references,
    run_beside_scorecam,
    run_concurrent,
    run_identical,
    run_scorecam_limits,
    send_hostile,
    send_large_bodies,
    soak,
    split,
    start_app,
)


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    from tests.conftest import make_checkpoint

    return (make_checkpoint(folder / "baseline.safetensors", "resnet50", 0),
            make_checkpoint(folder / "cbam.safetensors", "resnet50-cbam", 1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from cbam_viz.app.studio import SLOW_HALF_LIFE, SLOW_SECONDS

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
    parser.add_argument("--max-rss-growth", type=float, default=50.0,
                        help="allowed RSS growth after the warm-up, and above the plateau after the large bodies, "
                        "in MB (default 50)")
    parser.add_argument("--max-plateau", type=float, default=1500.0,
                        help="allowed RSS at the soak's end, in MB of 2^20 bytes (default 1500: the goal of 1.5 GB)")
    parser.add_argument("--cache-seconds", type=int, default=60,
                        help="the app's --cache-seconds, short so that the soak reaches the cache's plateau "
                        "(default 60; the app's own default is 1800)")
    parser.add_argument("--bodies", type=int, default=10, help="large request bodies to send (default 10)")
    parser.add_argument("--body-mb", type=float, default=150.0, help="the size of each, in MB (default 150)")
    parser.add_argument("--slow-seconds", type=int, default=int(SLOW_SECONDS),
                        help=f"the app's --slow-seconds, ScoreCAM's time limit (default the app's, "
                        f"{SLOW_SECONDS:.0f}; with --url give the running app's)")
    parser.add_argument("--recover-seconds", type=float, default=3 * SLOW_HALF_LIFE,
                        help="how long ScoreCAM at layer1 may stay refused after the slow runs, while their "
                        f"estimate fades (default {3 * SLOW_HALF_LIFE:.0f}: three of its half-lives)")
    return parser.parse_args(argv)


def checkpoints(args: argparse.Namespace, work: Path) -> tuple[Path, Path, str]:
    """(baseline, cbam, which): the given checkpoints, else the bundled weights, else tiny random ones."""
    from cbam_viz.io.weights import BUNDLED

    if args.baseline and args.cbam:
        return args.baseline, args.cbam, "given checkpoints"
    if all(weights.find() for weights in BUNDLED.values()):
        return BUNDLED["baseline"].path(), BUNDLED["cbam"].path(), "bundled weights"
    return (*tiny_checkpoints(work), "tiny random-weight checkpoints (no bundled weights found; 64 px input)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cbam-load-"))
    baseline, cbam, which = checkpoints(args, work)
    load = os.getloadavg()
    print(f"models: {which}; machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("starting the app; computing the reference answers locally meanwhile ...", flush=True)
    if args.url:  # its checkpoints must be the ones given here, or every answer is reported as different
        handle: AppHandle | ExternalApp = ExternalApp(args.url.rstrip("/") + "/", args.pid)
    else:  # a cache folder of its own, so that its disk use is the app's alone
        handle = start_app(baseline, cbam, log=work / "app.log", threads=args.threads, wait=False,
                           cache_seconds=args.cache_seconds, slow_seconds=args.slow_seconds,
                           env={"GRADIO_TEMP_DIR": str(work / "gradio")})
    try:
        soaked, failed = run_load(handle, args, work, baseline, cbam)
        failed |= run_hostile(handle, args, work, soaked)
        load = os.getloadavg()
        print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        handle.stop()
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


def run_load(handle: AppHandle | ExternalApp, args: argparse.Namespace, work: Path, baseline: Path,
             cbam: Path) -> tuple[SoakResult, bool]:
    """The concurrent, identical, beside-ScoreCAM and soak phases: (the soak's result, whether any check failed)."""
    from cbam_viz.io.checkpoints import load_pair
    from tests.conftest import random_image

    models = load_pair(baseline, cbam)
    concurrent_jobs = make_jobs(work / "concurrent", args.clients * args.requests)
    warmup = args.warmup if args.warmup is not None else max(1, args.soak // 10)
    soak_jobs = make_jobs(work / "soak", args.soak, start=100_000, bad_every=20)
    beside_jobs = make_jobs(work / "beside", args.clients * 4, start=50_000)
    same = work / "same.png"
    random_image(7, (500, 375)).save(same)
    expected = references([*concurrent_jobs, *beside_jobs], models)
    expected.update(references(soak_jobs, models, every=args.soak_verify_every))
    handle.wait_ready()
    first = handle.stats()
    print(f"app pid {handle.pid} at {handle.url}: queue max size {first['queue_max_size']}, "
          f"RSS {first['rss_mb']:.0f} MB, {first['fds']} fds, {first['hooks']} hooks")
    loaded = run_concurrent(handle.url, split(concurrent_jobs, args.clients), expected)
    report(f"concurrent ({args.clients} clients x {args.requests}): {loaded.summary()}", loaded.problems)
    identical = run_identical(handle.url, same, args.clients, args.requests)
    report(f"identical ({args.clients} clients x {args.requests}, one photo): {identical.summary()}",
           identical.problems)
    slowed = run_beside_scorecam(handle.url, same, split(beside_jobs, args.clients), expected, slow_requests=2)
    report(f"{args.clients} clients x {len(beside_jobs) // args.clients} {slowed.summary()}", slowed.beside.problems)
    soaked = soak(handle, soak_jobs, expected, warmup)
    report(f"soak: {soaked.summary()}", soaked.problems)
    plateau = soaked.end["rss_mb"]
    print(f"RSS plateau (the soak's end) {plateau:.0f} MB against at most {args.max_plateau:.0f} MB "
          f"(MB of 2^20 bytes), growth {soaked.rss_growth_mb:+.1f} MB after warm-up against {args.max_rss_growth:g} MB")
    failed = bool(loaded.problems or soaked.problems) or soaked.rss_growth_mb > args.max_rss_growth
    failed |= plateau > args.max_plateau  # RSS is nan, and unchecked, for an app given by --url without --pid
    failed |= bool(identical.problems) or identical.bad_files > 0 or bool(slowed.beside.problems)
    failed |= soaked.end["hooks"] != soaked.start["hooks"]
    failed |= soaked.end["fds"] is not None and soaked.end["fds"] > soaked.warm["fds"] + 5
    if not args.url:  # nothing in the cache outlives its age by more than one pruning round (and some slack)
        from cbam_viz.app.served import cache_schedule

        failed |= max(soaked.oldest, default=0.0) > sum(cache_schedule(args.cache_seconds)) + 10
    return soaked, failed


def run_hostile(handle: AppHandle | ExternalApp, args: argparse.Namespace, work: Path, soaked: SoakResult) -> bool:
    """The large-body, ScoreCAM-limit and hostile-input phases after the soak; True when any check failed."""
    from cbam_viz.io.examples import EXAMPLES_DIR
    from tests.badfiles import write_corpus
    from tests.conftest import random_image

    plateau = soaked.end["rss_mb"]
    bodies = send_large_bodies(handle, args.bodies, args.body_mb)
    report(f"large bodies: {bodies.summary()}", bodies.problems)
    back = bodies.after - plateau
    print(f"RSS after the large bodies {bodies.after:.0f} MB, {back:+.1f} MB from the plateau of {plateau:.0f} MB "
          f"(at most +{args.max_rss_growth:g} MB)")
    photos = sorted(EXAMPLES_DIR.glob("*.jpg"))
    fresh = work / "fresh.png"
    random_image(12, (320, 240)).save(fresh)
    limits = run_scorecam_limits(handle.url, photos[0], fresh, args.slow_seconds, wait=args.recover_seconds,
                                 pid=handle.pid)
    report(limits.summary(), limits.problems)
    hostile = send_hostile(handle.url, write_corpus(work / "corpus", marker=work / "pickle-was-run"))
    report(f"hostile inputs: {hostile.summary()}", [])
    failed = bool(bodies.problems) or back > args.max_rss_growth
    failed |= bool(limits.problems)
    return failed or bool(hostile.blank or hostile.wrong) or (work / "pickle-was-run").exists()


def report(line: str, problems: list[str]) -> None:
    """A phase's summary line, then its first 20 problems indented."""
    print(line, flush=True)
    for problem in problems[:20]:
        print("  " + problem)


if __name__ == "__main__":
    sys.exit(main())
