"""The load harness of `tests/test_load.py`, `tests/test_hardening.py` and `benchmarks/load.py`: the app in a child
process reporting its memory, files and hooks; requests with their own images and controls, each answer checked
against the same request computed locally; the concurrent, identical-photo, beside-ScoreCAM and soak runs; then
large request bodies that must be refused, ScoreCAM against its time limit, and the hostile inputs whose errors must
say something."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tests.badfiles import Entry

HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks",
    "_global_module_registration_hooks", "_global_parameter_registration_hooks", "_global_buffer_registration_hooks",
)
CLASS_NAMES = ["red square", "green disc", "blue bar", "yellow ring", "white star"]


# ---------------------------------------------------------------------------------------------- the app process
def hook_count(models: dict) -> int:
    """Hooks registered on every module of the models, plus PyTorch's global module hooks."""
    import torch.nn.modules.module as module_mod

    total = sum(len(getattr(module_mod, name, {})) for name in GLOBAL_HOOKS)
    for loaded in models.values():
        for module in loaded.model.modules():
            total += sum(len(getattr(module, name, None) or {}) for name in HOOK_DICTS)
    return total


def _child(conn, argv: list[str], log_path: str, threads: int | None) -> None:
    """Run `app.main(argv)`; a thread answers the parent's 'stats' and 'stop' over `conn`."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from cbam_viz.app import launch as app

    seen: dict[str, Any] = {}
    build = app.build_demo

    def build_demo(studio, exports, *args):
        seen["studio"] = studio
        seen["demo"] = build(studio, exports, *args)
        return seen["demo"]

    app.build_demo = build_demo

    def control() -> None:
        while True:
            try:
                command = conn.recv()
            except EOFError:
                command = "stop"
            if command == "stop":
                os.kill(os.getpid(), signal.SIGTERM)  # app.main turns it into a clean shutdown
                return
            try:
                studio, demo = seen["studio"], seen["demo"]
                conn.send({
                    "hooks": hook_count(studio.models),
                    "threads": threading.active_count(),
                    "queue_max_size": demo._queue.max_size,
                    "model_runs": studio.model_runs,
                    **cache_stats(demo),
                })
            except Exception:
                conn.send({"error": traceback.format_exc()})

    threading.Thread(target=control, daemon=True, name="load-control").start()
    sys.exit(app.main(argv))


def cache_stats(demo) -> dict[str, float]:
    """Disk use of Gradio's cache folder (files and folders, MB), its file count, and the age in seconds of its
    oldest file other than those Gradio keeps for good (the examples): what delete_cache must bound."""
    from gradio.utils import get_upload_folder

    kept = set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))
    used, files, oldest, now = 0, 0, 0.0, time.time()
    for folder, _, names in os.walk(get_upload_folder()):
        with contextlib.suppress(OSError):
            used += os.stat(folder).st_blocks * 512
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                info = os.stat(path)
                used, files = used + info.st_blocks * 512, files + 1
                if path not in kept:
                    oldest = max(oldest, now - info.st_ctime)
    return {"cache_mb": used / 2**20, "cache_files": files, "cache_oldest_s": oldest}


def proc_stats(pid: int) -> dict[str, float]:
    """RSS (MB) and open file descriptors of process `pid`, from /proc."""
    return {"rss_mb": rss_mb(pid), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def rss_mb(pid: int) -> float:
    """VmRSS of process `pid` in MB (MiB, as everywhere in this harness), from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest RSS (MB) of process `pid` while the block runs, read every `every` seconds (nan without a pid)."""

    def __init__(self, pid: int | None, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.peak = 0.0 if pid else float("nan")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="peak-rss")

    def _watch(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mb(self.pid))
            if self._done.wait(self.every):
                return

    def __enter__(self) -> Self:
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class AppHandle:
    """A running app: its URL and process, with `stats()` (RSS, fds, hooks, threads) and `stop()`."""

    url: str
    process: Any
    conn: Any
    log: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        with self.lock:
            self.conn.send("stats")
            inside = self.conn.recv()
        if "error" in inside:
            raise RuntimeError(inside["error"])
        return {**proc_stats(self.pid), **inside}

    def stop(self) -> None:
        try:
            with self.lock:
                self.conn.send("stop")
        except (OSError, ValueError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)

    def wait_ready(self, timeout: float = 180.0) -> AppHandle:
        """Return once the app answers HTTP (it loads its models first); raise with its log if it died."""
        from tests.apphelpers import wait_until_up

        try:
            wait_until_up(self.url, lambda: None if self.process.is_alive() else self.process.exitcode, timeout)
        except (RuntimeError, TimeoutError) as err:
            self.stop()
            raise type(err)(f"{err}:\n{self.tail()}") from None
        return self

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class ExternalApp:
    """An app started elsewhere (`--url`): RSS and fds from /proc when its `pid` is given here, no hook counts."""

    url: str
    pid: int | None = None

    def stats(self) -> dict[str, Any]:
        inside = {"hooks": None, "threads": None, "queue_max_size": None, "model_runs": None, "cache_mb": float("nan"),
                  "cache_files": None, "cache_oldest_s": float("nan")}
        return {**(proc_stats(self.pid) if self.pid else {"rss_mb": float("nan"), "fds": None}), **inside}

    def wait_ready(self, timeout: float = 60.0) -> ExternalApp:
        urllib.request.urlopen(self.url, timeout=timeout).close()
        return self

    def stop(self) -> None:
        pass

    def tail(self, chars: int = 3000) -> str:
        return ""


def start_app(
    baseline: str | os.PathLike, cbam: str | os.PathLike, *, port: int | None = None, queue_size: int = 32,
    concurrency: int = 2, log: str | os.PathLike | None = None, threads: int | None = None, wait: bool = True,
    env: dict[str, str] | None = None, cache_seconds: int | None = None, slow_seconds: int | None = None,
    max_file_size: str | None = None,
) -> AppHandle:
    """Start `python app.py`'s main() in a child process on a free loopback port.

    `threads`: PyTorch intra-op threads in the app (default: PyTorch's choice, as `python app.py` runs).
    `wait=False` returns at once (call `wait_ready()` before sending requests), so the caller can work meanwhile.
    `cache_seconds`, `slow_seconds`, `max_file_size`: the app's --cache-seconds, --slow-seconds (ScoreCAM's time
    limit) and --max-file-size (which sets the request-body bounds too); None: the app's default. Give `env` a
    GRADIO_TEMP_DIR of its own to measure the app's cache alone.
    """
    from tests.apphelpers import free_port

    port = port or free_port()
    log = Path(log or tempfile.mkstemp(prefix="cbam-load-", suffix=".log")[1])
    argv = ["--host", "127.0.0.1", "--port", str(port), "--baseline", str(baseline), "--cbam", str(cbam),
            "--queue-size", str(queue_size), "--concurrency", str(concurrency)]
    for option, value in (("--cache-seconds", cache_seconds), ("--slow-seconds", slow_seconds),
                          ("--max-file-size", max_file_size)):
        if value is not None:
            argv += [option, str(value)]
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(child, argv, str(log), threads), name="cbam-app", daemon=True)
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})  # the child's environment is this one's at start
    try:
        process.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    handle = AppHandle(f"http://127.0.0.1:{port}/", process, parent, log)
    return handle.wait_ready() if wait else handle


# ---------------------------------------------------------------------------------------------- requests
MIX = (  # (share out of 10, controls): most requests are the default, some need a grad-cam pass
    ({}, 6),
    ({"target": "2"}, 2),  # class index 2, whatever the checkpoints
    ({"method": "hirescam"}, 1),
    ({"method": "gradcam", "layer": "layer3"}, 1),
)


@dataclass
class Job:
    """One request: its image file and controls; `bad` jobs send an unreadable file and expect a clear error."""

    index: int
    path: Path
    controls: dict[str, str]
    bad: bool = False

    def describe(self) -> str:
        return f"request {self.index} ({self.path.name}, {self.controls or 'defaults'})"


def make_jobs(folder: str | os.PathLike, count: int, start: int = 0, bad_every: int = 0) -> list[Job]:
    """`count` requests with their own images (distinct pixels and sizes) and the MIX of controls."""
    from tests.conftest import random_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cycle = [controls for controls, share in MIX for _ in range(share)]
    jobs = []
    for n in range(start, start + count):
        path = folder / f"img{n:05d}.png"
        bad = bool(bad_every) and n % bad_every == bad_every - 1
        if bad:
            buffer = io.BytesIO()
            random_image(n, (90, 70)).save(buffer, format="PNG")
            path = path.with_name(f"cut{n:05d}.png")
            path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        else:
            random_image(n, (64 + n % 61, 48 + (n * 7) % 43)).save(path)
        jobs.append(Job(n, path, dict(cycle[(n * 7) % len(cycle)]), bad))
    return jobs


@dataclass
class Reference:
    """What one request must answer, computed locally: per model (top-5 labels, top-5 P, target P), sizes, overlays."""

    size: tuple[int, int]
    shown: tuple[int, int]
    models: dict[str, tuple[list[str], list[float], float]]
    overlays: dict[str, np.ndarray]


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """PyTorch's intra-op threads set to `count` inside the block (on a busy machine 1 is several times faster)."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def references(jobs: Sequence[Job], models: dict, threads: int | None = 1, every: int = 1) -> dict[int, Reference]:
    """The local answer of every readable job (or every `every`-th job), by job index; the others are only
    checked for being an answer rather than an error."""
    with torch_threads(threads):
        return {job.index: reference(job, models) for job in jobs[::every] if not job.bad}


