"""What an upstream is to the relay worker: create once, query, cancel; and how its answers fail.

Each upstream (`reelq_upstream`, `vidu_upstream`) turns our task into its create request and its
status answers into an `UpstreamStatus`. HTTP trouble is sorted here, once, into three kinds the
worker treats differently:

- `UpstreamRejected`: the upstream said no (a 4xx other than 429): final, the task fails with it.
- `UpstreamUnavailable`: 5xx, 429, timeouts, resets: retried with backoff (Retry-After honoured)
  until the model's `unreachable_timeout`.
- `UpstreamLost`: the upstream does not know the task (404 on a status read): final.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from reelq.engines.relay import bounded
from reelq.engines.relay.bounded import Answer, AnswerTooLarge
from reelq.engines.relay.options import RelayOptions

if TYPE_CHECKING:
    # Only named in annotations: the relay engine runs without the database (the worker hands it rows).
    from reelq.database import TaskRow

# Upstream states, as our statuses (the Vidu platform's and this API's own).
QUEUED, PROCESSING, COMPLETED, FAILED = "queued", "processing", "completed", "failed"
MAX_RETRY_AFTER = 3600.0
_ERROR_TEXT_MAX = 300


class UpstreamError(Exception):
    """Something the upstream answered or failed to answer; the message is fit for the task's error."""


class UpstreamRejected(UpstreamError):
    """A final refusal (a 4xx other than 429). The message is ours, for the client; `detail` is what
    the upstream said, for the log (its internals never reach our clients)."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message


class UpstreamUnavailable(UpstreamError):
    """Worth retrying: 5xx, 429, a timeout or a reset; `retry_after` when the upstream said when.

    `ambiguous`: the request was sent and no answer came, so a create may have been accepted.
    `busy`: the upstream answered that it is at its concurrency or rate limit (a 429, Vidu's
    QuotaExceeded): it is reachable, so the wait for room is bounded by the task's maximum wait, not
    by `unreachable_timeout`.
    """

    def __init__(
        self, message: str, retry_after: float | None = None, ambiguous: bool = False, busy: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.busy = busy


class UpstreamLost(UpstreamError):
    """The upstream does not know the task (404)."""


@dataclass(frozen=True, slots=True)
class Created:
    upstream_id: str
    credits: int | None = None


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """One status read: our status, and what comes with it."""

    status: str
    video_url: str | None = None
    error: str | None = None
    credits: int | None = None
    progress: int | None = None
    detail: str | None = None  # the upstream's own words about a failure: logged, not shown
    # Headers the video download needs (an OpenAI-shaped server's /content wants our key); sent only
    # to the upstream's own origin.
    video_headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """What the upstream is asked to make: the task's spec, its input images, where to call back."""

    task: TaskRow
    first_image: str | None = None
    last_image: str | None = None
    callback_url: str | None = None


class Upstream(Protocol):
    """One configured upstream (per relayed model), sharing the worker's HTTP client."""

    options: RelayOptions

    async def create(self, request: RelayRequest) -> Created: ...

    async def query(self, upstream_id: str) -> UpstreamStatus:
        """One status read (a long-polling upstream also takes `wait=` seconds)."""
        ...

    async def cancel(self, upstream_id: str) -> None:
        """Ask the upstream to stop a task (for our cancel route); raises UpstreamError on trouble."""
        ...


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now, capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def short_text(text: str, limit: int = _ERROR_TEXT_MAX) -> str:
    """An upstream's words, made safe to show: one line, printable, bounded."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    json: Any = None,
    timeout: float,
    what: str,
    data: Any = None,
    files: Any = None,
) -> Answer:
    """One request, within `timeout` seconds IN ALL and a 1 MiB answer (engines/relay/bounded.py);
    transport trouble, an answer too slow or too large, and 5xx/429 become UpstreamUnavailable, the
    rest is returned.

    Logs and messages name `what` and the status, never the URL's credentials or our key.
    """
    try:
        response = await bounded.request(
            client, method, url, headers=headers, json=json, data=data, files=files, timeout=timeout
        )
    except AnswerTooLarge:
        raise UpstreamUnavailable(
            f"the upstream's answer to {what} is larger than {bounded.MAX_ANSWER_BYTES // 1024} KiB",
            ambiguous=True,
        ) from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # Nothing reached the upstream: safe to send again.
        raise UpstreamUnavailable(f"the upstream could not be reached ({type(exc).__name__})") from None
    except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise UpstreamUnavailable(
            f"the upstream did not answer {what} ({type(exc).__name__})", ambiguous=True
        ) from None
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"{what} failed ({type(exc).__name__})", ambiguous=True) from None
    status = response.status_code
    if status == 429 or status >= 500:
        retry = retry_after_seconds(response.headers.get("retry-after"))
        raise UpstreamUnavailable(
            f"the upstream answered {what} with HTTP {status}", retry_after=retry, busy=status == 429
        )
    return response


def json_object(response: Answer, what: str) -> dict[str, Any]:
    """The answer's JSON object; anything else is an upstream fault worth retrying."""
    try:
        data = response.json()
    except ValueError:
        raise UpstreamUnavailable(f"the upstream's answer to {what} is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamUnavailable(f"the upstream's answer to {what} is not a JSON object")
    return data


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value == value and abs(value) < 2**62:
        return int(value)
    return None
