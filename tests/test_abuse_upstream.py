"""The relay against a hostile upstream (issue 19, items 3, 4 and 13): every upstream request is
bounded in total time and answer size (engines/relay/bounded.py), `max_wait` bounds a task whatever
the upstream does, and a malformed redirect on the re-host path fails the task with a clear reason.

The upstream is tests/hostile_upstream.py (a raw HTTP server on loopback: a third party, so a fake);
the relay worker is the real one, in process, over a real SQLite file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelq.api.app import build_services
from reelq.config import Settings, load_settings
from reelq.database import NewTask, TaskStore
from reelq.engines.relay.options import parse_options
from reelq.engines.relay.reelq_upstream import ReelqUpstream
from reelq.engines.relay.rehost import RehostError, download
from reelq.engines.relay.upstream import UpstreamUnavailable
from reelq.worker.relay import RelayWorker
from tests.hostile_upstream import HostileUpstream

pytestmark = [pytest.mark.service, pytest.mark.anyio]

KEY_ENV = "ABUSE_RELAY_UPSTREAM_KEY"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REELQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(KEY_ENV, "upstream-key")


@pytest.fixture
def hostile() -> Iterator[list[HostileUpstream]]:
    started: list[HostileUpstream] = []
    yield started
    for server in started:
        server.stop()


def start(started: list[HostileUpstream], mode: str, **knobs: object) -> HostileUpstream:
    server = HostileUpstream(mode, **knobs).start()  # type: ignore[arg-type]
    started.append(server)
    return server


def reelq_upstream(base_url: str, client: httpx.AsyncClient, **options: object) -> ReelqUpstream:
    parsed = parse_options({"upstream": "reelq", "base_url": base_url, "api_key_env": KEY_ENV, **options})
    return ReelqUpstream(parsed, "viduq3-pro", client)


async def test_a_huge_status_answer_is_refused_past_one_mib(
    upstream_key: None, hostile: list[HostileUpstream]
) -> None:
    server = start(hostile, "huge", huge_bytes=64 * 1024 * 1024)
    async with httpx.AsyncClient() as client:
        upstream = reelq_upstream(server.base_url, client)
        with pytest.raises(UpstreamUnavailable, match="larger than 1024 KiB"):
            await asyncio.wait_for(upstream.query("up-1"), 60)
    # Read no further than the cap: the server could not write much past it before the hang-up.
    assert server.sent < 32 * 1024 * 1024


async def test_a_trickling_answer_ends_at_the_request_timeout(
    upstream_key: None, hostile: list[HostileUpstream]
) -> None:
    # A byte every 0.1 s: httpx's per-read timeout (1 s) never trips; the total one must.
    server = start(hostile, "trickle", trickle_every=0.1)
    async with httpx.AsyncClient() as client:
        upstream = reelq_upstream(server.base_url, client, request_timeout=1)
        with pytest.raises(UpstreamUnavailable, match="did not answer a status read"):
            await asyncio.wait_for(upstream.query("up-1"), 20)


# Each answered "internal error" with a traceback (IDNA, javascript:) or "RemoteProtocolError." before.
@pytest.mark.parametrize(
    "location", ["http://[::1", "http://host:abc/x", "//[zz]/x", "http://xn--/x", "javascript:alert(1)"]
)
async def test_a_malformed_redirect_is_a_clear_rehost_error(
    hostile: list[HostileUpstream], tmp_path: Path, location: str
) -> None:
    server = start(hostile, "bad-redirect")
    server.bad_location = location
    dest = tmp_path / "video.mp4"
    async with httpx.AsyncClient() as client:
        with pytest.raises(RehostError, match="it redirected to a malformed URL") as caught:
            await download(
                client,
                f"{server.base_url}/video.mp4",
                dest,
                upstream_root=server.base_url,
                allow_private=True,
                max_bytes=1 << 20,
                timeout=10,
                read_timeout=5,
            )
    assert caught.value.final  # told by its flag, not its words: the relay does not retry it
    assert not dest.exists()


# ---- the relay worker, end to end ------------------------------------------------------------------


@pytest.fixture
def short_home() -> Iterator[Path]:
    # The relay worker's poke socket lives under the home: keep the path short (AF_UNIX's 108 bytes).
    home = Path(tempfile.mkdtemp(prefix="rq-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def relay_settings(home: Path, base_url: str, **options: object) -> Settings:
    lines = [
        "[models.viduq3-pro]",
        'engine = "relay"',
        'upstream = "reelq"',
        f'base_url = "{base_url}"',
        f'api_key_env = "{KEY_ENV}"',
        *(f"{name} = {value}" for name, value in options.items()),
        "",
        "[models.viduq3-turbo]",
        'engine = "synthetic"',
    ]
    (home / "models.toml").write_text("\n".join(lines) + "\n")
    return load_settings(home=home, models_file=home / "models.toml", allow_private_urls=True)


async def relay_one(settings: Settings, within: float = 60) -> str:
    """Queue one relayed task, run the real relay worker until it settles; the task's error."""
    services = build_services(settings)  # migrates the database
    store: TaskStore = services.store
    key_id = store.key_id_for(store.create_key("k")[1])
    assert key_id is not None
    new = NewTask(model="viduq3-pro", prompt="relayed", duration=1, aspect_ratio="16:9", resolution="540p")
    row, _ = store.create_task(key_id, new)
    worker = RelayWorker(settings)
    running = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            current = await asyncio.to_thread(store.get_task, row.id)
            assert current is not None
            if current.status in ("completed", "failed"):
                assert current.status == "failed"
                return current.error or ""
            await asyncio.sleep(0.1)
        raise AssertionError(f"the task was not settled within {within} s")
    finally:
        worker.start_drain()
        await asyncio.wait_for(running, 30)
        services.close()


async def test_max_wait_bounds_a_task_whose_upstream_trickles(
    upstream_key: None, hostile: list[HostileUpstream], short_home: Path
) -> None:
    # request_timeout is long on purpose: only max_wait can end this task in time.
    server = start(hostile, "trickle", trickle_every=0.1)
    settings = relay_settings(
        short_home, server.base_url, max_wait=2, request_timeout=600, poll_initial=0.1, poll_max=0.5
    )
    error = await relay_one(settings, within=30)
    assert error == "Upstream did not finish within 2 s."


async def test_a_malformed_redirect_fails_the_task_with_a_clear_reason(
    upstream_key: None, hostile: list[HostileUpstream], short_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start(hostile, "bad-redirect")
    settings = relay_settings(short_home, server.base_url, poll_initial=0.1, poll_max=0.5)
    caplog.set_level(logging.INFO, logger="reelq.relay")
    error = await relay_one(settings, within=60)
    assert error == "Could not download the upstream video: it redirected to a malformed URL."
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"