def reference(job: Job, models: dict) -> Reference:
    """The answer `job` must get, computed locally from its file."""
    from cbam_viz.io.images import load_image

    return expected_answer(load_image(job.path), models, job.controls)


def expected_answer(image: Image.Image, models: dict, controls: dict[str, str] | None = None) -> Reference:
    """What /compare must answer for `image` with `controls`: `cbam_viz.cam.engine.compare` run here, and its
    overlays."""
    from cbam_viz.cam.engine import compare
    from cbam_viz.cam.render import overlay

    controls = controls or {}
    result = compare(image, models, target=controls.get("target", "top1"),
                     method=controls.get("method", "gradcam"), layer=controls.get("layer", "layer4"))
    per_model = {
        key: ([p.label for p in res.top5], [p.prob for p in res.top5], res.target.prob)
        for key, res in result.results.items()
    }
    overlays = {
        key: np.asarray(overlay(result.image, res.heatmaps[0], 0.5, "jet").convert("RGB"), dtype=np.float32)
        for key, res in result.results.items()
    }
    return Reference(image.size, result.image.size, per_model, overlays)


def check(job: Job, answer: Any, expected: Reference | None, tol: float = 1e-4) -> list[str]:
    """Problems with one answer (empty when it is exactly this request's own result)."""
    if job.bad:
        if not isinstance(answer, Exception):
            return [f"{job.describe()}: an unreadable file was answered"]
        text = str(answer)
        good = "is truncated or corrupt" in text and "Traceback" not in text and "/tmp" not in text
        return [] if good else [f"{job.describe()}: unclear error {text!r}"]
    if isinstance(answer, Exception):
        return [f"{job.describe()}: {type(answer).__name__}: {answer}"]
    if expected is None:  # not verified: an answer is all that is asked
        return []
    return [f"{job.describe()}: {problem}" for problem in compare_answer(answer, expected, job.path.name, tol)]


