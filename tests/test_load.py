"""Many users at once, a long run, large bodies, ScoreCAM's limit and hostile inputs, at reduced counts
(`python benchmarks/load.py` runs the full 8×25 and 500, ten bodies of 150 MB and the bundled models).

The app runs as `app.main()` in a child process (tests.loadharness.start_app), which reports its RSS, open files,
threads and the hooks on every module of both models. Every concurrent answer (and every 4th of the soak) is
checked against the same request computed locally, so a result mixed up between requests fails the test as surely
as an error does.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from cbam_viz.app import studio as studio_module
from cbam_viz.app.figure_export import ExportFolder
from cbam_viz.app.served import cache_schedule
from cbam_viz.app.studio import Studio
from cbam_viz.cam import scorecam
from cbam_viz.cam.engine import compare
from cbam_viz.io.examples import EXAMPLES_DIR
from tests import loadharness as load
from tests.apphelpers import serve
from tests.badfiles import write_corpus
from tests.conftest import SMALL_SIDE, random_image

pytestmark = pytest.mark.timeout(300)

CLIENTS, REQUESTS, SOAK, WARMUP = 4, 5, 60, 30
EXAMPLES = sorted(path.name for path in EXAMPLES_DIR.iterdir() if path.suffix == ".jpg")  # the page's gallery
CACHE_SECONDS = 8
MAX_FILE_SIZE = "20mb"  # the app's upload cap, and with it its bound on a request body: 4/3 of it plus 1 MiB


@pytest.fixture(scope="module")
def jobs(tiny_models, tmp_path_factory):
    """The concurrent and soak requests with their expected answers, computed while the app starts."""
    folder = tmp_path_factory.mktemp("load")
    concurrent = load.make_jobs(folder / "concurrent", CLIENTS * REQUESTS)
    soak = load.make_jobs(folder / "soak", SOAK, start=100_000, bad_every=20)
    return SimpleNamespace(  # every concurrent answer is checked in full, every 4th of the soak (its point is memory)
        concurrent=concurrent, soak=soak, expected={},
        compute=lambda: {**load.references(concurrent, tiny_models), **load.references(soak, tiny_models, every=4)},
    )


@pytest.fixture(scope="module")
def gradio_dir(tmp_path_factory):
    """The app's own Gradio cache folder, so that what it leaves there can be told apart."""
    return tmp_path_factory.mktemp("gradio")


@pytest.fixture(scope="module")
def running(tiny_checkpoints, jobs, gradio_dir, tmp_path_factory):
    handle = load.start_app(
        tiny_checkpoints["baseline"], tiny_checkpoints["cbam"], log=tmp_path_factory.mktemp("app") / "app.log",
        threads=1,  # a shared 2-core machine: one PyTorch thread per request is several times faster here
        # A fixed glibc mmap threshold makes RSS follow live memory. By default glibc raises the threshold after
        # the first large free and then keeps freed tensor memory in its heaps, so RSS ratchets up for a few dozen
        # requests before it levels off: longer than this 60-request soak. A leak of ours still shows;
        # `python benchmarks/load.py` measures glibc's default.
        env={"MALLOC_MMAP_THRESHOLD_": "131072", "GRADIO_TEMP_DIR": str(gradio_dir)},
        cache_seconds=CACHE_SECONDS,  # short, so that the soak sees uploads and overlays pruned
        max_file_size=MAX_FILE_SIZE,
        wait=False,
    )
    try:
        jobs.expected.update(jobs.compute())  # while the app starts
        yield handle.wait_ready()
    finally:
        handle.stop()


def test_concurrent_users_each_get_their_own_answers(running, jobs):
    assert {tuple(sorted(job.controls.items())) for job in jobs.concurrent} >= {(), (("method", "hirescam"),)}
    result = load.run_concurrent(running.url, load.split(jobs.concurrent, CLIENTS), jobs.expected, timeout=240)
    print(result.summary())
    assert result.problems == [], "\n".join(result.problems) + "\n" + running.tail()
    assert len(result.latencies) == CLIENTS * REQUESTS
    stats = running.stats()
    assert stats["queue_max_size"] == 32  # app.py's bounded queue (--queue-size)


def test_identical_requests_never_get_an_empty_or_short_overlay(running, tmp_path):
    """Gradio rewrote <cache>/<hash>/image.webp in place for each identical answer, so clients fetching an
    earlier answer's overlay got 0 bytes or a cut file (12-15 of 400 fetches at 8 x 25)."""
    path = tmp_path / "same.png"
    random_image(7, (96, 72)).save(path)
    result = load.run_identical(running.url, path, CLIENTS, REQUESTS, timeout=240)
    print(result.summary())
    assert result.problems == [], "\n".join(result.problems) + "\n" + running.tail()
    assert result.fetches == 2 * CLIENTS * REQUESTS and result.bad_files == 0, result.summary()


