"""Cancel, delete and list at the store, on SQLite and PostgreSQL; the cursor and the polling hint alone."""

from __future__ import annotations

import base64
import time

import pytest

from reelq.database import TaskStore
from reelq.database.views import TaskView
from reelq.domain import CANCELLED_ERROR, Status
from reelq.service.errors import InvalidRequest
from reelq.service.events import TERMINAL_EVENT_ID, event_id, parse_last_event_id
from reelq.service.listing import decode_cursor, encode_cursor, parse_list_query
from reelq.service.pollhint import MAX_HINT_MS, PollHints
from tests.test_store import new, store  # noqa: F401 - `store` is the two-database fixture


def test_cancel_beats_a_racing_complete_and_nothing_is_charged(store: TaskStore) -> None:  # noqa: F811
    key, _ = store.create_key("k")
    task, _ = store.create_task(key.id, new())
    claimed = store.claim_next("w1", 30)
    assert claimed is not None and claimed.id == task.id
    result = store.cancel(task.id, key.id)
    assert result.cancelled and result.row is not None
    assert (result.row.status, result.row.error, result.row.total_tokens) == (
        Status.FAILED,
        CANCELLED_ERROR,
        None,
    )
    # The worker does not know yet: its renewal and its finish both match nothing now.
    assert not store.renew(task.id, "w1", 30, 50)
    assert not store.complete(task.id, "w1", "videos/x.mp4", 5.0, 1500)
    assert store.usage(key.id) == []
    row = store.get_task(task.id)
    assert row is not None and (row.status, row.error, row.video_key) == (
        Status.FAILED,
        CANCELLED_ERROR,
        None,
    )


def test_cancel_is_for_live_tasks_of_the_owner_only(store: TaskStore) -> None:  # noqa: F811
    key, _ = store.create_key("k")
    other, _ = store.create_key("other")
    queued, _ = store.create_task(key.id, new("queued"))
    assert store.cancel(queued.id, other.id).row is None  # another key's task: not found
    assert store.cancel(queued.id, key.id).cancelled
    again = store.cancel(queued.id, key.id)  # already cancelled: found, not changed
    assert not again.cancelled and again.row is not None and again.row.error == CANCELLED_ERROR
    done, _ = store.create_task(key.id, new("done"))
    assert store.claim_next("w", 30) is not None
    assert store.complete(done.id, "w", "videos/d.mp4", 5.0, 1500)
    finished = store.cancel(done.id, key.id)
    assert not finished.cancelled and finished.row is not None and finished.row.status == Status.COMPLETED


def test_delete_removes_the_row_and_stops_its_worker(store: TaskStore) -> None:  # noqa: F811
    key, _ = store.create_key("k")
    other, _ = store.create_key("other")
    task, _ = store.create_task(key.id, new(first_image="data:image/png;base64,AAAA"))
    assert store.claim_next("w1", 30) is not None
    assert store.delete_task(task.id, other.id) is None
    deleted = store.delete_task(task.id, key.id)
    assert deleted is not None and deleted.id == task.id
    assert store.get_task(task.id) is None and store.get_inputs(task.id) == {}
    assert not store.renew(task.id, "w1", 30, 10)
    assert store.delete_task(task.id, key.id) is None