def compare_answer(answer: Any, expected: Reference, name: str | None = None, tol: float = 1e-4) -> list[str]:
    """How a /compare answer (overlay, overlay, scores) differs from `expected`; `name`: the image name it must give."""
    base_png, cbam_png, scores = answer
    problems = []
    image = scores["image"]
    if (image["width"], image["height"]) != expected.size or (name is not None and image["name"] != name):
        problems.append(f"answered for another image {image}")
    if (image["analysed_width"], image["analysed_height"]) != expected.shown:
        problems.append(f"analysed at {image['analysed_width']}x{image['analysed_height']}, not {expected.shown}")
    for key, path in (("baseline", base_png), ("cbam", cbam_png)):
        labels, probs, target_p = expected.models[key]
        got = scores["models"][key]
        answered = {p["label"]: p["p"] for p in got["top5"]}
        wanted = dict(zip(labels, probs))  # compared as label -> P: near-ties may swap places or the 5th class
        common = answered.keys() & wanted.keys()
        same = len(common) >= len(wanted) - 1 and all(abs(answered[k] - wanted[k]) <= tol for k in common)
        if not same or abs(got["target"]["p"] - target_p) > tol:
            problems.append(f"{key} scores differ from this image's own ({got['target']})")
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        want = expected.overlays[key]
        if pixels.shape != want.shape:
            problems.append(f"{key} overlay is {pixels.shape[1::-1]}, expected {want.shape[1::-1]}")
        elif (diff := float(np.abs(smooth(pixels) - smooth(want)).mean())) > 4.0:
            problems.append(f"{key} overlay differs from this image's own (mean |diff| {diff:.1f})")
    return problems