def test_a_scorecam_request_holds_one_worker_and_a_second_is_refused(running, jobs, tmp_path):
    """A ScoreCAM request takes minutes: it must hold one worker only, and a second one is refused, so that
    ScoreCAM never blocks every user."""
    path = tmp_path / "slow.png"
    random_image(11, (80, 60)).save(path)
    # requests on the exact fast path, which needs no model lock (a grad-cam method waits for ScoreCAM's lock)
    fast = [job for job in jobs.concurrent if not job.controls][:8]
    result = load.run_beside_scorecam(running.url, path, load.split(fast, CLIENTS), jobs.expected,
                                      slow_requests=2, timeout=240)
    print(result.summary())
    assert result.beside.problems == [], "\n".join(result.beside.problems)
    assert len(result.beside.latencies) == 8
    assert max(result.beside.latencies) < result.slow_seconds, result.summary()  # none waited for the ScoreCAM
    assert result.outcomes.count("answered") == 1, result.outcomes
    refused = next(text for text in result.outcomes if text != "answered")
    assert "another ScoreCAM request is running (they run one at a time): try again shortly" in refused, refused


def test_soak_keeps_memory_hooks_and_files_flat(running, jobs):
    assert sum(job.bad for job in jobs.soak) == 3  # unreadable files on the way: error paths must not leak either
    result = load.soak(running, jobs.soak, jobs.expected, warmup=WARMUP)
    print(result.summary())
    assert result.problems == [], "\n".join(result.problems)
    assert result.rss_growth_mb <= 50, result.summary()
    assert result.end["hooks"] == result.start["hooks"] == 0, result.summary()
    assert result.end["fds"] <= result.warm["fds"] + 3, result.summary()
    assert result.end["threads"] <= result.warm["threads"] + 4, result.summary()
    # the cache on disk is bounded: nothing outlives its age by more than a pruning round (plus a busy machine's
    # slack), and the files left are a few seconds' worth, not the whole run's
    frequency, age = cache_schedule(CACHE_SECONDS)
    window = age + frequency + 6
    assert 0 < max(result.oldest) <= window, result.summary()
    # each request writes its upload and two overlays; at most the last `window` seconds' worth may remain
    per_second = 3 * SOAK / sum(result.latencies)
    assert result.end["cache_files"] <= min(3 * SOAK, per_second * window) + 5, result.summary()


def test_large_bodies_are_refused_and_leave_no_memory_behind(running):
    """Bodies over the bound (about 28 MB here), with their Content-Length or in chunks without one, the last two
    at once, each get 413 with the reason, and the RSS comes back (a 150 MB body once left 550 MB for good)."""
    result = load.send_large_bodies(running, count=6, megabytes=40, together=2, idle=2.0)
    print(result.summary())
    assert result.problems == [], result.summary()
    assert sorted(how for how, _, _ in result.answers) == 3 * ["chunked"] + 3 * ["with Content-Length"]
    assert result.after <= result.before + 50, result.summary()


def test_hostile_inputs_all_get_a_message(running, tmp_path):
    """The corpus's refused files (each answer's wording is tests/test_hardening.py's) and the raw REST inputs:
    no error without a message (a list in place of the image got `{"error": null}`)."""
    refused = [entry for entry in write_corpus(tmp_path / "corpus") if not entry.ok]
    result = load.send_hostile(running.url, refused, page_events=False)
    print(result.summary())
    assert result.blank == [] and result.wrong == [], result.summary()
    assert len(result.outcomes) == len(refused) + len(load.rest_cases("x"))
    assert load.is_blank(None) and load.is_blank(" ") and not load.is_blank("empty.jpg is empty (0 bytes)")


def test_page_events_without_their_click_get_a_message_or_change_nothing(running):
    """The page's click events sent through the queue without the click's event data, as any client can."""
    result = load.send_hostile(running.url, [])
    print(result.summary())
    assert result.blank == [], result.summary()


def test_stopping_the_app_deletes_every_file_and_folder_it_wrote(running, jobs, gradio_dir):
    """SIGTERM (what `docker stop` sends) closes the server, which deletes the uploads, the served pictures and
    their folders (the soak before this leaves plenty of each); only Gradio's copies of the examples stay, one
    folder per example, which the next start reuses."""
    Client(running.url, verbose=False).predict(handle_file(str(jobs.concurrent[0].path)), api_name="/compare")
    assert running.stats()["cache_files"] >= len(EXAMPLES) + 3  # an upload and two overlays at least
    running.stop()
    assert running.process.exitcode == 0, running.tail()
    left = sorted(p.relative_to(gradio_dir).as_posix() for p in gradio_dir.rglob("*") if p.is_file())
    assert sorted(name.rsplit("/", 1)[-1] for name in left) == EXAMPLES, left
    assert sorted(p for p in gradio_dir.rglob("*") if p.is_dir()) == sorted(
        (gradio_dir / name).parent for name in left
    )


