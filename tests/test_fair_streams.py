"""One API key cannot hold every connection with event streams and long-polls (issue 19, item 5):
over REELQ_MAX_HELD_PER_KEY open at once it gets 429 with Retry-After in the §4 envelope, while other
keys, its own plain reads and `/healthz` keep being served. A real `reelq serve` (no render workers, so
tasks stay queued and every stream stays open)."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest

from tests.conftest import Server

pytestmark = [pytest.mark.process]

GOOD = {"model": "viduq3-turbo", "prompt": "a held lighthouse", "duration": 1, "resolution": "540p"}
CAP = 3


def _task(server: Server, key: str) -> str:
    with server.client(key) as client:
        answer = client.post("/v1/vidu/videos", json=GOOD)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def _limited(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    error = answer.json()["error"]
    assert error["code"] == "too_many_open_streams" and str(CAP) in error["message"]


def test_streams_and_long_polls_are_bounded_per_key(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=0, REELQ_MAX_HELD_PER_KEY=str(CAP), REELQ_POLL_RATE="100")
    greedy, other = server.keys[0], server.new_key("other")
    task, others_task = _task(server, greedy), _task(server, other)
    auth = {"Authorization": f"Bearer {greedy}"}
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=server.base_url, timeout=30, headers=auth))
        # CAP streams, each open: its first bytes (the `retry:` line) have arrived. The iterators are
        # kept: httpx closes a response whose iterator is dropped.
        readers = []
        for _ in range(CAP):
            stream = stack.enter_context(client.stream("GET", f"/v1/result/{task}/events"))
            assert stream.status_code == 200
            readers.append(stream.iter_raw())
            next(readers[-1])
        # (A short read timeout: were it not refused, the answer would be a stream that never ends.)
        _limited(client.get(f"/v1/result/{task}/events", timeout=5))
        _limited(client.get(f"/v1/result/{task}", params={"wait": 30}, timeout=5))
        # Its plain reads, another key's stream and the probes are served as before.
        assert client.get(f"/v1/result/{task}").status_code == 200
        with httpx.Client(base_url=server.base_url, timeout=30) as another:
            theirs = {"Authorization": f"Bearer {other}"}
            with another.stream("GET", f"/v1/result/{others_task}/events", headers=theirs) as stream:
                assert stream.status_code == 200
                assert next(stream.iter_raw()).startswith(b"retry:")
            assert another.get("/healthz").status_code == 200
    # Every stream closed: the key's holds are handed back (as each hang-up is noticed).
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=server.base_url, timeout=30, headers=auth) as client:
        while True:
            answer = client.get(f"/v1/result/{task}", params={"wait": 0.2})
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text


def test_long_polls_count_too_and_a_finished_task_is_never_held(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=0, REELQ_MAX_HELD_PER_KEY=str(CAP), REELQ_POLL_RATE="100")
    key = server.keys[0]
    task, spare, finished = _task(server, key), _task(server, key), _task(server, key)
    with server.client(key) as client:
        assert client.post(f"/v1/vidu/videos/{finished}/cancel").status_code == 200
    answers: list[int] = []

    def long_poll() -> None:
        # Refused while the probe below holds a place for a moment: tried again until held.
        deadline = time.monotonic() + 30
        with server.client(key) as client:
            while True:
                answer = client.get(f"/v1/result/{task}", params={"wait": 60}, timeout=90)
                if answer.status_code != 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            answers.append(answer.status_code)

    polls = [threading.Thread(target=long_poll) for _ in range(CAP)]
    for poll in polls:
        poll.start()
    with server.client(key) as client:
        # Once the CAP long-polls are held, a stream of another task is refused (until then, each
        # stream tried is closed at once, handing its hold back)...
        deadline = time.monotonic() + 60
        while True:
            with client.stream("GET", f"/v1/result/{spare}/events") as stream:
                if stream.status_code == 429:
                    stream.read()
                    _limited(stream)
                    break
            assert time.monotonic() < deadline, "the long-polls were never all held at once"
            time.sleep(0.05)
        _limited(client.get(f"/v1/result/{spare}", params={"wait": 30}))
        # ...but a finished task's "long-poll" answers at once and holds nothing.
        assert client.get(f"/v1/result/{finished}", params={"wait": 30}).status_code == 200
        # The held long-polls answer as soon as their task ends.
        assert client.post(f"/v1/vidu/videos/{task}/cancel").status_code == 200
    for poll in polls:
        poll.join(30)
    assert answers == [200] * CAP
