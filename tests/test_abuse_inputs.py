"""Hostile input on every surface answers 4xx in the surface's envelope, never a 500 (issue 19).

In process, through the ASGI app uvicorn serves (`create_asgi`: the fast path in front of the routed
app), on a temporary SQLite home. `raise_app_exceptions=False` lets a 500 come back as the answer a
client would see instead of failing the test with the traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from reelq.api import create_asgi
from reelq.config import load_settings

pytestmark = [pytest.mark.service, pytest.mark.anyio]

GENEROUS = {"poll_rate": 1000.0, "poll_burst": 1000.0, "create_rate": 100000.0, "max_active_per_key": 10000}
HUGE = "9" * 5000  # past Python's 4,300-digit limit for int(str)
# Digits that str.isdigit() and int() accept but no client means: Arabic-Indic, mathematical bold,
# fullwidth.
UNICODE_DIGITS = ("\u0661", "\U0001d7d9", "\uff12")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Api:
    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.client = client
        self.key = key

    async def call(self, method: str, url: str, scheme: str = "Bearer", **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"{scheme} {self.key}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return await self.client.request(method, url, headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    app = create_asgi(load_settings(home=tmp_path / "home", **GENEROUS))
    key = app.app.state.services.store.create_key("abuse")[1]  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://reelq.test") as client:
        yield Api(client, key)
    app.app.state.services.close()  # type: ignore[attr-defined]


def openai_error(response: httpx.Response, param: str) -> dict[str, object]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert len(error["message"]) < 500, "the error quotes the client's value back whole"
    return error


# --- item 8: integers over 4,300 digits on the OpenAI surface ---------------------------------------------


async def test_huge_integers_on_the_openai_surface_are_400(api: Api) -> None:
    openai_error(await api.call("GET", f"/v1/videos?limit={HUGE}"), "limit")
    openai_error(await api.call("POST", "/v1/videos", json={"prompt": "x", "seconds": HUGE}), "seconds")
    openai_error(await api.call("POST", "/v1/videos", json={"prompt": "x", "seed": HUGE}), "seed")
    form = {"prompt": "x", "seconds": "2", "seed": HUGE}
    openai_error(await api.call("POST", "/v1/videos", files={"f": (None, "")}, data=form), "seed")


async def test_huge_limit_on_the_vidu_list_is_400(api: Api) -> None:
    response = await api.call("GET", f"/v1/vidu/videos?limit={HUGE}")
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


# --- item 18: ASCII digits only ---------------------------------------------------------------------------


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
async def test_unicode_digits_are_not_numbers(api: Api, digit: str) -> None:
    openai_error(await api.call("POST", "/v1/videos", json={"prompt": "x", "seconds": digit}), "seconds")
    openai_error(await api.call("POST", "/v1/videos", json={"prompt": "x", "seed": digit * 2}), "seed")
    form = {"prompt": "x", "seconds": digit}
    openai_error(await api.call("POST", "/v1/videos", files={"f": (None, "")}, data=form), "seconds")
    openai_error(await api.call("GET", f"/v1/videos?limit={digit}"), "limit")
    listed = await api.call("GET", f"/v1/vidu/videos?limit={digit}")
    assert listed.status_code == 400 and listed.json()["error"]["param"] == "limit"


async def test_ascii_numbers_as_text_still_work(api: Api) -> None:
    form = {"prompt": "x", "seconds": "2", "seed": "7", "size": "960x540"}
    made = await api.call("POST", "/v1/videos", data=form, files={"f": (None, "")})
    assert made.status_code == 200, made.text
    assert made.json()["seconds"] == "2"
    assert (await api.call("GET", "/v1/videos?limit=5")).status_code == 200
    assert (await api.call("GET", "/v1/vidu/videos?limit=5")).status_code == 200


# --- item 9: an image URL whose host is an invalid IDNA (punycode) label -----------------------------------

BAD_IDNA = "http://xn--a.example/cat.png"


async def test_invalid_punycode_host_is_400_on_every_create_surface(api: Api) -> None:
    vidu = await api.call(
        "POST", "/v1/vidu/videos", json={"model": "viduq3-turbo", "prompt": "x", "first_image": BAD_IDNA}
    )
    assert vidu.status_code == 400, vidu.text
    assert vidu.json()["error"]["param"] == "first_image"
    assert "host" in vidu.json()["error"]["message"]

    openai = await api.call("POST", "/v1/videos", json={"prompt": "x", "input_reference": BAD_IDNA})
    openai_error(openai, "input_reference")

    platform = await api.call(
        "POST",
        "/ent/v2/img2video",
        scheme="Token",
        json={"model": "viduq3-turbo", "prompt": "x", "images": [BAD_IDNA]},
    )
    assert platform.status_code == 400, platform.text
    assert platform.json()["param"] == "images"


async def test_invalid_punycode_callback_host_is_400(api: Api) -> None:
    body = {"model": "viduq3-turbo", "prompt": "x", "callback_url": "https://xn--a.example/hook"}
    response = await api.call("POST", "/v1/vidu/videos", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "callback_url"


# --- item 17: IPv6 zone ids in callback_url ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://[::1%25lo]/hook", "http://[::1%25eth0]:8080/hook", "https://[fe80::1%25eth0]/hook"],
)
async def test_callback_to_loopback_or_link_local_with_a_zone_id_is_refused(api: Api, url: str) -> None:
    body = {"model": "viduq3-turbo", "prompt": "x", "callback_url": url}
    response = await api.call("POST", "/v1/vidu/videos", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "callback_url"
    assert "loopback" in error["message"] or "link-local" in error["message"]


# --- item 18: trailing slashes and HEAD / -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/usage/"), ("GET", "/v1/vidu/videos/"), ("POST", "/v1/vidu/videos/"), ("GET", "/healthz/")],
)
async def test_a_trailing_slash_is_404_never_a_redirect_to_the_clients_host(
    api: Api, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "", "Host": "attacker.example"}):
        response = await api.client.request(method, path, headers=headers)
        assert response.status_code == 404, (path, response.status_code, response.headers)
        assert "location" not in response.headers
        assert response.json()["error"]["code"] == "not_found"


async def test_head_of_the_web_page_is_served(api: Api) -> None:
    head = await api.client.head("/")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in head.headers
    assert head.content == b""
    assert (await api.client.head("/static/app.js")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/", "GET, HEAD"),
        ("PUT", "/v1/vidu/videos", "GET, POST"),
        ("PATCH", "/v1/result/video_00000000-0000-0000-0000-000000000000", "GET"),
        ("PUT", "/healthz", "GET"),
    ],
)
async def test_405_names_the_methods_the_path_serves(api: Api, method: str, path: str, allow: str) -> None:
    response = await api.client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


# --- item 16: errors worded from structured fields, never by rewriting the text ----------------------------


@pytest.mark.parametrize("video_id", ["video_abc", "video_id_video", "nope"])
async def test_openai_not_found_quotes_the_id_as_sent(api: Api, video_id: str) -> None:
    for method, path in (("GET", f"/v1/videos/{video_id}"), ("DELETE", f"/v1/videos/{video_id}")):
        response = await api.call(method, path)
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["param"] == "video_id"
        assert f"'{video_id}'" in error["message"], error["message"]
        assert "vvideo" not in error["message"] and "video_video_id" not in error["message"]


async def test_openai_image_errors_name_input_reference(api: Api) -> None:
    body = {"prompt": "x", "input_reference": "data:image/png;base64,!!!!"}
    error = openai_error(await api.call("POST", "/v1/videos", json=body), "input_reference")
    assert error["code"] == "invalid_image"
    assert error["message"].startswith("input_reference ") and "first_image" not in error["message"]


async def test_platform_errors_name_its_images_field(api: Api) -> None:
    body = {"model": "viduq3-turbo", "prompt": "x", "images": ["data:image/png;base64,!!!!"]}
    response = await api.call("POST", "/ent/v2/img2video", scheme="Token", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["param"] == "images" and answer["reason"] == "ImageFormatInvalid"
    assert answer["message"].startswith("images ") and "first_image" not in answer["message"]


async def test_platform_missing_field_is_field_lacking_by_code(api: Api) -> None:
    response = await api.call("POST", "/ent/v2/text2video", scheme="Token", json={"model": "viduq3-turbo"})
    assert response.status_code == 400
    assert response.json()["reason"] == "FieldLacking"
    vidu = await api.call("POST", "/v1/vidu/videos", json={"model": "viduq3-turbo"})
    assert vidu.status_code == 400 and vidu.json()["error"]["code"] == "missing_field"


async def test_the_root_path_alone_redirects_without_the_clients_host(tmp_path: Path) -> None:
    app = create_asgi(load_settings(home=tmp_path / "home", root_path="/gateway"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://reelq.test") as client:
        page = await client.get("/gateway", headers={"Host": "attacker.example"})
        assert page.status_code == 307
        assert page.headers["location"] == "/gateway/"
        for path in ("/gateway/v1/usage/", "/v1/usage/"):
            slashed = await client.get(path, headers={"Host": "attacker.example"})
            assert slashed.status_code == 404 and "location" not in slashed.headers
    app.app.state.services.close()  # type: ignore[attr-defined]