def smooth(pixels: np.ndarray, block: int = 4) -> np.ndarray:
    """Block means: the heatmap's colours survive, the lossy WebP noise of the page's overlays averages out."""
    h, w = (max(1, n // block) for n in pixels.shape[:2])
    return np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize((w, h), Image.Resampling.BOX), np.float32)


def call(client, job: Job, timeout: float = 300.0):
    from gradio_client import handle_file

    try:
        return client.submit(handle_file(str(job.path)), api_name="/compare", **job.controls).result(timeout=timeout)
    except Exception as err:  # AppError, QueueError, timeouts: every one is counted
        return err


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


@dataclass
class LoadResult:
    requests: int
    problems: list[str]
    latencies: list[float]
    wall: float

    @property
    def throughput(self) -> float:
        return self.requests / self.wall if self.wall else float("nan")

    def summary(self) -> str:
        return (
            f"{self.requests} requests, {len(self.problems)} errors/mix-ups, latency p50 "
            f"{percentile(self.latencies, 50):.2f} s p95 {percentile(self.latencies, 95):.2f} s, "
            f"throughput {self.throughput:.2f} req/s ({self.wall:.1f} s)"
        )


def run_concurrent(url: str, batches: Sequence[Sequence[Job]], expected: dict[int, Reference],
                   timeout: float = 600.0) -> LoadResult:
    """One gradio_client Client per batch, all at once, each sending its jobs one after another."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in batches]
    problems: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(batches) + 1)

    def user(client, jobs: Sequence[Job]) -> None:
        start.wait()
        for job in jobs:
            began = time.perf_counter()
            answer = call(client, job)
            took = time.perf_counter() - began
            found = check(job, answer, expected.get(job.index))
            with lock:
                latencies.append(took)
                problems.extend(found)

    threads = [threading.Thread(target=user, args=(c, jobs), daemon=True) for c, jobs in zip(clients, batches)]
    wall = run_together(threads, start, timeout, problems)
    for client in clients:
        client.close()
    return LoadResult(sum(map(len, batches)), problems, latencies, wall)


def run_together(threads: list[threading.Thread], start: threading.Barrier, timeout: float,
                 problems: list[str]) -> float:
    """Start the client threads, release them at once through `start`, wait up to `timeout` seconds for them all;
    a stall is added to `problems`. Returns the wall time."""
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(max(1.0, timeout - (time.perf_counter() - began)))
    if any(thread.is_alive() for thread in threads):
        problems.append(f"deadlock or stall: requests still running after {timeout:.0f} s")
    return time.perf_counter() - began


@dataclass
class IdenticalResult:
    """Identical requests from many clients at once, each answer's overlay files fetched right away."""

    requests: int
    fetches: int
    empty: int  # HTTP 200 with 0 bytes
    short: int  # fewer bytes than the file a lone request gets
    broken: int  # the connection failed mid-file, or another status than 200
    different: int  # as many bytes, other content
    problems: list[str]
    latencies: list[float]

    @property
    def bad_files(self) -> int:
        return self.empty + self.short + self.broken + self.different

    def summary(self) -> str:
        return (
            f"{self.requests} identical requests, {self.fetches} overlay fetches: {self.empty} empty, {self.short} "
            f"short, {self.broken} broken, {self.different} different; {len(self.problems)} errors; latency p50 "
            f"{percentile(self.latencies, 50):.2f} s p95 {percentile(self.latencies, 95):.2f} s"
        )


def run_identical(url: str, path: str | os.PathLike, clients: int, requests: int,
                  timeout: float = 600.0) -> IdenticalResult:
    """`clients` gradio_client users each sending the same /compare request `requests` times, all at once; every
    overlay URL is fetched as soon as its answer arrives and compared with the bytes a lone request got."""
    import httpx
    from gradio_client import Client, handle_file

    def overlays(client: Client) -> list[str]:
        base, cbam, _ = client.predict(handle_file(str(path)), api_name="/compare")
        return [base["url"], cbam["url"]]

    def fetch(link: str) -> bytes:
        with httpx.Client(timeout=60) as http:
            response = http.get(link)
        if response.status_code != 200:
            raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request, response=response)
        return response.content

    lone = Client(url, verbose=False, download_files=False)
    wanted = [fetch(link) for link in overlays(lone)]
    lone.close()
    counts = {"empty": 0, "short": 0, "broken": 0, "different": 0, "fetches": 0}
    problems: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def user(n: int) -> None:
        client = Client(url, verbose=False, download_files=False)
        start.wait()
        for _ in range(requests):
            began = time.perf_counter()
            try:
                links = overlays(client)
            except Exception as err:
                with lock:
                    problems.append(f"client {n}: {type(err).__name__}: {err}")
                continue
            took = time.perf_counter() - began
            for link, want in zip(links, wanted):
                try:
                    got, kind = fetch(link), None
                except httpx.HTTPError:
                    got, kind = b"", "broken"
                if kind is None and got != want:
                    kind = "empty" if not got else "short" if len(got) < len(want) else "different"
                with lock:
                    counts["fetches"] += 1
                    if kind:
                        counts[kind] += 1
            with lock:
                latencies.append(took)
        client.close()

    threads = [threading.Thread(target=user, args=(n,), daemon=True) for n in range(clients)]
    run_together(threads, start, timeout, problems)
    return IdenticalResult(clients * requests, counts.pop("fetches"), **counts, problems=problems,
                           latencies=latencies)


@dataclass
class SlowResult:
    """Requests sent while a ScoreCAM request runs: their own LoadResult, and what became of the ScoreCAM ones."""

    beside: LoadResult
    slow_seconds: float  # how long the first ScoreCAM request took (answered or refused)
    outcomes: list[str]  # per ScoreCAM request: "answered" or its error message

    def summary(self) -> str:
        shown = "; ".join(text[:120] for text in self.outcomes)
        return f"beside ScoreCAM ({self.slow_seconds:.1f} s: {shown}): {self.beside.summary()}"


def run_beside_scorecam(url: str, path: str | os.PathLike, batches: Sequence[Sequence[Job]],
                        expected: dict[int, Reference], layer: str = "layer1", slow_requests: int = 1,
                        timeout: float = 600.0) -> SlowResult:
    """Send `slow_requests` ScoreCAM requests for one photo (`layer`), then, while they run, the jobs as in
    `run_concurrent`: how the other users fare beside the slow method."""
    from gradio_client import Client, handle_file

    slow_client = Client(url, verbose=False)
    began = time.perf_counter()
    slow = [slow_client.submit(handle_file(str(path)), method="scorecam", layer=layer, api_name="/compare")
            for _ in range(slow_requests)]
    time.sleep(0.5)  # let the first one start
    beside = run_concurrent(url, batches, expected, timeout)
    outcomes, took = [], None
    for job in slow:
        try:
            job.result(timeout=timeout)
            outcomes.append("answered")
        except Exception as err:
            outcomes.append(f"{type(err).__name__}: {err}")
        took = took if took is not None else time.perf_counter() - began
    slow_client.close()
    return SlowResult(beside, took or 0.0, outcomes)


