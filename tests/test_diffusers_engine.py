"""The diffusers engine with tiny random-weight Wan and LTX-Video pipelines, saved with save_pretrained.

End to end: a models file points at the saved pipelines, `reelq serve` runs a CPU worker, and the API
answers a signed link to an MP4 with exactly what the contract promises (24 fps, duration x 24
frames, the SPEC size). In process: the native plan, conforming without stretching, progress per
step, stopping between steps, and a worker that survives a failing pipeline and running out of memory.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

if os.environ.get("CI") != "true":  # under CI the extra is installed: a missing one must fail
    pytest.importorskip("diffusers")

import torch

from reelq.config import ConfigError, load_settings
from reelq.database import NewTask, TaskRow, TaskStore, make_engine, migrate
from reelq.domain import VideoSpec
from reelq.engines import build_engines
from reelq.engines.base import RenderAborted, RenderInputs
from reelq.engines.diffusers.frames import NativeRules, RenderPlan, conform, plan
from reelq.media import probe
from reelq.storage import LocalStorage
from reelq.worker import Outcome, WorkerContext, make_worker_id, run_task
from tests.conftest import Server, free_port, reelq_env, wait_terminal
from tests.test_api import png_data_uri
from tests.tiny_pipelines import save_ltx, save_wan

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    wan, wan_i2v = save_wan(root / "wan"), save_wan(root / "wan-i2v", image_to_video=True)
    ltx, ltx_cond = save_ltx(root / "ltx"), save_ltx(root / "ltx-cond", condition=True)
    tiny = "steps = 4\nmax_pixels = 4096\n"  # a few steps at a toy size: seconds on a CPU
    path = root / "models.toml"
    path.write_text(
        f'[models.wan-pro]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{wan}"\n'
        f'i2v_pipeline = "WanImageToVideoPipeline"\ni2v_weights = "{wan_i2v}"\n{tiny}'
        f'[models.wan-t2v]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{wan}"\n{tiny}'
        f'[models.ltx]\nengine = "diffusers"\npipeline = "LTXPipeline"\nweights = "{ltx}"\n'
        f'i2v_pipeline = "LTXConditionPipeline"\ni2v_weights = "{ltx_cond}"\n{tiny}'
        f'[models.ltx-first-only]\nengine = "diffusers"\npipeline = "LTXPipeline"\nweights = "{ltx}"\n'
        f'i2v_pipeline = "LTXImageToVideoPipeline"\ni2v_weights = "{ltx}"\n{tiny}'
    )
    return path


@pytest.fixture(scope="module")
def server(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    server = Server(home=home, port=free_port(), env=reelq_env(home, REELQ_MODELS=str(models_file)))
    server.new_key()
    server.start(workers=1, timeout=120)
    yield server
    server.stop()


def _render(server: Server, body: dict) -> tuple[dict, bytes]:
    with server.client() as client:
        answer = client.post("/v1/vidu/videos", json=body)
        assert answer.status_code == 200, answer.text
        task = wait_terminal(client, answer.json()["id"], timeout=240)
    assert task["status"] == "completed", task
    video = httpx.get(task["video_url"], timeout=30)  # the signed link, no key
    assert video.status_code == 200
    return task, video.content


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("model", "images", "duration", "ratio", "resolution", "size"),
    [
        ("wan-pro", (), 2, "16:9", "540p", (960, 540)),
        ("wan-pro", ("first", "last"), 1, "9:16", "720p", (720, 1280)),
        ("ltx", (), 1, "1:1", "540p", (540, 540)),
        ("ltx", ("first", "last"), 1, "4:3", "540p", (720, 540)),
        ("ltx-first-only", ("first",), 1, "16:9", "540p", (960, 540)),
    ],
)
def test_a_models_file_serves_real_pipelines_end_to_end(
    server: Server,
    tmp_path: Path,
    model: str,
    images: tuple[str, ...],
    duration: int,
    ratio: str,
    resolution: str,
    size: tuple[int, int],
) -> None:
    body = {"model": model, "prompt": "a red fox in snow", "duration": duration}
    body |= {"aspect_ratio": ratio, "resolution": resolution}
    if "first" in images:
        body["first_image"] = png_data_uri((300, 200), (220, 40, 40))
    if "last" in images:
        body["last_image"] = png_data_uri((200, 300), (40, 40, 220))
    task, video = _render(server, body)
    path = tmp_path / "out.mp4"
    path.write_bytes(video)
    info = probe(path)
    assert (info.width, info.height, info.fps, info.frame_count) == (*size, 24, 24 * duration)
    assert info.duration == pytest.approx(duration)
    assert task["actualDuration"] == duration
    rate = 300 if model.endswith("-pro") else 150
    factor = {"540p": 0.75, "720p": 1.0}[resolution]
    assert task["totalTokens"] == round(rate * duration * factor)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "wan-t2v", "first_image": png_data_uri()}, "first_image"),
        (
            {"model": "ltx-first-only", "first_image": png_data_uri(), "last_image": png_data_uri()},
            "last_image",
        ),
        ({"model": "wan-pro", "duration": 6}, "duration"),
        ({"model": "viduq3-pro"}, "model"),
    ],
)
def test_what_a_pipeline_cannot_do_is_refused_at_create(server: Server, body: dict, param: str) -> None:
    with server.client() as client:
        answer = client.post("/v1/vidu/videos", json={"prompt": "a cat", **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


# --- in process --------------------------------------------------------------------------------------


def test_the_plan_is_the_smallest_native_render_covering_the_request() -> None:
    wan = NativeRules(fps=16, temporal=4, grid=16, max_pixels=1280 * 720)
    ltx = NativeRules(fps=24, temporal=8, grid=32, max_pixels=1280 * 720)
    five_720 = VideoSpec(model="m", prompt="p", duration=5, aspect_ratio="16:9", resolution="720p")
    assert plan(five_720, wan) == RenderPlan(width=1280, height=720, num_frames=81, fps=16)
    assert plan(five_720, ltx) == RenderPlan(width=1280, height=736, num_frames=121, fps=24)
    # Above the model's area: rendered smaller at the same aspect, scaled up by conform.
    wan_480 = NativeRules(fps=16, temporal=4, grid=16, max_pixels=832 * 480)
    assert plan(five_720, wan_480) == RenderPlan(width=848, height=480, num_frames=81, fps=16)
    tall = VideoSpec(model="m", prompt="p", duration=1, aspect_ratio="9:16", resolution="540p")
    assert plan(tall, wan) == RenderPlan(width=544, height=960, num_frames=17, fps=16)


def test_conform_picks_the_nearest_frame_in_time_and_never_stretches() -> None:
    spec = VideoSpec(model="m", prompt="p", duration=1, aspect_ratio="16:9", resolution="540p")
    render = RenderPlan(width=80, height=48, num_frames=17, fps=16)
    # Frame i has brightness i/16; a 8x8-pixel checkerboard shows the scale on each axis.
    yy, xx = np.mgrid[0:48, 0:80]
    board = torch.from_numpy(((yy // 8 + xx // 8) % 2).astype(np.float32))
    video = torch.stack([(0.25 + 0.5 * board + i / 64).expand(3, 48, 80) for i in range(17)])
    frames = list(conform(video, spec, render))
    assert len(frames) == 24 and frames[0].shape == (540, 960, 3) and frames[0].dtype == np.uint8
    # Output frame k (at k/24 s) shows native frame round(k * 16 / 24).
    centre = [float(f[:, :, 0].mean()) for f in frames]
    expected = [np.floor(k * 16 / 24 + 0.5) for k in range(24)]
    assert np.argsort(centre, kind="stable").tolist() == np.argsort(expected, kind="stable").tolist()
    # Scale 12 on both axes (960/80 = 12 >= 540/48 = 11.25): squares of 96 pixels, 18 rows cropped.
    row_runs = _runs(frames[0][300, :, 0] > 127)
    col_runs = _runs(frames[0][:, 300, 0] > 127)
    assert row_runs[1:-1] and set(row_runs[1:-1]) <= {95, 96, 97}
    assert col_runs[1:-1] and set(col_runs[1:-1]) <= {95, 96, 97}
    assert col_runs[0] == pytest.approx(96 - 18, abs=1)  # the top 18 rows of the first square cropped


def _runs(line: np.ndarray) -> list[int]:
    return [len(list(group)) for _, group in itertools.groupby(line.tolist())]


@pytest.fixture(scope="module")
def engines(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    settings = load_settings(models_file=models_file, home=tmp_path_factory.mktemp("inproc"))
    return build_engines(settings)


def test_progress_rises_step_by_step_and_a_render_stops_between_steps(engines: dict, tmp_path: Path) -> None:
    spec = VideoSpec(model="wan-pro", prompt="a boat", duration=1, resolution="540p")
    seen: list[float] = []
    engines["wan-pro"].render(spec, RenderInputs(), tmp_path / "a.mp4", seen.append)
    steps = [p for p in seen if p <= 0.85 + 1e-9]
    assert len(steps) == 4 and steps == sorted(steps) and len(set(steps)) == 4
    assert seen == sorted(seen) and seen[-1] < 1

    calls: list[float] = []

    def stop_at_second_step(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 2:
            raise RenderAborted("cancelled")

    with pytest.raises(RenderAborted):
        engines["wan-pro"].render(spec, RenderInputs(), tmp_path / "b.mp4", stop_at_second_step)
    assert len(calls) == 2 and not (tmp_path / "b.mp4").exists()


@pytest.fixture
def wan_worker(models_file: Path, tmp_path: Path) -> Iterator[tuple[WorkerContext, str]]:
    """A render worker's context over the tiny Wan model, in this process, and the local key's id."""
    settings = load_settings(models_file=models_file, home=tmp_path / "home")
    settings.home_dir.mkdir()
    db = make_engine(settings.sqlalchemy_url)
    migrate(db)
    store = TaskStore(db)
    ctx = WorkerContext(
        settings=settings,
        store=store,
        storage=LocalStorage(settings.videos_dir),
        engines=build_engines(settings),
        worker_id=make_worker_id("t"),
    )
    yield ctx, store.ensure_local_key()
    db.dispose()


def _inject(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch, failures: list[BaseException]) -> None:
    """The Wan pipeline's next calls raise `failures`, one each; later calls render."""
    pipe = ctx.engines["wan-t2v"].models["wan-t2v"].text
    real_call = type(pipe).__call__
    pending = iter(failures)

    def failing_call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        failure = next(pending, None)
        if failure is not None:
            raise failure
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", failing_call)


