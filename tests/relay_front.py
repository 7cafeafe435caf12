"""A gateway's relay side in process: the store on a temp SQLite file and a real `RelayWorker` on its
own event loop thread, for tests and benchmarks of relay channels (no API process needed: tasks are
stored through the same `TaskStore.create_task` the API's create uses)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from reelq.config import Settings, load_settings
from reelq.database import NewTask, TaskRow, TaskStore, make_engine, migrate


def write_models(path: Path, model: str, channels: list[dict[str, Any]], **shared: Any) -> Path:
    """A models file with one relayed model and its `[[models.<model>.upstreams]]`."""

    def value(v: Any) -> str:
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = [f"[models.{model}]", 'engine = "relay"']
    lines += [f"{k} = {value(v)}" for k, v in {"poll_initial": 0.2, "poll_max": 1, **shared}.items()]
    for channel in channels:
        lines += ["", f"[[models.{model}.upstreams]]"] + [f"{k} = {value(v)}" for k, v in channel.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class RelayFront:
    """A relay worker (worker/relay.py) running on a thread, over its own store."""

    def __init__(self, home: Path, models: Path, **overrides: Any) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.settings: Settings = load_settings(home=home, models_file=models, **overrides)
        engine = make_engine(self.settings.sqlalchemy_url)
        migrate(engine)
        self.store = TaskStore(engine)
        self.key = self.store.ensure_local_key()
        self.worker: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RelayFront:
        self._thread = threading.Thread(target=self._run, daemon=True, name="relay-front")
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the relay worker did not start")
        deadline = time.monotonic() + 30
        while self._error is None and not self.worker.ready:  # channels built, upstream models checked
            if time.monotonic() > deadline:
                raise RuntimeError("the relay worker did not become ready")
            time.sleep(0.01)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        from reelq.worker.relay import RelayWorker

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            try:
                self.worker = RelayWorker(self.settings, "front")
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise
            self._ready.set()
            await self.worker.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start() / stop()
            self._error = self._error or exc

    def stop(self) -> None:
        if self._loop is not None and self.worker is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self.worker.start_drain)
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "the relay worker did not drain"

    def create(self, model: str, prompt: str = "a relayed lake", **fields: Any) -> TaskRow:
        new = NewTask(
            model=model,
            prompt=prompt,
            duration=fields.pop("duration", 1),
            aspect_ratio=fields.pop("aspect_ratio", "16:9"),
            resolution=fields.pop("resolution", "540p"),
            **fields,
        )
        row, _ = self.store.create_task(self.key, new)
        if self.worker is not None and self._loop is not None:  # the doorbell a create rings
            self._loop.call_soon_threadsafe(self.worker._wake.set)
        return row

    def wait_all(self, ids: list[str], timeout: float = 120.0) -> list[TaskRow]:
        deadline = time.monotonic() + timeout
        while True:
            rows = [self.store.get_task(i) for i in ids]
            if all(r is not None and r.status in ("completed", "failed") for r in rows):
                return rows  # type: ignore[return-value]
            if time.monotonic() > deadline:
                states = [(r.id, r.status) for r in rows if r is not None]
                raise AssertionError(f"tasks not finished within {timeout} s: {states}")
            if self._error is not None:
                raise self._error
            time.sleep(0.05)
