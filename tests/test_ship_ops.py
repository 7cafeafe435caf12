"""What an operator reads off a running API: `reelq_build_info` on /metrics (issue 23 §1)."""

from __future__ import annotations

import platform
from pathlib import Path

import httpx
import pytest

from reelq import __version__
from reelq.api import create_app
from reelq.api.app import build_services
from reelq.config import ConfigError, load_settings

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_metrics_say_which_release_runs(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    services = build_services(settings)
    try:
        app = create_app(settings, services)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://reelq") as http:
            text = (await http.get("/metrics")).text
    finally:
        services.close()
    line = f'reelq_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0'
    assert line in text.splitlines()


def test_s3_links_name_the_endpoint_clients_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a compose network reelq uploads to http://minio:9000, which no client can resolve: links are
    presigned for REELQ_S3_PUBLIC_URL instead (signing is local; nothing is sent anywhere here)."""
    from reelq.storage import build_storage

    for name, value in {
        "AWS_ACCESS_KEY_ID": "reelq",
        "AWS_SECRET_ACCESS_KEY": "reelq-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://minio:9000",
    }.items():
        monkeypatch.setenv(name, value)
    inside = build_storage(load_settings(home=tmp_path, storage_url="s3://videos/reelq"))
    assert inside.presigned_url("k.mp4", 2**31).startswith("http://minio:9000/videos/reelq/k.mp4?")
    public = load_settings(
        home=tmp_path, storage_url="s3://videos/reelq", s3_public_url="https://media.example.com:9000/"
    )
    storage = build_storage(public)
    url = storage.presigned_url("k.mp4", 2**31)
    assert url.startswith("https://media.example.com:9000/videos/reelq/k.mp4?") and "Signature=" in url
    assert storage.link_origin() == "https://media.example.com:9000"
    with pytest.raises(ConfigError, match="REELQ_S3_PUBLIC_URL: must be an http"):
        load_settings(home=tmp_path, s3_public_url="media.example.com")
