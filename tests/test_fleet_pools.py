"""Worker pools (SPEC §7): a worker loads and claims only its pools' models.

In process: a models file with a tiny random-weight diffusers model in pool `gpu` and a synthetic
model in pool `cpu`; render worker loops (worker/process.py `worker_loop`) on threads share one
SQLite file. A task of a pool with no worker stays queued, and completes once that pool's worker
starts; the `cpu` worker never loads the diffusers model.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reelq.config import ConfigError, load_settings
from reelq.database import NewTask, TaskStore, make_engine, migrate
from reelq.dispatch.broker import pool_queue, worker_queues
from reelq.dispatch.gpus import default_worker_count
from reelq.engines import build_engines, rendered_models, unrendered_models

pytestmark = [pytest.mark.service, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]

if os.environ.get("CI") != "true":
    pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_pipelines import save_wan

    root = tmp_path_factory.mktemp("weights")
    wan = save_wan(root / "wan")
    path = root / "models.toml"
    path.write_text(
        f'[models.wan-big]\nengine = "diffusers"\npool = "gpu"\npipeline = "WanPipeline"\n'
        f'weights = "{wan}"\nsteps = 2\nmax_pixels = 4096\n'
        '[models.small]\nengine = "synthetic"\npool = "cpu"\n'
    )
    return path


def _settings(home: Path, models: Path, pools: list[str] | None):  # type: ignore[no-untyped-def]
    return load_settings(home=home, models_file=models, pools=pools, lease_seconds=30)


def _new(model: str) -> NewTask:
    return NewTask(model=model, prompt="a lake", duration=1, aspect_ratio="16:9", resolution="540p")


def _wait(store: TaskStore, task_id: str, status: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = store.get_task(task_id)
        assert row is not None
        if row.status == status:
            return
        assert row.status in ("queued", "processing"), (row.status, row.error)
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not {status} within {timeout} s")


class _Loop:
    """A render worker loop on a thread (what `reelq worker --pool` runs in each process)."""

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        from reelq.worker.process import worker_loop

        self.stop = threading.Event()
        self.thread = threading.Thread(target=worker_loop, args=(settings, "t", self.stop), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture
def loops() -> Iterator[list[_Loop]]:
    started: list[_Loop] = []
    yield started
    for loop in started:
        loop.close()


def test_a_pool_without_a_worker_waits_and_runs_when_one_starts(
    tmp_path: Path, models_file: Path, loops: list[_Loop]
) -> None:
    cpu = _settings(tmp_path, models_file, ["cpu"])
    gpu = _settings(tmp_path, models_file, ["gpu"])
    engine = make_engine(cpu.sqlalchemy_url)
    migrate(engine)
    store = TaskStore(engine)
    key = store.ensure_local_key()
    big, _ = store.create_task(key, _new("wan-big"))  # older: an unpooled worker would take it first
    small, _ = store.create_task(key, _new("small"))

    loops.append(_Loop(cpu))
    _wait(store, small.id, "completed")
    # The cpu worker took the younger task and left the older one of the gpu pool alone.
    assert store.get_task(big.id).status == "queued"  # type: ignore[union-attr]

    loops.append(_Loop(gpu))
    _wait(store, big.id, "completed")
    assert store.get_task(big.id).worker.endswith(":t")  # type: ignore[union-attr]
    engine.dispose()


def test_a_worker_loads_only_its_pools_models(tmp_path: Path, models_file: Path) -> None:
    cpu = _settings(tmp_path, models_file, ["cpu"])
    assert rendered_models(cpu) == ["small"]
    assert unrendered_models(cpu) == ["wan-big"]
    # The diffusers engine is never built in the cpu pool's worker: its weights stay on the gpu pool's cards.
    assert sorted(build_engines(cpu)) == ["small"]
    gpu = _settings(tmp_path, models_file, ["gpu"])
    engines = build_engines(gpu)
    assert sorted(engines) == ["wan-big"]
    assert sorted(engines["wan-big"].models) == ["wan-big"]  # type: ignore[attr-defined]
    everything = _settings(tmp_path, models_file, None)
    assert sorted(build_engines(everything)) == ["small", "wan-big"]


def test_pools_in_settings_and_queues(tmp_path: Path, models_file: Path) -> None:
    with pytest.raises(ConfigError, match="no model is in pool 'tpu'"):
        _settings(tmp_path, models_file, ["tpu"])
    both = load_settings(home=tmp_path, models_file=models_file, pools="gpu, cpu", queue="q")
    assert both.pools == ["gpu", "cpu"]
    assert worker_queues(both) == ["q.gpu", "q.cpu"]
    assert pool_queue(both, "default") == "q"
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nengine = "synthetic"\npool = "has space"\n')
    with pytest.raises(ConfigError, match=r"\[models.x\]: pool"):
        load_settings(home=tmp_path, models_file=bad)


def test_a_relay_only_gateway_starts_no_render_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "relay.toml"
    models.write_text(
        '[models.up]\nengine = "relay"\nupstream = "reelq"\nbase_url = "http://127.0.0.1:9"\n'
        'api_key_env = "FLEET_TEST_KEY"\n'
    )
    monkeypatch.setenv("FLEET_TEST_KEY", "k")
    settings = load_settings(home=tmp_path, models_file=models)
    assert default_worker_count(settings, [], fallback=1) == 0
    assert default_worker_count(load_settings(home=tmp_path, models_file=models, workers=3), []) == 3


def test_metrics_show_the_queue_depth_per_pool(tmp_path: Path, models_file: Path) -> None:
    from reelq.api.app import build_services
    from reelq.metrics import render_metrics

    settings = _settings(tmp_path, models_file, None)
    services = build_services(settings)
    try:
        key = services.store.ensure_local_key()
        for model in ("wan-big", "wan-big", "small"):
            services.store.create_task(key, _new(model))
        text = render_metrics(services.metrics).decode()
    finally:
        services.close()
    assert 'reelq_queue_depth_by_pool{pool="gpu"} 2.0' in text
    assert 'reelq_queue_depth_by_pool{pool="cpu"} 1.0' in text
    assert "reelq_queue_depth 3.0" in text


def test_the_poll_hint_counts_a_tasks_place_in_its_pools_queue(tmp_path: Path, models_file: Path) -> None:
    from reelq.api.app import build_services
    from reelq.database.views import TaskView
    from reelq.service.pollhint import MAX_HINT_MS, PollHints

    services = build_services(_settings(tmp_path, models_file, None))
    try:
        key = services.store.ensure_local_key()
        for _ in range(6):  # the gpu pool's backlog
            services.store.create_task(key, _new("wan-big"))
        small, _ = services.store.create_task(key, _new("small"))
        stats = services.store.queue_stats(1000, 10)
        mine = TaskView(
            small.id, key, "small", "queued", None, 0, small.created_at, None, False, None, None, None, None
        )
        # First in the cpu pool's queue: one typical render (10 s), halved; not behind the gpu pool's six.
        assert services.tasks.poll_hints.hint_ms(mine) == 5000
        # Counted in one queue, it would wait behind all six: (6 + 1) x 10 s, halved, over the ceiling.
        assert PollHints(lambda: stats, 1.0, 10.0).hint_ms(mine) == MAX_HINT_MS
    finally:
        services.close()