@dataclass
class SoakResult:
    requests: int
    problems: list[str]
    warm: dict[str, Any]
    end: dict[str, Any]
    start: dict[str, Any]
    latencies: list[float]
    rss: list[float]  # MB after each request
    disk: list[float] = field(default_factory=list)  # MB of Gradio's cache folder after each request
    oldest: list[float] = field(default_factory=list)  # age (s) of its oldest file not kept for good, after each

    @property
    def rss_growth_mb(self) -> float:
        """Median RSS of the last 10 requests minus that of the 10 around the end of the warm-up: a request's
        transient buffers (a large upload decoded, then freed) are not growth."""
        return self.end["rss_mb"] - self.warm["rss_mb"]

    def summary(self) -> str:
        s, w, e = self.start, self.warm, self.end
        return (
            f"{self.requests} sequential requests, {len(self.problems)} errors/mix-ups, latency p50 "
            f"{percentile(self.latencies, 50):.2f} s p95 {percentile(self.latencies, 95):.2f} s; "
            f"RSS {s['rss_mb']:.0f} MB -> {w['rss_mb']:.0f} MB after warm-up -> {e['rss_mb']:.0f} MB at the end "
            f"(growth {self.rss_growth_mb:+.1f} MB, peak {max(self.rss, default=float('nan')):.0f} MB); "
            f"hooks {s['hooks']} -> {w['hooks']} -> {e['hooks']}; open fds {s['fds']} -> {w['fds']} -> {e['fds']}; "
            f"threads {w['threads']} -> {e['threads']}; cache on disk {s['cache_mb']:.1f} MB -> "
            f"{w['cache_mb']:.1f} MB -> {e['cache_mb']:.1f} MB (peak {max(self.disk, default=float('nan')):.1f} "
            f"MB, {e['cache_files']} files at the end, oldest {max(self.oldest, default=float('nan')):.0f} s)"
        )


def soak(handle: AppHandle, jobs: Sequence[Job], expected: dict[int, Reference], warmup: int) -> SoakResult:
    """The jobs one after another from one client; RSS after each, other stats at the start, after `warmup`
    requests and at the end."""
    from gradio_client import Client

    client = Client(handle.url, verbose=False)
    start = warm = handle.stats()
    problems: list[str] = []
    latencies: list[float] = []
    rss: list[float] = []
    disk: list[float] = []
    oldest: list[float] = []
    for n, job in enumerate(jobs):
        if n == warmup:
            warm = handle.stats()
        began = time.perf_counter()
        answer = call(client, job)
        latencies.append(time.perf_counter() - began)
        problems += check(job, answer, expected.get(job.index))
        after = handle.stats()
        rss.append(after["rss_mb"] if handle.pid else float("nan"))
        disk.append(after["cache_mb"])
        oldest.append(after["cache_oldest_s"])
    client.close()
    time.sleep(0.5)
    end = handle.stats()
    if rss:
        warm = {**warm, "rss_mb": statistics.median(rss[max(0, warmup - 5) : warmup + 5] or rss[:1])}
        end = {**end, "rss_mb": statistics.median(rss[-10:])}
    return SoakResult(len(jobs), problems, warm, end, start, latencies, rss, disk, oldest)


def split(jobs: Sequence[Job], clients: int) -> list[list[Job]]:
    per = len(jobs) // clients
    return [list(jobs[i * per : (i + 1) * per]) for i in range(clients)]


# ---------------------------------------------------------------------------------------------- large bodies
BODY_REFUSED = "a request body may be at most"  # the reason of the app's 413 for a body over its bound


@dataclass(frozen=True)
class DataUrlBody:
    """A /gradio_api/call/compare JSON body of about `megabytes` MB whose image is a base64 data: URL, generated a
    chunk at a time as it is sent, so that a client sending many never holds one whole."""

    megabytes: float
    head: ClassVar[bytes] = b'{"data":[{"path":null,"url":"data:image/jpeg;base64,'
    tail: ClassVar[bytes] = b'","meta":{"_type":"gradio.FileData"}}]}'
    chunk: ClassVar[int] = 2**16

    @property
    def blocks(self) -> int:
        return max(0, round((self.megabytes * 2**20 - len(self.head) - len(self.tail)) / self.chunk))

    def __len__(self) -> int:
        return len(self.head) + self.blocks * self.chunk + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        block = b"A" * self.chunk
        for _ in range(self.blocks):
            yield block
        yield self.tail


def post_body(url: str, body: DataUrlBody, with_length: bool) -> tuple[int, str]:
    """POST `body` to /gradio_api/call/compare with its Content-Length, or in chunks without one: (HTTP status, the
    answer's text); status 0 with the error when the connection failed."""
    import httpx

    headers = {"content-type": "application/json"}
    if with_length:
        headers["content-length"] = str(len(body))
    try:
        response = httpx.post(url + "gradio_api/call/compare", content=body, headers=headers, timeout=300)
    except httpx.HTTPError as err:
        return 0, f"{type(err).__name__}: {err}"
    return response.status_code, response.text


