"""Off-peak relayed (SPEC §6): a relayed off-peak task asks the Vidu upstream for its own off-peak mode
(the platform has the same field); a normal one does not. Against the local fake of the platform."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelq.database.tasks import TaskRow
from reelq.engines.relay.options import RelayOptions
from reelq.engines.relay.upstream import RelayRequest
from reelq.engines.relay.vidu_upstream import ViduUpstream
from tests.fake_vidu import FakeVidu, make_mp4

pytestmark = [pytest.mark.anyio, pytest.mark.service]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeVidu]:
    server = FakeVidu("vk", make_mp4(tmp_path / "v.mp4")).start()
    yield server
    server.stop()


def _task(off_peak: bool) -> TaskRow:
    values = {f.name: None for f in dataclasses.fields(TaskRow)}
    values.update(
        id=f"video_{'o' if off_peak else 'n'}", key_id="k", model="viduq3-pro", prompt="a fox",
        duration=5, aspect_ratio="16:9", resolution="720p", has_first_image=False, has_last_image=False,
        status="processing", attempts=1, progress=0, created_at=0.0, video_deleted=False, off_peak=off_peak,
    )
    return TaskRow(**values)


async def test_vidu_upstream_gets_off_peak(fake: FakeVidu, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDU_TEST_KEY", "vk")
    options = RelayOptions(upstream="vidu", base_url=fake.base_url, api_key_env="VIDU_TEST_KEY")
    async with httpx.AsyncClient() as client:
        upstream = ViduUpstream(options, "viduq3-pro", client)
        await upstream.create(RelayRequest(_task(True)))
        await upstream.create(RelayRequest(_task(False)))
    sent = {call["payload"]: call.get("off_peak") for call in fake.create_calls}
    assert sent == {"video_o": True, "video_n": None}
