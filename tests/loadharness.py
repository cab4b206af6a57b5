"""The load harness of `tests/test_load.py`, `tests/test_hardening.py` and `benchmarks/load.py`: the app in a child
process reporting its memory, files and hooks; requests with their own images and controls, each answer checked
against the same request computed locally; the concurrent, identical-photo, beside-ScoreCAM and soak runs."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


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
    env: dict[str, str] | None = None, cache_seconds: int | None = None,
) -> AppHandle:
    """Start `python app.py`'s main() in a child process on a free loopback port.

    `threads`: PyTorch intra-op threads in the app (default: PyTorch's choice, as `python app.py` runs).
    `wait=False` returns at once (call `wait_ready()` before sending requests), so the caller can work meanwhile.
    `cache_seconds`: the app's --cache-seconds (default: the app's). Give `env` a GRADIO_TEMP_DIR of its own to
    measure the app's cache alone.
    """
    from tests.apphelpers import free_port

    port = port or free_port()
    log = Path(log or tempfile.mkstemp(prefix="cbam-load-", suffix=".log")[1])
    argv = ["--host", "127.0.0.1", "--port", str(port), "--baseline", str(baseline), "--cbam", str(cbam),
            "--queue-size", str(queue_size), "--concurrency", str(concurrency)]
    if cache_seconds is not None:
        argv += ["--cache-seconds", str(cache_seconds)]
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