@dataclass
class BodiesResult:
    """Large request bodies sent to /compare: how each was sent and answered, and the app's RSS around them."""

    megabytes: float
    answers: list[tuple[str, int, str]]  # (how it was sent, HTTP status, the answer's text)
    before: float  # RSS (MB) before the first
    peak: float  # the highest while they were sent
    after: float  # after `idle` seconds without requests
    idle: float

    @property
    def problems(self) -> list[str]:
        """Every body not refused with 413 and the reason."""
        return [f"{how}: HTTP {status} {text[:200]!r}" for how, status, text in self.answers
                if status != 413 or BODY_REFUSED not in text]

    def summary(self) -> str:
        ways = ", ".join(f"{sum(how == way for how, _, _ in self.answers)} {way}"
                         for way in dict.fromkeys(how for how, _, _ in self.answers))
        reason = next((text for _, status, text in self.answers if status == 413), "")
        return (
            f"{len(self.answers)} bodies of {self.megabytes:.0f} MB ({ways}): "
            f"{len(self.answers) - len(self.problems)} refused with 413 ({reason!r}), {len(self.problems)} not; "
            f"RSS {self.before:.0f} MB before, peak {self.peak:.0f} MB, {self.after:.0f} MB after {self.idle:.0f} s "
            "idle"
        )


