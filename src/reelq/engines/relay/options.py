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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reelq.domain import MAX_DURATION, ModelLimits
from reelq.engines.options import validate_options

Upstream = Literal["reelq", "vidu", "openai"]
VIDU_BASE_URL = "https://api.vidu.com"
# The keys one channel (`[[models.NAME.upstreams]]`) may set; every other key is the model's, shared.
CHANNEL_KEYS = frozenset(
    {
        "name",
        "upstream",
        "base_url",
        "api_key_env",
        "upstream_model",
        "weight",
        "max_in_flight",
        "download_hosts",
        "max_resubmits",
        "ambiguous_create",
        "callbacks",
    }
)
MAX_CHANNELS = 64


class RelayOptions(BaseModel):
    """The `[models.<name>]` keys of a relayed model (docs/fleet.md), or of one of its channels.

    A model relays to one upstream (`upstream`, `base_url`, `api_key_env` in its table) or to several
    (`[[models.NAME.upstreams]]`, SPEC §7): each channel is this same model of options, the model's
    shared keys (polling, timeouts, bounds) with the channel's own keys on top (`channels()`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: Upstream | None = None
    # The upstream's root: a reelq (or reseller) server, the Vidu platform (https://api.vidu.com), or a
    # server of the OpenAI Videos shape (SGLang Diffusion, vLLM-Omni, FastVideo, LiteLLM).
    base_url: str | None = None
    # The NAME of the environment variable holding the upstream key; never the key.
    api_key_env: str | None = Field(None, min_length=1, max_length=200)
    # The model name the upstream knows; default: the name our clients use.
    upstream_model: str | None = Field(None, min_length=1, max_length=100)
    # ---- channels (SPEC §7) ----
    upstreams: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=MAX_CHANNELS)
    # What the row records as the task's channel; default `<upstream>@<base_url>[/<upstream_model>]`.
    name: str | None = Field(None, min_length=1, max_length=200)
    # New tasks are spread over the channels with room in proportion to `weight`.
    weight: float = Field(1.0, gt=0, le=1e6)
    # Never more of our tasks at this upstream at once (created and not yet finished); None: no cap.
    max_in_flight: int | None = Field(None, ge=1, le=1_000_000)
    # Hosts besides base_url's (at any port) whose video links are trusted like the upstream's own:
    # a CDN or storage host in front of a private upstream.
    download_hosts: list[str] = Field(default_factory=list, max_length=64)
    # openai upstreams: a task the server forgot (404 for an id it accepted) is created again at most
    # this many times, then fails.
    max_resubmits: int = Field(1, ge=0, le=10)
    # A channel whose creates fail (before they could have been accepted) `cooldown_after` times in a
    # row is skipped for `cooldown` seconds; a success ends its run of failures.
    cooldown: float = Field(30.0, ge=0, le=86400)
    cooldown_after: int = Field(3, ge=1, le=1000)

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

    @field_validator("download_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        hosts = []
        for host in value:
            host = host.strip().lower().rstrip(".")
            if not host or "/" in host or "@" in host or not host.isascii() or " " in host:
                raise ValueError(f"{host!r} is not a host name (a name or address, no scheme or path)")
            hosts.append(host)
        return hosts

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.replace("_", "").isalnum() or value[0].isdigit():
            raise ValueError(f"{value!r} is not an environment variable name (the NAME, never the key)")
        return value

    @model_validator(mode="after")
    def _base_and_poll(self) -> RelayOptions:
        if self.poll_max < self.poll_initial:
            raise ValueError("poll_max must be at least poll_initial")
        if self.upstreams is not None:
            given = sorted(k for k in ("upstream", "base_url", "api_key_env") if getattr(self, k) is not None)
            if given:
                raise ValueError(f"{given[0]}: set it in each [[upstreams]] entry, not beside them")
            names = [channel.channel_name for channel in self.channels()]  # validates every channel
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise ValueError(f"upstreams: two channels are named {dup!r}: give each a distinct `name`")
            return self
        if self.upstream is None:
            raise ValueError("upstream: required ('reelq', 'vidu' or 'openai'), or list [[upstreams]]")
        if self.api_key_env is None:
            raise ValueError("api_key_env: required (the NAME of the variable holding the upstream key)")
        if self.base_url is None and self.upstream in ("reelq", "openai"):
            raise ValueError(f"base_url: required for upstream = {self.upstream!r} (the server to relay to)")
        return self

    def channels(self) -> list[RelayOptions]:
        """The upstreams of this model, each with the model's shared keys (one when none are listed)."""
        if self.upstreams is None:
            return [self]
        shared = self.model_dump(exclude_unset=True, exclude={"upstreams", *CHANNEL_KEYS})
        out = []
        for i, table in enumerate(self.upstreams):
            unknown = sorted(set(table) - CHANNEL_KEYS)
            if unknown:
                keys = ", ".join(sorted(CHANNEL_KEYS))
                raise ValueError(f"upstreams[{i}].{unknown[0]}: not a channel key ({keys})")
            try:
                out.append(RelayOptions.model_validate({**shared, **table}))
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(part) for part in first["loc"])
                message = str(first["msg"]).removeprefix("Value error, ")
                raise ValueError(f"upstreams[{i}]{'.' + key if key else ''}: {message}") from None
        return out

    @property
    def channel_name(self) -> str:
        """What the task row records as its channel: stable across restarts and reorderings."""
        if self.name is not None:
            return self.name
        name = f"{self.upstream}@{self.root}"
        return f"{name}/{self.upstream_model}" if self.upstream_model else name

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
        assert self.api_key_env is not None  # a channel always names one (validated)
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is unset or empty")
        return value


def parse_options(options: dict[str, Any]) -> RelayOptions:
    return RelayOptions.model_validate(options)


def channel_for(options: RelayOptions, name: str | None) -> RelayOptions:
    """The channel a task's row names (a row from before channels names none: the first)."""
    channels = options.channels()
    return next((c for c in channels if c.channel_name == name), channels[0])


def limits_of(options: dict[str, Any], max_duration: int | None) -> ModelLimits:
    """Validate a relayed model's keys and say what it can do.

    The upstream keys are not needed here: every process reads the models file (`reelq keys create`
    too), and key management must not need upstream secrets. A relay worker checks them when it
    starts (`check_keys`), so `reelq serve`/`reelq worker` still stop with one line naming the variable.
    """
    opts = validate_options(RelayOptions, options)
    channels = opts.channels()
    if any(c.upstream == "openai" for c in channels):
        # The OpenAI Videos create takes one reference image (`input_reference`): no last frame.
        return ModelLimits(max_duration=min(MAX_DURATION, max_duration or MAX_DURATION), last_image=False)
    # The reelq and Vidu upstreams take text, one image (first frame) and two (first and last frame).
    return ModelLimits(max_duration=min(MAX_DURATION, max_duration or MAX_DURATION))


def check_keys(options: dict[str, Any]) -> None:
    """Every channel's key variable is set (raises ValueError naming the first that is not)."""
    for channel in parse_options(options).channels():
        channel.api_key()