def test_list_pages_newest_first_by_key_and_status(store: TaskStore) -> None:  # noqa: F811
    key, _ = store.create_key("k")
    other, _ = store.create_key("other")
    made = [store.create_task(key.id, new(f"t{i}"))[0] for i in range(7)]
    store.create_task(other.id, new("theirs"))
    pages, before = [], None
    while True:
        page = store.list_tasks(key.id, 3, before)
        pages.append(page)
        if len(page) < 3:
            break
        before = (page[-1].created_at, page[-1].id)
    listed = [row.id for page in pages for row in page]
    expected = [row.id for row in sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)]
    assert listed == expected
    claimed = store.claim_next("w", 30)
    assert claimed is not None
    if claimed.key_id != key.id:  # fair share (SPEC §6): keys level in virtual time go in key-id order
        claimed = store.claim_next("w", 30)
        assert claimed is not None
    assert claimed.key_id == key.id
    store.cancel(made[-1].id, key.id)
    assert [r.id for r in store.list_tasks(key.id, 100, status="processing")] == [claimed.id]
    assert [r.id for r in store.list_tasks(key.id, 100, status="failed")] == [made[-1].id]
    assert len(store.list_tasks(key.id, 100, status="queued")) == 5
    # A requeued task (started before) reads processing, so it is listed as processing.
    store.release(claimed.id, "w")
    with (
        store.engine.begin() as conn
    ):  # release refunds, but keeps started_at: still "processing" on the wire
        assert conn.exec_driver_sql(f"SELECT started_at FROM tasks WHERE id = '{claimed.id}'").scalar()
    assert [r.id for r in store.list_tasks(key.id, 100, status="processing")] == [claimed.id]


def test_cursors_round_trip_and_garbage_is_a_400_naming_cursor() -> None:
    created = time.time()
    task_id = "video_fd35ee52-2a98-44a6-b930-29a88ce9b8fd"
    assert decode_cursor(encode_cursor(created, task_id)) == (created, task_id)
    garbage = [
        "zzz",
        "!!!",
        "é",
        "x" * 500,
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'[1e999, "video_x"]').decode(),
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(b'[true, "video_fd35ee52-2a98-44a6-b930-29a88ce9b8fd"]').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ]
    for cursor in garbage:
        with pytest.raises(InvalidRequest) as caught:
            decode_cursor(cursor)
        assert caught.value.param == "cursor" and caught.value.code == "invalid_cursor"
    for limit in ("0", "101", "ten", "-1", "1.5"):
        with pytest.raises(InvalidRequest) as caught:
            parse_list_query(limit, None, None)
        assert caught.value.param == "limit"
    with pytest.raises(InvalidRequest) as caught:
        parse_list_query(None, None, "done")
    assert caught.value.param == "status"
    assert parse_list_query(None, None, "failed").limit == 20


def _view(status: str, progress: int = 0, created: float = 100.0, started: float | None = None) -> TaskView:
    finished = 200.0 if status in ("completed", "failed") else None
    return TaskView(
        "video_x",
        "k",
        "viduq3-turbo",
        status,
        started,
        progress,
        created,
        finished,
        False,
        None,
        None,
        None,
        None,
    )


def test_event_ids_only_grow_and_the_terminal_one_outranks_all() -> None:
    ids = [
        event_id(_view("queued")),
        event_id(_view("processing", 0)),
        event_id(_view("queued", 40, started=1.0)),  # requeued: reads processing, keeps its progress
        event_id(_view("processing", 99)),
        event_id(_view("failed", 10)),
    ]
    assert ids == sorted(ids) and ids[-1] == TERMINAL_EVENT_ID
    assert [parse_last_event_id(v) for v in ("41", " 7", "1000", "1001", "-3", "abc", "", None)] == [
        41, 7, 1000, None, None, None, None, None,
    ]  # fmt: skip


def test_poll_hint_follows_queue_position_and_progress_and_skips_finished_tasks() -> None:
    # Four queued tasks ahead in a queue of ten, two rendering, typical render 20 s.
    stats = ([float(t) for t in range(10)], 2, [("viduq3-turbo", 20.0)] * 3)
    hints = PollHints(lambda: stats, poll_rate=1.0, default_render_seconds=10.0)
    fourth = hints.hint_ms(_view("queued", created=4.0))
    last = hints.hint_ms(_view("queued", created=50.0))
    assert fourth == (4 / 2 + 1) * 20 * 500  # half of the expected wait
    assert last == MAX_HINT_MS  # (10 / 2 + 1) x 20 s, halved, is over the ceiling
    assert hints.hint_ms(_view("processing", 50)) == 5000  # half of the 10 s left
    assert hints.hint_ms(_view("processing", 99)) == 1000  # never under 1 / REELQ_POLL_RATE
    assert hints.hint_ms(_view("completed", 100)) is None and hints.header(_view("failed")) == []
