"""GET /v1/models (SPEC §7): read by the official `openai` SDK, in process, from the catalog alone."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from reelq.api import create_app
from reelq.api.app import build_services
from reelq.config import load_settings

pytestmark = [pytest.mark.service, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _models_file(tmp_path: Path) -> Path:
    """A synthetic model capped at 4 s, and a text-only diffusers model (its checkpoint's index alone)."""
    t2v = tmp_path / "t2v"
    t2v.mkdir()
    (t2v / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.quick]\nengine = "synthetic"\nmax_duration = 4\n\n'
        f'[models.wan-t2v]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{t2v}"\n'
    )
    return path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str, Path]]:
    models = _models_file(tmp_path)
    settings = load_settings(home=tmp_path / "home", models_file=models)
    services = build_services(settings)
    _, key = services.store.create_key("sdk")
    app = create_app(settings, services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://reelq") as http:
        yield http, key, models
    services.close()


async def test_the_openai_sdk_lists_the_served_models_and_what_each_accepts(
    served: tuple[httpx.AsyncClient, str, Path],
) -> None:
    http, key, models_path = served
    client = openai.AsyncOpenAI(api_key=key, base_url="http://reelq/v1", http_client=http, max_retries=0)
    page = await client.models.list()
    listed = [model async for model in page]
    assert [m.id for m in listed] == ["quick", "wan-t2v"]  # the models file's order: the first is the default
    quick, wan = (m.model_dump() for m in listed)
    created = int(models_path.stat().st_mtime)
    assert quick == {
        "id": "quick",
        "object": "model",
        "created": created,
        "owned_by": "reelq",
        "max_duration": 4,
        "resolutions": ["540p", "720p", "1080p"],
        "aspect_ratios": ["16:9", "9:16", "1:1", "4:3", "3:4"],
        "first_image": True,
        "last_image": True,
        "off_peak": True,
    }
    # Read from the checkpoint without loading it: Wan's 5 s clips, text only.
    assert (wan["max_duration"], wan["first_image"], wan["last_image"]) == (5, False, False)
    # What the list says is what a create is held to.
    refused = await http.post(
        "/v1/vidu/videos",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "quick", "prompt": "a kite", "duration": 5},
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "duration"


async def test_the_model_list_needs_a_key(served: tuple[httpx.AsyncClient, str, Path]) -> None:
    http, _key, _ = served
    for headers in ({}, {"Authorization": "Bearer sk-nope"}):
        answer = await http.get("/v1/models", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert set(answer.json()["error"]) == {"code", "message", "param"}
    client = openai.AsyncOpenAI(api_key="sk-nope", base_url="http://reelq/v1", http_client=http)
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()


async def test_the_model_list_is_documented(served: tuple[httpx.AsyncClient, str, Path]) -> None:
    http, _key, _ = served
    operation = (await http.get("/openapi.json")).json()["paths"]["/v1/models"]["get"]
    assert operation["security"] == [{"bearerAuth": []}]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert "max_duration" in schema["properties"]["data"]["items"]["required"]
