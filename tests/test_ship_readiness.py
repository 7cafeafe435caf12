"""A GPU node is ready once its render workers have loaded their models (issue 23 §3): loading a
checkpoint takes minutes, and a balancer that sends creates to a node still loading only queues them.

The supervisor is exercised with a real child process standing in for a render worker (so no torch
import); a real worker process writes its marker; the API's /readyz is checked in process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from reelq.api import create_app
from reelq.api.app import build_services
from reelq.config import load_settings
from reelq.dispatch.supervisor import Supervisor, loaded_marker

pytestmark = [pytest.mark.service]

DEADLINE = 30.0


def _diffusers_models(tmp_path: Path) -> Path:
    t2v = tmp_path / "t2v"
    t2v.mkdir()
    (t2v / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    path = tmp_path / "models.toml"
    path.write_text(f'[models.wan]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{t2v}"\n')
    return path


def test_a_diffusers_node_is_ready_once_its_workers_loaded_their_models(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    settings = load_settings(home=tmp_path / "home", models_file=_diffusers_models(tmp_path))
    supervisor = Supervisor(settings, workers=1)
    assert supervisor.awaits_models
    child = supervisor.children[0]
    child.started = time.monotonic()
    child.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert supervisor.worker_problem() == "render workers are loading their models (0 of 1 loaded)"
        marker = loaded_marker(settings.run_dir, child.process.pid)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()  # what the worker process does once its engines are built
        assert supervisor.worker_problem() is None
    finally:
        child.process.kill()
        child.process.wait()
        supervisor.store.engine.dispose()
    # Synthetic models load nothing: such a node is ready as soon as its workers run.
    (tmp_path / "plain").mkdir()
    plain = Supervisor(load_settings(home=tmp_path / "plain"), workers=1)
    assert not plain.awaits_models
    plain.store.engine.dispose()


@pytest.mark.process
def test_a_worker_process_marks_its_models_loaded(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "reelq.worker.process", "--name", "m"], stdin=subprocess.PIPE
    )
    assert worker.stdin is not None
    worker.stdin.write(settings.to_json().encode())
    worker.stdin.close()
    marker = loaded_marker(settings.run_dir, worker.pid)
    try:
        deadline = time.monotonic() + DEADLINE
        while not marker.exists():
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker never said its models were loaded"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(DEADLINE)


@pytest.mark.anyio
async def test_serves_readyz_waits_for_the_workers(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    services = build_services(settings)
    loading: list[str | None] = ["render workers are loading their models (0 of 2 loaded)"]
    services.workers_problem = lambda: loading[0]
    try:
        app = create_app(settings, services)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://reelq") as http:
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json() == {"status": "unavailable", "reason": loading[0]}
            loading[0] = None
            assert (await http.get("/readyz")).status_code == 200
    finally:
        services.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