def test_a_full_queue_answers_clearly_and_the_server_recovers(tiny_models, tmp_path):
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"q{i}.png")
        random_image(300 + i, (70 + i, 50)).save(paths[-1])
    studio = Studio(tiny_models, examples_dir=None, concurrency=1)
    with serve(studio, ExportFolder(tmp_path / "exports"), queue_size=2) as served:
        clients = [Client(served.url, verbose=False) for _ in range(2)]
        jobs = [
            clients[i % 2].submit(handle_file(str(p)), method="hirescam", api_name="/compare")
            for i, p in enumerate(paths)
        ]
        answered, refused = [], []
        for path, job in zip(paths, jobs):
            try:
                answered.append((path, job.result(timeout=120)))
            except Exception as err:  # gradio_client's QueueError
                refused.append(str(err))
        assert refused and all("Queue is full" in text for text in refused), refused
        assert answered
        for path, (_, _, scores) in answered:
            assert scores["image"]["name"] == path.name
        _, _, scores = clients[0].predict(handle_file(str(paths[-1])), api_name="/compare")
        assert scores["image"]["name"] == paths[-1].name
        with pytest.raises(AppError, match="is empty"):
            empty = tmp_path / "empty.png"
            empty.write_bytes(b"")
            clients[1].predict(handle_file(str(empty)), api_name="/compare")


def test_grad_cam_passes_never_record_another_requests_forward_pass(tiny_models):
    """grad-cam's hooks on the shared model saw every forward pass through its layer, from any thread: before
    cam.OwnThreadActivations, HiResCAM of one image was computed from another request's activations."""
    studio = Studio(tiny_models, examples_dir=None)
    images = [random_image(400 + i, (72, 56)) for i in range(4)]
    stop = threading.Event()
    others = []

    def other_users() -> None:
        seed = 500
        while not stop.is_set():
            studio.base(studio.open(random_image(seed, (64, 64))))
            others.append(seed)
            seed += 1

    with load.torch_threads(1):  # process-wide: fast on a busy machine, and the race is the same
        expected = [compare(image, tiny_models, method="hirescam") for image in images]
        thread = threading.Thread(target=other_users, daemon=True)
        thread.start()
        try:
            for image, want in zip(images, expected):
                analysis = studio.analyse(studio.open(image), method="hirescam")
                for key in ("baseline", "cbam"):
                    np.testing.assert_allclose(analysis.results[key].heatmaps, want.results[key].heatmaps, atol=1e-4)
        finally:
            stop.set()
            thread.join(60)
    assert others, "the other requests never ran"


def test_scorecam_runs_keep_to_their_limit_and_refusals_recover(small_models, tmp_path, monkeypatch):
    """ScoreCAM at every layer against a 1 s limit with an estimate far too low, as on a machine busier than when it
    was measured (accepted runs took 2.4-2.75 times the limit): the limit itself stops them, and a slow run's
    estimate fades (here in seconds, not minutes) instead of refusing ScoreCAM until a restart."""
    per_copy = 4 * SMALL_SIDE**2 * (scorecam.FORWARD_FLOATS_PER_PIXEL + scorecam.MASK_FLOATS_PER_PIXEL)
    monkeypatch.setattr(scorecam, "MASKED_BATCH_BYTES", 16 * per_copy)  # batches as small as at 224 px
    masks = scorecam.BoundedScoreCAM._masks

    def slower_masks(*args):  # every batch 50 ms slower than the estimate knows
        time.sleep(0.05)
        return masks(*args)

    monkeypatch.setattr(scorecam.BoundedScoreCAM, "_masks", slower_masks)
    monkeypatch.setattr(studio_module, "SLOW_HALF_LIFE", 1.0)
    studio = Studio(small_models, examples_dir=None, slow_seconds=1.0)
    studio.forward_seconds = 1e-6  # the fastest forward pass seen, which every estimate starts from
    photo, fresh = tmp_path / "photo.png", tmp_path / "fresh.png"
    random_image(21, (96, 72)).save(photo)
    random_image(22, (96, 72)).save(fresh)
    with serve(studio, ExportFolder(tmp_path / "exports")) as served:
        result = load.run_scorecam_limits(served.url, photo, fresh, limit=1.0, wait=30.0, retry=0.5)
    print(result.summary())
    assert result.problems == [], result.summary()
    assert [run.layer for run in result.runs] == ["layer1", "layer2", "layer3", "layer4"]
    assert all(run.accepted for run in result.runs), result.summary()  # no estimate refused them
    # 32 and 64 batches of at least 50 ms each: the limit stopped these
    assert [run.outcome for run in result.runs[2:]] == ["stopped", "stopped"], result.summary()
    assert all("after" in run.message and "channels" in run.message for run in result.runs[2:]), result.summary()
