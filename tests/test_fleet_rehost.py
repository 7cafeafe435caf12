"""Re-hosting from an upstream behind a proxy or load balancer: its videos come from its own host at
another port, or from a host the channel lists in `download_hosts`; any other private address is
still refused (engines/relay/rehost.py)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelq.engines.relay.rehost import RehostError, download
from tests.fake_vidu import make_mp4

pytestmark = [pytest.mark.service]


@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("files")
    make_mp4(root / "v.mp4", seconds=0.5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def _get(url: str, dest: Path, **kwargs: object) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        return await download(
            client,
            url,
            dest,
            allow_private=False,
            max_bytes=10_000_000,
            timeout=20,
            read_timeout=10,
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.mark.anyio
async def test_the_upstreams_host_at_another_port_is_trusted(file_server: int, tmp_path: Path) -> None:
    # The API answers on :1 (say, behind a load balancer); the video is served from :file_server.
    size = await _get(f"http://127.0.0.1:{file_server}/v.mp4", tmp_path / "a", upstream_root="http://127.0.0.1:1")
    assert size == (tmp_path / "a").stat().st_size > 0


@pytest.mark.anyio
async def test_download_hosts_are_trusted_and_nothing_else(file_server: int, tmp_path: Path) -> None:
    url = f"http://localhost:{file_server}/v.mp4"
    with pytest.raises(RehostError, match=r"not allowed|private"):
        await _get(url, tmp_path / "b", upstream_root="http://10.1.2.3:8000")
    assert not (tmp_path / "b").exists()
    size = await _get(url, tmp_path / "c", upstream_root="http://10.1.2.3:8000", trusted_hosts=["localhost"])
    assert size > 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