def send_large_bodies(handle: AppHandle | ExternalApp, count: int, megabytes: float, together: int = 2,
                      idle: float = 5.0) -> BodiesResult:
    """`count` /compare bodies of `megabytes` MB each (a base64 data: URL image), every other one with its
    Content-Length and the others in chunks without one: one after another, then the last `together` at once.
    The RSS is read again after `idle` seconds without requests."""
    body = DataUrlBody(megabytes)
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def send(with_length: bool) -> None:
        status, text = post_body(handle.url, body, with_length)
        with lock:
            answers.append(("with Content-Length" if with_length else "chunked", status, text))

    ways, together = [n % 2 == 0 for n in range(count)], min(together, count)
    before = handle.stats()["rss_mb"]
    with PeakRss(handle.pid) as peak:
        for with_length in ways[: count - together]:
            send(with_length)
        threads = [threading.Thread(target=send, args=(way,), daemon=True) for way in ways[count - together :]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    time.sleep(idle)
    return BodiesResult(megabytes, answers, before, peak.peak, handle.stats()["rss_mb"], idle)


# ---------------------------------------------------------------------------------------------- ScoreCAM's limit
SLOW_REFUSED = "over its limit of"  # a ScoreCAM request refused before it runs, its estimate over the limit
SLOW_STOPPED = "stopped at its limit of"  # one stopped when it reached the limit


@dataclass
class SlowRun:
    """One ScoreCAM request: its layer, what became of it, its wall time at the client and its message."""

    layer: str
    outcome: str  # "answered", "stopped" (at the limit), "refused" (before it ran) or "failed" (anything else)
    seconds: float
    message: str = ""

    @property
    def accepted(self) -> bool:
        return self.outcome in ("answered", "stopped")

    def describe(self) -> str:
        said = f": {self.message[:300]}" if self.message else ""
        return f"{self.layer} {self.outcome} in {self.seconds:.1f} s{said}"


def scorecam_request(client: Any, path: str | os.PathLike, layer: str, timeout: float) -> SlowRun:
    """ScoreCAM for the image at `path` at `layer` through /compare, timed."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    began = time.perf_counter()
    try:
        client.submit(handle_file(str(path)), method="scorecam", layer=layer, api_name="/compare").result(timeout)
        outcome, message = "answered", ""
    except AppError as err:
        message = str(err)
        outcome = "stopped" if SLOW_STOPPED in message else "refused" if SLOW_REFUSED in message else "failed"
    except Exception as err:  # a timeout, a lost connection
        outcome, message = "failed", f"{type(err).__name__}: {err}"
    return SlowRun(layer, outcome, time.perf_counter() - began, message)


@dataclass
class LimitResult:
    """ScoreCAM at each layer against the time limit, then the request at the first layer that must be accepted
    again: refused while a slow run's estimate fades (`waited` seconds in all), then accepted."""

    runs: list[SlowRun]
    recovery: list[SlowRun]
    limit: float
    margin: float  # the seconds a run may take past the limit to stop (its last batch, the answer's way back)
    waited: float
    peak_rss: float

    @property
    def accepted(self) -> list[SlowRun]:
        return [run for run in (*self.runs, *self.recovery) if run.accepted]

    @property
    def worst(self) -> float:
        """The longest accepted run, in seconds."""
        return max((run.seconds for run in self.accepted), default=float("nan"))

    @property
    def problems(self) -> list[str]:
        allowed = self.limit + self.margin
        found = [f"{run.describe()}: over the limit of {allowed:g} s" for run in self.accepted if run.seconds > allowed]
        for run in (*self.runs, *self.recovery):
            if run.outcome == "refused" and run.seconds > self.margin:
                found.append(f"{run.describe()}: refused, but only after {run.seconds:.1f} s")
            if run.outcome == "failed":
                found.append(f"{run.describe()}: neither an answer nor a refusal or a stop at the limit")
            if run.layer == "layer1" and "earlier layer" in run.message:
                found.append(f"{run.describe()}: suggests an earlier layer than the first")
        if not self.recovery[-1].accepted:
            found.append(f"{self.recovery[-1].describe()}: still refused after {self.waited:.0f} s")
        return found

    def summary(self) -> str:
        """The figures on a first line (worst accepted run against the limit, the first layer again), then every
        request on its own."""
        worst = f"{self.worst:.1f} s" if self.accepted else "none"
        last, stopped = self.recovery[-1], sum(run.outcome == "stopped" for run in self.runs)
        refusals = f"after {len(self.recovery) - 1} refusals over {self.waited:.0f} s" if self.waited else "at once"
        again = f"accepted {refusals}" if last.accepted else f"still refused after {self.waited:.0f} s"
        lines = [run.describe() for run in self.runs] + [f"again, another photo: {last.describe()}"]
        return (
            f"ScoreCAM against its limit of {self.limit:g} s: worst accepted run {worst} against {self.limit:g} s + "
            f"{self.margin:g} s to stop; {last.layer} again (another photo), {stopped} of the {len(self.runs)} runs "
            f"having stopped at the limit: {again}; peak RSS {self.peak_rss:.0f} MB"
            + "".join(f"\n    {line}" for line in lines)
        )


def run_scorecam_limits(url: str, photo: str | os.PathLike, fresh: str | os.PathLike, limit: float, *,
                        layers: Sequence[str] | None = None, margin: float = 5.0, wait: float = 0.0,
                        retry: float = 30.0, pid: int | None = None) -> LimitResult:
    """ScoreCAM for `photo` at each of `layers` (default: all) in turn, from one client: each must be refused at
    once with its reason, or be accepted and then answer, or stop at `limit` seconds saying so, within `margin`
    seconds more. Then ScoreCAM at the first of them for `fresh` (another photo: `photo`'s answer is cached), sent
    again every `retry` seconds for up to `wait` seconds while it is refused: a slow run must not refuse it for good.
    `pid`: the app's, for its peak RSS."""
    from gradio_client import Client

    from cbam_viz.cam.engine import LAYERS

    layers = list(layers or LAYERS)
    client = Client(url, verbose=False)
    timeout = 10 * limit + 120  # a run that ignores its limit is still measured
    with PeakRss(pid) as peak:
        runs = [scorecam_request(client, photo, layer, timeout) for layer in layers]
        began, waited = time.monotonic(), 0.0
        recovery = [scorecam_request(client, fresh, layers[0], timeout)]
        while recovery[-1].outcome == "refused" and time.monotonic() - began + retry <= wait:
            time.sleep(retry)
            waited = time.monotonic() - began
            recovery.append(scorecam_request(client, fresh, layers[0], timeout))
    client.close()
    return LimitResult(runs, recovery, limit, margin, waited, peak.peak)


# ---------------------------------------------------------------------------------------------- hostile inputs
BLANK = "has not enabled verbose error reporting"  # gradio_client's words for an error the server sent without text
META = {"meta": {"_type": "gradio.FileData"}}
# the page's own events sent without the click that makes them, as a client can: (event, inputs, event data)
PAGE_EVENTS = {
    "page-corner-without-click": ("click_corner", [None, None], None),
    "page-example-without-click": ("pick_example", [], None),
    "page-example-999": ("pick_example", [], {"index": 999, "value": None}),
    "page-top5-without-click": ("pick_target", [], None),
}


def is_blank(message: str | None) -> bool:
    """An error without words: none at all (the server's `{"error": null}`), only spaces, or gradio_client's
    stand-in for none."""
    return message is None or not message.strip() or BLANK in message


def upload_raw(url: str, filename: bytes, content: bytes) -> str:
    """POST a file to Gradio's upload route with the file name as raw bytes (httpx only sends str names)."""
    import httpx

    boundary = uuid.uuid4().hex.encode()
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="' + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + content + b"\r\n--" + boundary + b"--\r\n"
    )
    response = httpx.post(
        url + "gradio_api/upload", content=body,
        headers={"content-type": "multipart/form-data; boundary=" + boundary.decode()}, timeout=60,
    )
    response.raise_for_status()
    return response.json()[0]


def upload_stream(url: str, path: str | os.PathLike) -> Any:
    """POST the file at `path` to Gradio's upload route, read as it is sent (gradio_client refuses a file over the
    app's cap before sending it): the httpx response."""
    import httpx

    with open(path, "rb") as file:
        return httpx.post(url + "gradio_api/upload", files={"files": (Path(path).name, file)}, timeout=300)