def _claim_one(ctx: WorkerContext, key_id: str) -> TaskRow:
    new = NewTask(model="wan-t2v", prompt="a lake", duration=1, aspect_ratio="16:9", resolution="540p")
    row, _ = ctx.store.create_task(key_id, new)
    claimed = ctx.store.claim_next(ctx.worker_id, 30)
    assert claimed is not None and claimed.id == row.id
    return claimed


def test_a_worker_survives_a_failing_pipeline_and_running_out_of_memory(
    wan_worker: tuple[WorkerContext, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, key_id = wan_worker
    _inject(
        ctx, monkeypatch, [RuntimeError("injected"), torch.OutOfMemoryError("CUDA out of memory (injected)")]
    )
    outcomes = []
    for _ in range(3):
        claimed = _claim_one(ctx, key_id)
        outcomes.append((run_task(ctx, claimed), ctx.store.get_task(claimed.id)))
    (first, t1), (second, t2), (third, t3) = outcomes
    crashed = f"Render failed: internal engine error (see the server log for task {t1.id})."
    assert first == Outcome.FAILED and t1.error == crashed and t1.attempts == 1
    assert second == Outcome.FAILED and "out of GPU memory" in t2.error and t2.attempts == 1
    assert third == Outcome.COMPLETED and t3.status == "completed"


class _ProcessEnded(Exception):
    """Stands for os._exit in WorkerContext.hard_stop."""


def test_a_cuda_error_ends_the_worker_process_and_a_fresh_one_retries_the_task(
    wan_worker: tuple[WorkerContext, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An illegal memory access poisons the CUDA context: the worker must not render on with it.

    It ends its process without settling the task (a crash, as far as the task knows), so the
    supervisor's recovery requeues it, attempt spent, for a fresh process with a fresh context.
    """
    from reelq.engines.diffusers.engine import breaks_the_gpu_context

    ctx, key_id = wan_worker
    assert breaks_the_gpu_context(
        torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    )
    assert breaks_the_gpu_context(RuntimeError("CUDA error: device-side assert triggered"))
    assert not breaks_the_gpu_context(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))

    illegal = torch.AcceleratorError(
        "CUDA error: an illegal memory access was encountered\nCUDA kernel errors…"
    )
    _inject(ctx, monkeypatch, [illegal, RuntimeError("CUDA error: unspecified launch failure")])
    ends: list[str] = []

    def hard_stop() -> None:
        ends.append(ctx.worker_id)
        raise _ProcessEnded

    ctx.hard_stop = hard_stop
    claimed = _claim_one(ctx, key_id)
    with pytest.raises(_ProcessEnded):
        run_task(ctx, claimed)
    row = ctx.store.get_task(claimed.id)
    assert ends == [ctx.worker_id] and row.status == "processing" and row.worker == ctx.worker_id
    assert not list(ctx.settings.videos_dir.glob(".tmp/*"))  # the attempt's file is gone
    # What the supervisor does when the process is gone: its leases lapse, the sweep requeues.
    assert ctx.store.expire_leases_of(ctx.worker_id) == 1
    assert ctx.store.sweep(ctx.settings.max_attempts, 60).requeued == [claimed.id]
    retry = ctx.store.claim_next(ctx.worker_id, 30)
    assert retry is not None and retry.id == claimed.id and retry.attempts == 2
    # Without a process of its own to end (a loop on a thread), the worker fails the task instead.
    ctx.hard_stop = None
    assert run_task(ctx, retry) == Outcome.FAILED
    failed = ctx.store.get_task(claimed.id)
    assert failed.error == "Render failed: GPU error (CUDA error: unspecified launch failure)"
    # The engine itself is fine on the CPU: the next task renders.
    assert run_task(ctx, _claim_one(ctx, key_id)) == Outcome.COMPLETED


def test_a_model_that_cannot_load_fails_its_tasks_and_spares_the_others(
    models_file: Path, tmp_path: Path
) -> None:
    from reelq.engines.base import RenderError

    broken = tmp_path / "broken"
    broken.mkdir()
    # A directory that looks like a pipeline (create-time checks pass) whose transformer is missing.
    (broken / "model_index.json").write_text(
        '{"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}'
    )
    text = models_file.read_text()
    text += f'[models.broken]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{broken}"\n'
    path = tmp_path / "models.toml"
    path.write_text(text)
    engines = build_engines(load_settings(models_file=path, home=tmp_path / "home"))
    spec = VideoSpec(model="broken", prompt="a cat", duration=1, resolution="540p")
    with pytest.raises(RenderError, match="could not be loaded"):
        engines["broken"].render(spec, RenderInputs(), tmp_path / "x.mp4", lambda _f: None)
    working = VideoSpec(model="wan-t2v", prompt="a cat", duration=1, resolution="540p")
    engines["wan-t2v"].render(working, RenderInputs(), tmp_path / "ok.mp4", lambda _f: None)
    assert probe(tmp_path / "ok.mp4").frame_count == 24


def test_weights_can_come_from_the_local_hugging_face_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # The cache's layout as `hf download` leaves it: refs/main names the snapshot holding the files.
    repo = tmp_path / "hub" / "models--reelq-test--tiny-wan"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    save_wan(repo / "snapshots" / "0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.cached]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "reelq-test/tiny-wan"\n'
        "steps = 2\nmax_pixels = 4096\n"
    )
    settings = load_settings(models_file=path, home=tmp_path / "home")
    spec = VideoSpec(model="cached", prompt="a cat", duration=1, resolution="540p")
    build_engines(settings)["cached"].render(spec, RenderInputs(), tmp_path / "a.mp4", lambda _f: None)
    assert probe(tmp_path / "a.mp4").frame_count == 24
    path.write_text(path.read_text().replace("tiny-wan", "not-cached"))
    with pytest.raises(ConfigError, match="no model in the local Hugging Face cache"):
        load_settings(models_file=path, home=tmp_path / "home")
