"""A relayed model's keys in the models file, and what the model can be asked for.

Read by every process at start-up (the API validates creates against it; the callback route finds the
upstream's key through it), so this module is light: pydantic only, no HTTP client.

The key itself is never in the file: `api_key_env` names the environment variable that holds it, and
start-up stops with one clear line when that variable is unset or empty.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reelq.catalog import validate_options
from reelq.domain import MAX_DURATION, ModelLimits

Upstream = Literal["reelq", "vidu"]
VIDU_BASE_URL = "https://api.vidu.com"


class RelayOptions(BaseModel):
    """The `[models.<name>]` keys of a relayed model (README "Relay engine")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: Upstream
    # The upstream's root: a reelq (or reseller) server, or the Vidu platform (https://api.vidu.com).
    base_url: str | None = None
    # The NAME of the environment variable holding the upstream key; never the key.
    api_key_env: str = Field(min_length=1, max_length=200)
    # The model name the upstream knows; default: the name our clients use.
    upstream_model: str | None = Field(None, min_length=1, max_length=100)

    # Polling: the first status read `poll_initial` s after the create, then each wait `poll_backoff`
    # times longer, up to `poll_max` (the Vidu platform advises 30-60 s for long waits). An upstream
    # 429's Retry-After always wins over a shorter wait.
    poll_initial: float = Field(1.0, gt=0, le=600)
    poll_backoff: float = Field(1.5, ge=1, le=10)
    poll_max: float = Field(30.0, gt=0, le=600)
    # An upstream that has not finished `max_wait` s after our first claim fails the task.
    max_wait: float = Field(3600.0, gt=0, le=7 * 86400)
    # Upstream unreachable (5xx, 429, timeouts, resets) for longer than this: the task fails.
    unreachable_timeout: float = Field(600.0, gt=0, le=86400)
    # One HTTP request to the upstream (connect + read).
    request_timeout: float = Field(30.0, gt=0, le=600)
    # At most this many upstream requests at once from one relay worker (create, poll, download).
    max_connections: int = Field(64, ge=1, le=4096)
    # Re-hosting: the finished video is downloaded within `download_timeout` s and at most
    # `max_download_mb` megabytes (bigger: the task fails, nothing is kept).
    download_timeout: float = Field(300.0, gt=0, le=3600)
    max_download_mb: float = Field(512.0, gt=0, le=16384)
    # Vidu platform: ask for state-change callbacks at REELQ_PUBLIC_BASE_URL (when set).
    callbacks: bool = True
    # Vidu platform has no idempotency key: a create whose answer never came (timeout or reset after
    # the request was sent) may have been accepted. "fail" (default) fails the task rather than risk
    # paying twice; "retry" creates again.
    ambiguous_create: Literal["fail", "retry"] = "fail"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL, e.g. https://api.vidu.com")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must be a plain http(s) URL (no credentials, query or fragment)")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or value[0].isdigit():
            raise ValueError(f"{value!r} is not an environment variable name (the NAME, never the key)")
        return value

    @model_validator(mode="after")
    def _base_and_poll(self) -> RelayOptions:
        if self.base_url is None and self.upstream == "reelq":
            raise ValueError("base_url: required for upstream = 'reelq' (the server to relay to)")
        if self.poll_max < self.poll_initial:
            raise ValueError("poll_max must be at least poll_initial")
        return self

    @property
    def root(self) -> str:
        return self.base_url or VIDU_BASE_URL

    @property
    def max_download_bytes(self) -> int:
        return int(self.max_download_mb * 1024 * 1024)

    def model_name(self, ours: str) -> str:
        return self.upstream_model or ours

    def api_key(self) -> str:
        """The upstream key, from the environment variable the models file names."""
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is unset or empty")
        return value


def parse_options(options: dict[str, Any]) -> RelayOptions:
    return RelayOptions.model_validate(options)


def limits_of(options: dict[str, Any], max_duration: int | None) -> ModelLimits:
    """Validate a relayed model's keys (its key variable must be set) and say what it can do."""
    opts = validate_options(RelayOptions, options)
    opts.api_key()  # fails start-up, naming the variable, when the key is missing
    # Both upstreams take text, one image (first frame) and two (first and last frame).
    return ModelLimits(max_duration=min(MAX_DURATION, max_duration or MAX_DURATION))
