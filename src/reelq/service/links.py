"""A task's links, their expiry and what a client is shown of it: the one place each rule lives.

Every surface (the Vidu result and list, both transports; OpenAI's `video` object and `/content`;
the Vidu platform's `creations`; webhook payloads; the signed `/v1/files` routes) asks `Links`
instead of recomputing a piece of it:

- the shown status and progress (`Shown`): a row requeued after it started reads `processing`
  (domain.wire_status), progress is 100 once completed, the row's own while processing, else 0;
- the expiry: `REELQ_VIDEO_URL_TTL` after the task completed, the same instant for the video's
  link, its cover's, the S3 presigned link and OpenAI's `expires_at`;
- the video link: a `/v1/files` link this API signs where the storage keeps local files
  (`Storage.serves_files`), else the storage's presigned link (S3);
- the cover link: always a `/v1/files/covers` link this API signs (it decodes covers itself).

One signer (`LinkSigner`) signs both kinds of `/v1/files` link, keyed by purpose: the HMAC covers
the purpose's own route, so a cover's signature never opens a video and the reverse. The message
(`<route path>\\n<expires>`) is the one links were always signed with, so links handed out before
stay valid.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from reelq.database.views import TaskView
from reelq.domain import Status, wire_status
from reelq.storage import Storage

Purpose = Literal["video", "cover"]
VIDEO: Purpose = "video"
COVER: Purpose = "cover"
# The route each purpose's links point at (api/files.py serves them).
ROUTES: dict[Purpose, str] = {
    VIDEO: "/v1/files/{task_id}.mp4",
    COVER: "/v1/files/covers/{task_id}.jpg",
}
SUFFIXES: dict[Purpose, str] = {VIDEO: ".mp4", COVER: ".jpg"}


class LinkSigner:
    """HMAC-SHA256 links under the server's signing secret: `<base><route>?expires=…&signature=…`."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @staticmethod
    def path(purpose: Purpose, task_id: str) -> str:
        return ROUTES[purpose].format(task_id=task_id)

    def signature(self, purpose: Purpose, task_id: str, expires: int) -> str:
        message = f"{self.path(purpose, task_id)}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one signer per process; finished tasks are polled a lot
    def url(self, purpose: Purpose, base_url: str, task_id: str, expires: int) -> str:
        signature = self.signature(purpose, task_id, expires)
        return f"{base_url}{self.path(purpose, task_id)}?expires={expires}&signature={signature}"

    def verify(self, purpose: Purpose, task_id: str, expires: int, signature: str) -> bool:
        """Whether `signature` is this signer's for the purpose, task and expiry (not whether it expired)."""
        # Compared as bytes: compare_digest refuses a str with non-ASCII characters (TypeError), and the
        # signature is whatever the client put in the query string. "replace" also covers lone surrogates.
        expected = self.signature(purpose, task_id, expires).encode("ascii")
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Shown:
    """What a client is shown of a task, on any surface."""

    status: str  # the wire status: queued | processing | completed | failed
    progress: int  # 0-100
    expires_at: int | None  # completed: when its links stop working (Unix time); else None
    video_url: str | None  # completed and asked with a base URL: the video's link
    cover_url: str | None  # likewise, the cover's; None once the video was deleted (nothing to decode)

    @property
    def completed(self) -> bool:
        return self.status == Status.COMPLETED

    @property
    def failed(self) -> bool:
        return self.status == Status.FAILED


class Links:
    """The link, expiry and shown-status rules over one storage and signing secret (one per process)."""

    def __init__(
        self, storage: Storage, secret: bytes, ttl: int, clock: Callable[[], float] | None = None
    ) -> None:
        self.storage = storage
        self.signer = LinkSigner(secret)
        self.ttl = ttl
        self._clock = clock  # what "expired" is judged against; None: this module's `time`, read per call

    def now(self) -> float:
        # `time.time` looked up at each call, not bound once: the in-process test node moves the clock
        # of reelq's modules by replacing their `time` (tests/harness.py).
        return self._clock() if self._clock is not None else time.time()

    def expired(self, expires_at: int) -> bool:
        return expires_at < self.now()

    def expires_at(self, view: TaskView) -> int | None:
        """When a completed task's links stop working; None until it completed."""
        if view.status != Status.COMPLETED or view.finished_at is None:
            return None
        return int(view.finished_at + self.ttl)

    def shown(self, view: TaskView, base_url: str | None = None) -> Shown:
        """The task as a client sees it; with `base_url` (where `/v1/files` links point), its links too."""
        status, progress = shown_state(view)
        expires = self.expires_at(view)
        video_url = cover_url = None
        if expires is not None and base_url is not None:
            video_url = self.video_url(view, base_url, expires)
            if not view.video_deleted:
                cover_url = self.signer.url(COVER, base_url, view.id, expires)
        return Shown(status, progress, expires, video_url, cover_url)

    def video_url(self, view: TaskView, base_url: str, expires: int) -> str:
        if self.storage.serves_files:
            return self.signer.url(VIDEO, base_url, view.id, expires)
        if view.video_key is None:  # a completed row always has its key; never hand out a link to nothing
            raise ValueError(f"task {view.id} has no stored video")
        return self.storage.presigned_url(view.video_key, expires)

    def verify(self, purpose: Purpose, task_id: str, expires: int, signature: str) -> bool:
        """Whether a `/v1/files` link is one this server signed; a video link only where it serves files
        (remote storage hands out its own links, so no video link of ours exists to verify)."""
        if purpose == VIDEO and not self.storage.serves_files:
            return False
        return self.signer.verify(purpose, task_id, expires, signature)


def shown_state(view: TaskView) -> tuple[str, int]:
    """The status and progress a client sees (no links: what the event stream and the polling hint need
    too): a row requeued after it started reads `processing`; progress is 100 once completed, the
    row's own while processing, else 0."""
    status = wire_status(view.status, view.started_at is not None)
    if status == Status.COMPLETED:
        return status, 100
    return status, view.progress if status == Status.PROCESSING else 0


def request_base(
    public_base_url: str | None,
    scheme: str,
    host: str | None,
    root: str,
    server: tuple[str, int | None] | None = None,
) -> str:
    """Where a request's links point: the configured public base, else the address the request came to.

    That address is `scheme://host` + `root` (the root path the request came under), as
    Starlette's `request.base_url` spells it less the slash. `host` is the Host header; without
    one, `server` (the address the server listens on, default port left out: a transport may
    pass it only when there is no Host header); without that either, localhost.
    """
    if public_base_url:
        return public_base_url
    if not host:
        if server:
            name, port = server
            if ":" in name and not name.startswith("["):
                name = f"[{name}]"  # an IPv6 address
            default = {"http": 80, "https": 443}.get(scheme)
            host = name if port == default else f"{name}:{port}"
        else:
            host = "localhost"
    return f"{scheme}://{host}{root}"


def server_base(public_base_url: str | None, host: str, port: int, root_path: str) -> str:
    """Where links in webhook payloads point: the configured public base, else this server's address
    (a webhook has no request whose Host header could say better)."""
    if public_base_url:
        return public_base_url
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{root_path}"