def call_rest(url: str, data: list) -> tuple[str, dict]:
    """POST /gradio_api/call/compare as curl would, then read the event stream: (event, its data)."""
    import httpx

    posted = httpx.post(url + "gradio_api/call/compare", json={"data": data}, timeout=60)
    posted.raise_for_status()
    stream = httpx.get(url + f"gradio_api/call/compare/{posted.json()['event_id']}", timeout=300).text
    events = re.findall(r"event: (\w+)\ndata: (.*)", stream)
    event, payload = next((e, d) for e, d in events if e in ("complete", "error"))
    return event, json.loads(payload)


def call_event(url: str, name: str, data: list, event_data: dict | None) -> tuple[bool, str | None]:
    """Send the page's event `name` (its function's name in the app's config) through the queue as the page does,
    with `event_data` as what the click gave: (completed, the error message when it did not)."""
    import httpx

    config = httpx.get(url + "config", timeout=60).json()
    fn_index = next(dep["id"] for dep in config["dependencies"] if dep.get("api_name") == name)
    session = uuid.uuid4().hex
    joined = httpx.post(url + "gradio_api/queue/join", timeout=60, json={
        "data": data, "fn_index": fn_index, "session_hash": session, "event_data": event_data, "trigger_id": None,
    })
    joined.raise_for_status()
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=300) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                return bool(message.get("success")), (message.get("output") or {}).get("error")
    raise RuntimeError(f"the event stream of {name} ended without its answer")


def rest_cases(uploaded: str) -> dict[str, list]:
    """Raw /gradio_api/call/compare inputs that must each be refused with a message, by kind; `uploaded`: the
    server path of a file uploaded to the app."""
    return {
        "rest-list-for-the-image": [[{"path": uploaded, **META}]],
        "rest-two-images": [[{"path": uploaded, **META}, {"path": uploaded, **META}]],
        "rest-server-path": [{"path": "/etc/passwd", **META}],
        "rest-no-inputs": [],
        "rest-text-for-the-image": ["missing.jpg"],
        "rest-number-for-the-image": [12],
    }


@dataclass
class HostileResult:
    """Each hostile input by kind: whether it must be answered (None: answered or refused), and what it got (None
    when answered, else the error message, itself None when the server sent none)."""

    outcomes: dict[str, tuple[bool | None, str | None, bool]]  # kind -> (must be answered, message, answered)

    @property
    def blank(self) -> list[str]:
        return [kind for kind, (_, message, answered) in self.outcomes.items() if not answered and is_blank(message)]

    @property
    def wrong(self) -> list[str]:
        """Kinds refused that must be answered, or answered that must be refused."""
        return [kind for kind, (must, _, answered) in self.outcomes.items() if must is not None and must != answered]

    def summary(self) -> str:
        answered = sum(answered for _, _, answered in self.outcomes.values())
        refused = len(self.outcomes) - answered - len(self.blank)
        rest, page = (sum(kind.startswith(prefix) for kind in self.outcomes) for prefix in ("rest-", "page-"))
        return (
            f"{len(self.outcomes) - rest - page} corpus files, {rest} raw REST calls and {page} page events: "
            f"{answered} answered, {refused} refused with a message, "
            f"{len(self.blank)} blank errors ({', '.join(self.blank) or 'none'}); {len(self.wrong)} answered where "
            f"they must be refused or refused where they must be answered ({', '.join(self.wrong) or 'none'})"
        )


def send_hostile(url: str, entries: Sequence[Entry], page_events: bool = True) -> HostileResult:
    """The corpus files (tests/badfiles.py) through /compare with gradio_client, the raw REST inputs of
    `rest_cases`, and with `page_events` the page's events of PAGE_EVENTS: what each got."""
    from gradio_client import Client

    from tests.badfiles import encode
    from tests.conftest import random_image

    client = Client(url, verbose=False)
    outcomes = {entry.kind: (entry.ok, *send_file(client, url, entry)) for entry in entries}
    client.close()
    uploaded = upload_raw(url, b"rest.png", encode(random_image(8, (70, 50)), "PNG"))
    for kind, data in rest_cases(uploaded).items():
        event, answer = call_rest(url, data)
        outcomes[kind] = (False, answer.get("error") if event == "error" else None, event == "complete")
    for kind, (name, data, event_data) in PAGE_EVENTS.items() if page_events else ():
        completed, message = call_event(url, name, data, event_data)
        outcomes[kind] = (None, message, completed)
    return HostileResult(outcomes)


def send_file(client: Any, url: str, entry: Entry) -> tuple[str | None, bool]:
    """One corpus file through /compare: (the error message or None, answered)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    if entry.sparse:  # over the upload cap: gradio_client would refuse to send it, the server must refuse it
        response = upload_stream(url, entry.path)
        return (None, True) if response.status_code == 200 else (response.text, False)
    if isinstance(entry.name, bytes):  # a browser or curl can send it; gradio_client cannot encode it
        uploaded = upload_raw(url, entry.name, entry.path.read_bytes())
        payload = {"path": uploaded, "orig_name": Path(uploaded).name, **META}
    else:
        payload = handle_file(str(entry.path))
    try:
        client.predict(payload, api_name="/compare")
        return None, True
    except AppError as err:
        return str(err), False
