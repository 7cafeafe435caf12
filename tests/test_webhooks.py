"""Webhooks end to end: a real `reelq serve`, a real HTTP receiver, signatures checked with the
`standardwebhooks` reference library (what a receiver uses), and the SDK's helper."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from reelq.client import AsyncClient, Client, Delivery, verify_webhook
from reelq.client import WebhookVerificationError as SdkVerificationError
from reelq.fetch import address_problem
from tests.conftest import Server, run_cli, wait_terminal
from tests.webhook_receiver import Received, Receiver

# Every test here reads or writes tasks, videos, limits or deliveries: the backend's behaviour.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]

GOOD = {"model": "viduq3-turbo", "prompt": "a lighthouse at dusk", "duration": 1, "resolution": "540p"}
# Quick retries so that a test sees several attempts within a second or two.
FAST_RETRIES = {"REELQ_WEBHOOK_BACKOFF_BASE": "0.1", "REELQ_WEBHOOK_BACKOFF_MAX": "0.4"}
ALLOW_PRIVATE = {"REELQ_ALLOW_PRIVATE_URLS": "true", **FAST_RETRIES}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def secret_of(server: Server, key: str) -> str:
    return run_cli(server.home, "keys", "secret", key, env=server.env).stdout.strip()


def create(server: Server, key: str, callback_url: str, **fields: object) -> dict:
    with server.client(key) as client:
        answer = client.post("/v1/vidu/videos", json={**GOOD, "callback_url": callback_url, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()


def for_task(received: list[Received], task_id: str) -> list[Received]:
    return [r for r in received if r.json["id"] == task_id]


def delivered_events(receiver: Receiver, task_id: str, count: int, timeout: float = 60) -> list[Received]:
    """Wait for `count` delivered (2xx) requests of the task; returns them in arrival order."""

    def enough(got: list[Received]) -> bool:
        return len([r for r in for_task(got, task_id) if 200 <= r.answered < 300]) >= count

    receiver.wait_for(enough, timeout)
    return [r for r in for_task(receiver.delivered(), task_id)]


def deliveries(server: Server, key: str, task_id: str) -> list[dict]:
    with server.client(key) as client:
        answer = client.get(f"/v1/vidu/videos/{task_id}/deliveries")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["task_id"] == task_id
    return body["data"]


def recorded_attempts(server: Server, key: str, task_id: str, count: int, timeout: float = 30) -> list[dict]:
    """The task's delivery record once it holds `count` attempts. The sender records an attempt after
    the receiver has answered it, so a request seen by the receiver may not be listed yet."""
    deadline = time.monotonic() + timeout
    while len(attempts := deliveries(server, key, task_id)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return attempts


def test_processing_then_completed_signed_with_the_keys_secret(
    make_app_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = make_app_server(**ALLOW_PRIVATE)
    key = server.keys[0]
    secret = secret_of(server, key)
    assert secret.startswith("whsec_")
    task = create(server, key, receiver.url())
    processing, completed = delivered_events(receiver, task["id"], 2)

    webhook = Webhook(secret)
    bodies = [webhook.verify(r.body, r.headers) for r in (processing, completed)]
    assert [b["status"] for b in bodies] == ["processing", "completed"]
    assert processing.headers["webhook-id"] != completed.headers["webhook-id"]
    assert processing.headers["webhook-signature"].startswith("v1,")
    assert processing.headers["content-type"] == "application/json"
    # The payload is the task object exactly as GET /v1/result answers it.
    with server.client(key) as client:
        assert bodies[1] == client.get(f"/v1/result/{task['id']}").json()
    assert bodies[1]["video_url"] and bodies[1]["totalTokens"] > 0
    assert bodies[0]["video_url"] is None and bodies[0]["error"] is None
    # The SDK's helper verifies the same, and refuses a tampered body.
    assert verify_webhook(completed.body, completed.headers, secret) == bodies[1]
    with pytest.raises(SdkVerificationError):
        verify_webhook(completed.body.replace(b"completed", b"COMPLETED"), completed.headers, secret)

    attempts = recorded_attempts(server, key, task["id"], 2)
    assert [(a["event"], a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        ("video.processing", 1, 204, "delivered"),
        ("video.completed", 1, 204, "delivered"),
    ]
    assert [a["webhook_id"] for a in attempts] == [r.headers["webhook-id"] for r in (processing, completed)]
    # The SDK reads the same record; another key's task is 404, like any unknown id.
    with Client(server.base_url, key) as client:
        assert [d.webhook_id for d in client.deliveries(task["id"])] == [a["webhook_id"] for a in attempts]

    async def read_async() -> list[Delivery]:
        async with AsyncClient(server.base_url, key) as client:
            return await client.deliveries(task["id"])

    read = asyncio.run(read_async())
    assert [(d.event, d.attempt, d.status_code, d.ok) for d in read] == [
        ("video.processing", 1, 204, True),
        ("video.completed", 1, 204, True),
    ]
    other = server.new_key("other")
    with server.client(other) as client:
        answer = client.get(f"/v1/vidu/videos/{task['id']}/deliveries")
    assert answer.status_code == 404
    assert answer.json()["error"]["param"] == "id"
    # No secret in any answer or in the server's log.
    assert secret not in server.log() and secret[6:] not in server.log()


def test_retried_with_the_same_webhook_id_after_two_failures(
    make_app_server: Callable[..., Server], receiver: Receiver
) -> None:
    receiver.answer = lambda n: 500 if n < 2 else 200  # the first two requests fail
    server = make_app_server(**ALLOW_PRIVATE)
    key = server.keys[0]
    task = create(server, key, receiver.url())
    delivered_events(receiver, task["id"], 2)
    got = for_task(receiver.received, task["id"])
    # processing: 500, 500, 200 (same id, same body, fresh timestamps); then completed, only after it.
    assert [r.answered for r in got] == [500, 500, 200, 200]
    assert [r.json["status"] for r in got] == ["processing"] * 3 + ["completed"]
    assert len({r.headers["webhook-id"] for r in got[:3]}) == 1
    assert got[3].headers["webhook-id"] != got[0].headers["webhook-id"]
    assert len({r.body for r in got[:3]}) == 1
    webhook = Webhook(secret_of(server, key))
    for r in got:
        webhook.verify(r.body, r.headers)
    attempts = recorded_attempts(server, key, task["id"], 4)
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "retrying"),
        (2, 500, "retrying"),
        (3, 200, "delivered"),
        (1, 200, "delivered"),
    ]
    assert all(a["error"] is None for a in attempts)


def test_a_failed_task_gets_its_terminal_event(
    make_app_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = make_app_server(**ALLOW_PRIVATE)
    key = server.keys[0]
    task = create(server, key, receiver.url(), prompt="a bomb making tutorial")
    events = delivered_events(receiver, task["id"], 2)
    bodies = [Webhook(secret_of(server, key)).verify(r.body, r.headers) for r in events]
    assert [b["status"] for b in bodies] == ["processing", "failed"]
    assert bodies[1]["error"].startswith("Content policy violation:")
    assert bodies[1]["video_url"] is None and bodies[1]["totalTokens"] is None


def test_each_key_has_its_own_secret_and_rotation_replaces_it(
    make_app_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = make_app_server(**ALLOW_PRIVATE)
    # `keys create` shows the secret before the key, which stays alone on the last line.
    lines = run_cli(server.home, "keys", "create", "--name", "second", env=server.env).stdout.splitlines()
    assert lines[0].startswith("id: key_")
    assert lines[1].startswith("webhook secret: whsec_")
    second, second_secret = lines[-1], lines[1].split(": ", 1)[1]
    assert second.startswith("rq_")
    first = server.keys[0]
    first_secret = secret_of(server, first)
    assert first_secret != second_secret
    assert secret_of(server, second) == second_secret  # by the key itself, or by its id:
    assert secret_of(server, lines[0].split(": ", 1)[1]) == second_secret

    a = create(server, first, receiver.url())
    b = create(server, second, receiver.url())
    (got_a, *_), (got_b, *_) = delivered_events(receiver, a["id"], 2), delivered_events(receiver, b["id"], 2)
    Webhook(first_secret).verify(got_a.body, got_a.headers)
    Webhook(second_secret).verify(got_b.body, got_b.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(second_secret).verify(got_a.body, got_a.headers)

    rotated = run_cli(server.home, "keys", "rotate-secret", first, env=server.env).stdout.strip()
    assert rotated.startswith("whsec_") and rotated != first_secret
    assert secret_of(server, first) == rotated
    c = create(server, first, receiver.url())
    got_c = delivered_events(receiver, c["id"], 2)[-1]
    Webhook(rotated).verify(got_c.body, got_c.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(first_secret).verify(got_c.body, got_c.headers)
    assert run_cli(server.home, "keys", "secret", "key_nope", env=server.env, check=False).returncode == 1


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "not a url",
        "https://example.com/" + "a" * 2100,
        "http://user:pass@example.com/hook",
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest",
    ],
)
def test_a_bad_callback_url_is_refused_at_create(make_app_server: Callable[..., Server], url: str) -> None:
    server = make_app_server(**FAST_RETRIES)  # private addresses not allowed
    with server.client() as client:
        answer = client.post("/v1/vidu/videos", json={**GOOD, "callback_url": url})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "callback_url" and error["code"] == "invalid_request"
        assert error["message"].startswith("Invalid value for 'callback_url'")
        assert client.get("/v1/usage").json()["videos"] == 0


@pytest.fixture
def any_address_receiver() -> Iterator[Receiver]:
    receiver = Receiver(host="0.0.0.0").start()  # reachable under the machine's own name too
    yield receiver
    receiver.stop()


def test_a_private_receiver_is_refused_at_delivery_unless_allowed(
    make_app_server: Callable[..., Server], any_address_receiver: Receiver
) -> None:
    """A name is accepted at create (DNS may change) and judged after resolution at each attempt."""
    receiver = any_address_receiver
    name = socket.gethostname()
    resolved = {info[4][0] for info in socket.getaddrinfo(name, receiver.port, type=socket.SOCK_STREAM)}
    if not any(address_problem(ipaddress.ip_address(a)) for a in resolved):
        pytest.skip(f"this machine's name {name} resolves to public addresses {resolved}")
    refused = make_app_server(**FAST_RETRIES, REELQ_WEBHOOK_RETRY_FOR="1")
    key = refused.keys[0]
    task = create(refused, key, receiver.url(host=name))
    with refused.client(key) as client:
        assert wait_terminal(client, task["id"])["status"] == "completed"
    deadline = time.monotonic() + 30
    while True:  # both events (processing, completed) retried for their second, then given up
        attempts = deliveries(refused, key, task["id"])
        if sum(a["outcome"] == "given_up" for a in attempts) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert attempts and all(a["status_code"] is None for a in attempts)
    assert all("is not allowed" in a["error"] for a in attempts), attempts
    given_up = [a["event"] for a in attempts if a["outcome"] == "given_up"]
    assert given_up == ["video.processing", "video.completed"]
    assert receiver.received == []

    allowed = make_app_server(**ALLOW_PRIVATE)
    task = create(allowed, allowed.keys[0], receiver.url(host=name))
    events = delivered_events(receiver, task["id"], 2)
    assert [r.json["status"] for r in events] == ["processing", "completed"]


def test_a_pending_delivery_survives_a_kill_and_restart(
    make_server: Callable[..., Server], receiver: Receiver
) -> None:
    receiver.answer = lambda _n: 503  # down until told otherwise
    # Retries a second or two apart: the kill below falls between attempts, not during one.
    server = make_server(
        **ALLOW_PRIVATE | {"REELQ_WEBHOOK_BACKOFF_BASE": "1", "REELQ_WEBHOOK_BACKOFF_MAX": "2"}
    )
    key = server.keys[0]
    task = create(server, key, receiver.url())
    deadline = time.monotonic() + 30
    # Tried, and retried, and both recorded: the event is pending (between attempts) when the server dies.
    while len(deliveries(server, key, task["id"])) < 2:
        assert time.monotonic() < deadline, "no second attempt recorded"
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    first_id = receiver.received[0].headers["webhook-id"]
    tried = len(receiver.received)
    receiver.answer = lambda _n: 200
    server.start()
    events = delivered_events(receiver, task["id"], 2)
    assert [r.json["status"] for r in events] == ["processing", "completed"]
    assert events[0].headers["webhook-id"] == first_id
    assert {r.headers["webhook-id"] for r in receiver.received[:tried]} == {first_id}
    attempts = deliveries(server, key, task["id"])
    processing = [a for a in attempts if a["event"] == "video.processing"]
    assert processing[-1]["outcome"] == "delivered" and processing[-1]["attempt"] >= 3
    assert [a["attempt"] for a in processing] == list(range(1, len(processing) + 1))


def test_tasks_without_callback_send_nothing_and_list_no_deliveries(
    make_app_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = make_app_server(**ALLOW_PRIVATE)
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=GOOD).json()
        wait_terminal(client, task["id"])
    assert deliveries(server, server.keys[0], task["id"]) == []
    with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
        assert anonymous.get(f"/v1/vidu/videos/{task['id']}/deliveries").status_code == 401
    assert receiver.received == []
