"""Every render has a deadline: past it the render stops and its task fails clearly, and a render that
never reports progress again takes its worker process down, never the worker's lease for ever."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy.exc

from reelq.config import load_settings
from reelq.domain import VideoSpec
from reelq.worker.heartbeat import render_deadline
from tests.conftest import REELQ, Server, reelq_env, wait_terminal
from tests.test_e2e_video import worker_pids


def body(prompt: str, duration: int = 1, resolution: str = "540p") -> dict:
    return {"model": "viduq3-turbo", "prompt": prompt, "duration": duration, "resolution": resolution}


def attempts(server: Server, task_id: str) -> int:
    return server.query("SELECT attempts FROM tasks WHERE id = :id", id=task_id)[0][0]


def temp_files(home: Path) -> list[Path]:
    tmp = home / "videos" / ".tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def test_deadline_grows_with_the_work_and_the_delay() -> None:
    settings = load_settings(
        render_deadline_base=60, render_deadline_factor=10, synthetic_delay=5, fetch_deadline=30
    )
    short = VideoSpec(model="viduq3-pro", prompt="x", duration=5, resolution="720p")
    long = VideoSpec(model="viduq3-pro", prompt="x", duration=16, resolution="1080p")
    assert render_deadline(settings, short) == 60 + 10 * 5 + 5
    assert render_deadline(settings, long) == 60 + 10 * 16 * 2.25 + 5  # 1080p has 2.25 x 720p's pixels
    assert render_deadline(settings, short, image_inputs=2) == 60 + 10 * 5 + 5 + 2 * 30
    # The defaults leave the synthetic engine's largest render (~10 s here) dozens of times its time.
    assert render_deadline(load_settings(), long) >= 300


@pytest.mark.e2e
@pytest.mark.scaled  # the dispatch's worker (Celery's scaled out) fails the task and takes the next
def test_render_past_its_deadline_fails_and_the_worker_runs_the_next_task(make_server) -> None:  # type: ignore[no-untyped-def]
    # The deadline (4 s) is far shorter than a 16 s 1080p render (~10 s) and far longer than a 1 s 540p one.
    server: Server = make_server(workers=1, REELQ_RENDER_DEADLINE_BASE="4", REELQ_RENDER_DEADLINE_FACTOR="0")
    pids = worker_pids(server)
    with server.client() as client:
        runaway = client.post("/v1/vidu/videos", json=body("a long render", 16, "1080p")).json()["id"]
        after = client.post("/v1/vidu/videos", json=body("the next one")).json()["id"]
        failed = wait_terminal(client, runaway, timeout=60)
        assert failed["status"] == "failed"
        assert failed["error"] == "Render exceeded its deadline of 4 s."
        assert wait_terminal(client, after, timeout=60)["status"] == "completed"
    assert attempts(server, runaway) == 1  # not handed back for another try: it would run away again
    assert worker_pids(server) == pids  # stopped through its progress reports: the worker lives on
    assert not temp_files(server.home)


@pytest.mark.e2e
@pytest.mark.scaled  # the hard stop ends a worker process of the dispatch in use, which must replace it
def test_render_stuck_without_progress_ends_its_worker_and_the_next_task_completes(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(
        workers=1,
        REELQ_FAULT_DRILL_HANG_TERM="hang-drill",
        REELQ_RENDER_DEADLINE_BASE="3",
        REELQ_RENDER_DEADLINE_FACTOR="0",
        REELQ_RENDER_DEADLINE_GRACE="1",
        # A lease lapse (the end this test rules out) comes two minutes on, far from the 30 s bound below.
        REELQ_LEASE_SECONDS="120",
    )
    pids = worker_pids(server)
    with server.client() as client:
        stuck = client.post("/v1/vidu/videos", json=body("a hang-drill render")).json()["id"]
        after = client.post("/v1/vidu/videos", json=body("the next one")).json()["id"]
        started = time.monotonic()
        failed = wait_terminal(client, stuck, timeout=60)
        assert failed["status"] == "failed"
        assert failed["error"] == "Render exceeded its deadline of 3 s."
        assert time.monotonic() - started < 30  # deadline + grace + a heartbeat, not a lease lapse later
        assert wait_terminal(client, after, timeout=60)["status"] == "completed"
    assert attempts(server, stuck) == 1
    new_pids = worker_pids(server)
    assert len(new_pids) == 1 and new_pids != pids  # the stuck worker process was replaced
    assert "exited with 87" in server.log()
    assert not temp_files(server.home)


@pytest.mark.e2e
@pytest.mark.scaled  # the watchdog writes the failure through the store the command uses
def test_embedded_cli_is_not_ended_by_a_stuck_render(tmp_path: Path) -> None:
    """`reelq generate` runs the render in its own process: the watchdog fails the task, never exits."""
    env = reelq_env(
        tmp_path,
        REELQ_FAULT_DRILL_HANG_TERM="hang-drill",
        REELQ_RENDER_DEADLINE_BASE="1",
        REELQ_RENDER_DEADLINE_FACTOR="0",
        REELQ_RENDER_DEADLINE_GRACE="1",
    )
    args = [*REELQ, "generate", "a hang-drill render", "--duration", "1", "--resolution", "540p"]
    proc = subprocess.Popen(
        [*args, "-o", str(tmp_path / "out.mp4")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        error = None
        deadline = time.monotonic() + 60
        store = Server(home=tmp_path, port=0, env=env)  # only to read the command's database
        while error is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if "REELQ_DATABASE_URL" in env or (tmp_path / "reelq.db").exists():
                with contextlib.suppress(sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
                    rows = store.query("SELECT error FROM tasks WHERE status = 'failed'")
                    error = rows[0][0] if rows else None
        assert error == "Render exceeded its deadline of 1 s."
        time.sleep(1.5)
        assert proc.poll() is None  # the stuck render holds the command, but it was not killed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_embedded_cli_render_past_its_deadline_fails_clearly(tmp_path: Path) -> None:
    env = reelq_env(tmp_path, REELQ_RENDER_DEADLINE_BASE="2", REELQ_RENDER_DEADLINE_FACTOR="0")
    args = ["generate", "a long render", "--duration", "16", "--resolution", "1080p"]
    result = subprocess.run(
        [*REELQ, *args, "-o", str(tmp_path / "out.mp4")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Render exceeded its deadline of 2 s." in result.stdout + result.stderr
    assert not (tmp_path / "out.mp4").exists()
