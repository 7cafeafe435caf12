"""Settings: environment variables `REELQ_*` (or CLI flags), validated once at start-up.

`Settings` is the only reader of the server's `REELQ_*` variables (the SDK's two,
REELQ_BASE_URL and REELQ_API_KEY, are read by `reelq.client.ClientSettings`). Render
worker processes do not read the environment: the supervisor hands them the resolved
settings (`to_json` / `from_json`), so what a child runs with is what its parent validated.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from reelq.catalog import CatalogError, ModelEntry, implicit_catalog, load_catalog
from reelq.domain import (
    DEFAULT_MODEL_RATES,
    DEFAULT_RESOLUTION_FACTORS,
    RESOLUTIONS,
    ModelLimits,
    total_tokens,
)
from reelq.engines import DEFAULT_ENGINE, ENGINES

# Kept short on purpose: operators replace it with their own list (REELQ_BLOCKED_TERMS).
DEFAULT_BLOCKED_TERMS = ["child sexual abuse", "csam", "beheading", "bomb making"]


class ConfigError(Exception):
    """Bad configuration: the CLI prints the message as one line and exits."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REELQ_", extra="ignore", frozen=True)

    home: Path = Path(".reelq")
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    database_url: str | None = None
    storage_url: str | None = None
    # The S3 endpoint clients download from, when it is not the one reelq uploads to (AWS_ENDPOINT_URL):
    # in a compose network reelq reaches `http://minio:9000` while clients reach `http://host:9000`.
    # Links are presigned for this host (signing is local: nothing is sent there).
    s3_public_url: str | None = None
    # Shared rate limits and quota counts (sharedlimits.py); None: in this process's memory.
    redis_url: str | None = None
    # Every Redis key reelq writes starts with this, so deployments (and tests) can share a Redis.
    redis_prefix: str = "reelq:"
    # Celery dispatch (dispatch/broker.py): a create publishes "run <id>" to this broker's `queue`;
    # None: the embedded dispatch (doorbells and supervised worker processes).
    broker_url: str | None = None
    queue: str = Field("reelq", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")

    # `reelq worker`'s own endpoint (dispatch/probes.py: metrics and probes): a node with no API process
    # has no /metrics of its own. 0 (or "off"): none. 9720 is clear of node_exporter (9100), NVIDIA's
    # DCGM exporter (9400) and the Celery exporter (9808) that GPU nodes often run too. `reelq serve`
    # ignores both: its workers' metrics are on its API port's /metrics.
    metrics_port: int = Field(9720, ge=0, le=65535)
    # Every interface, as exporters do: the node exists to be scraped from elsewhere, and the
    # endpoint carries counts only (no task ids, prompts or keys).
    metrics_host: str = Field("0.0.0.0", min_length=1)

    public_base_url: str | None = None
    root_path: str = ""
    video_url_ttl: int = Field(86400, ge=1)
    task_retention: float = Field(7 * 86400, gt=0)
    signing_secret: str | None = None
    allow_private_urls: bool = False
    blocked_terms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_BLOCKED_TERMS))

    synthetic_delay: float = Field(0.0, ge=0)
    workers: int = Field(2, ge=0, le=256)
    # REELQ_GPUS: GPU ids the render workers are spread over ("0,1"; "none": no GPU). Unset: found
    # when a diffusers model is served (dispatch/gpus.py).
    gpus: Annotated[list[str], NoDecode] | None = None
    max_attempts: int = Field(3, ge=1, le=100)
    lease_seconds: float = Field(30.0, gt=0)
    sweep_interval: float = Field(1.0, gt=0)
    queued_redispatch_seconds: float = Field(5.0, gt=0)
    drain_seconds: float = Field(30.0, ge=0)
    # Each render gets base + factor x its work (seconds of video x pixels / 720p pixels) + the synthetic
    # delay, from the claim; then it is stopped and its task fails (not retried: it would run away again).
    # A render that ignores the stop for `grace` more seconds takes its worker process down with it.
    render_deadline_base: float = Field(120.0, gt=0)
    render_deadline_factor: float = Field(10.0, ge=0)
    render_deadline_grace: float = Field(30.0, gt=0)
    # Fault drills: a prompt containing this term makes its render worker die abruptly mid-render.
    fault_drill_term: str | None = None
    # ... and this one makes its render hang without ever reporting progress again (the deadline drill).
    fault_drill_hang_term: str | None = None
    fetch_timeout: float = Field(10.0, gt=0)
    fetch_deadline: float = Field(30.0, gt=0)

    # SPEC §1 "Rate limits", enforced in ratelimit.py (per API process) and the create transaction.
    poll_rate: float = Field(1.0, gt=0)
    # A short burst on top of the steady rate: clients that poll a little faster than 1/s while a
    # short render runs are not refused at once; sustained hammering still is.
    poll_burst: float = Field(5.0, ge=1)
    create_rate: float = Field(60.0, gt=0)
    # Every other read a key makes (lists, usage, `/content` downloads, thumbnails) and each signed
    # cover link: per second, with a burst. Those reads cost more than a status read (a cover is tens
    # of ms of decoding), so they have a budget of their own rather than none.
    read_rate: float = Field(10.0, gt=0)
    read_burst: float = Field(50.0, ge=1)
    max_active_per_key: int = Field(16, ge=1)
    # SPEC §6 off-peak tier: the share of the tokens an off-peak task costs, and how long it may wait.
    off_peak_factor: float = Field(0.5, ge=0, le=1)
    off_peak_window: float = Field(172800.0, gt=0)
    max_queue: int = Field(10000, ge=1)
    # Long-polls (`?wait=N`, N <= 60) are held at most this long: lower it behind proxies with
    # shorter idle timeouts. Larger N are accepted and clamped.
    max_long_poll: float = Field(60.0, ge=0, le=60)
    # Server-sent event streams (`/v1/result/{id}/events`) send a comment line after this many idle
    # seconds, so proxies and load balancers do not close a stream waiting on a long render.
    sse_heartbeat: float = Field(15.0, gt=0, le=300)
    # Long-polls and event streams one API key may hold open at once in one API process: each holds a
    # connection for up to a minute (a stream, for the whole render), so without a bound one key could
    # hold every connection slot. Over it: 429 with Retry-After.
    max_held_per_key: int = Field(32, ge=1)
    # Slow clients (api/server.py): request headers must be complete this long after the
    # connection opens or the previous answer ends; a body gets body_timeout plus a second per
    # body_min_rate bytes received; connections beyond max_connections are answered 503.
    header_timeout: float = Field(10.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    body_min_rate: float = Field(32768.0, gt=0)
    max_connections: int = Field(4096, ge=1)
    # Request bodies being read and handled at once in one API process, in MB (api/bodies.py): a body
    # that does not fit waits a moment, then is answered 503. One body alone always fits.
    body_budget_mb: float = Field(64.0, gt=0)
    # Webhooks (reelq/webhooks/delivery.py): each attempt may take `timeout` seconds; a failed one is
    # retried after backoff_base x 2^(attempt-1) seconds (capped at backoff_max, jittered down to half)
    # for `retry_for` seconds after the event, then given up. At most `concurrency` attempts at once per
    # `reelq serve` process (0: this process sends none, another must), and at most
    # `concurrency_per_key` of them for one API key's tasks, so that one key's receiver that hangs
    # (or its backlog) never holds every slot and other keys' events still go within seconds.
    webhook_timeout: float = Field(10.0, gt=0, le=300)
    webhook_retry_for: float = Field(86400.0, ge=0)
    webhook_backoff_base: float = Field(2.0, gt=0)
    webhook_backoff_max: float = Field(1800.0, gt=0)
    webhook_concurrency: int = Field(16, ge=0, le=1024)
    webhook_concurrency_per_key: int = Field(4, ge=1, le=1024)

    model_rates: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MODEL_RATES))
    resolution_factors: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RESOLUTION_FACTORS))
    # model name -> engine name; every model in model_rates is served by the synthetic engine unless mapped.
    engines: dict[str, str] = Field(default_factory=dict)
    # REELQ_MODELS: the models file (SPEC §5, catalog.py). When set, it alone says which models are
    # served, by which engine, at what rate; REELQ_MODEL_RATES and REELQ_ENGINES must then be unset.
    models_file: Path | None = Field(None, validation_alias=AliasChoices("REELQ_MODELS", "models_file"))
    # The file's content as validated at start-up; a child worker gets this copy (`to_json`), so it
    # serves what its parent validated even if the file changed since.
    catalog: dict[str, ModelEntry] = Field(default_factory=dict)
    # REELQ_POOLS / `--pool` (SPEC §7): the pools whose models this process's workers load and claim
    # ("gpu80,gpu24"); None: every pool. The API serves every model whatever this says.
    pools: Annotated[list[str], NoDecode] | None = None

    @field_validator("blocked_terms", mode="before")
    @classmethod
    def _split_terms(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("pools", mode="before")
    @classmethod
    def _split_pools(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()] or None
        if isinstance(value, list | tuple) and not value:
            return None
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _split_gpus(cls, value: object) -> object:
        if isinstance(value, str):
            ids = [g.strip() for g in value.split(",") if g.strip()]
            value = [] if ids == ["none"] else ids
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from reelq.storage.s3 import parse_s3_url  # no boto3 import: only the URL's shape

        parse_s3_url(value)
        return value

    @field_validator("s3_public_url")
    @classmethod
    def _s3_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://s3.example.com")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("amqp://", "amqps://", "pyamqp://", "redis://", "rediss://")):
            raise ValueError("must be an amqp:// (RabbitMQ) or redis:// URL")
        return value

    @model_validator(mode="after")
    def _presign_limit(self) -> Settings:
        from reelq.storage.s3 import MAX_PRESIGN_SECONDS

        if self.storage_url and self.video_url_ttl > MAX_PRESIGN_SECONDS:
            # SigV4 presigned URLs cannot live longer; a link that dies early would break the contract.
            raise ValueError(
                f"REELQ_VIDEO_URL_TTL is at most {MAX_PRESIGN_SECONDS} seconds (7 days) with S3 storage"
            )
        return self

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_off(cls, value: object) -> object:
        # "off" reads better in a unit file than a magic 0.
        if isinstance(value, str) and value.strip().lower() in ("off", "none", "false", "no", "disabled"):
            return 0
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("root_path")
    @classmethod
    def _normalise_root(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/', e.g. /kyyReactApiServer")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _normalise_base(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("resolution_factors")
    @classmethod
    def _all_resolutions(cls, value: dict[str, float]) -> dict[str, float]:
        missing = set(RESOLUTIONS) - set(value)
        if missing:
            raise ValueError(f"missing factors for {', '.join(sorted(missing))}")
        return value

    @field_validator("engines")
    @classmethod
    def _known_engines(cls, value: dict[str, str]) -> dict[str, str]:
        for model, engine in value.items():
            if engine not in ENGINES:
                available = ", ".join(sorted(ENGINES))
                raise ValueError(f"model {model!r}: unknown engine {engine!r} (available: {available})")
        return value

    @model_validator(mode="after")
    def _load_catalog(self) -> Settings:
        if self.catalog:
            return self
        if self.models_file is None:
            catalog = implicit_catalog(self.model_rates, self.engines)
        else:
            both = {"model_rates", "engines"} & self.model_fields_set
            if both:
                drop = "REELQ_" + sorted(both)[0].upper()
                raise ValueError(f"REELQ_MODELS is set: drop {drop} (the file says it)")
            try:
                catalog = load_catalog(self.models_file)
            except CatalogError as exc:
                raise ValueError(f"REELQ_MODELS: {exc}") from None
        # Frozen settings: the catalog is derived once, here, and never changes after.
        object.__setattr__(self, "catalog", catalog)
        return self

    @model_validator(mode="after")
    def _known_pools(self) -> Settings:
        if self.pools is not None:
            known = {entry.pool for entry in self.catalog.values()}
            unknown = sorted(set(self.pools) - known)
            if unknown:
                raise ValueError(
                    f"REELQ_POOLS: no model is in pool {unknown[0]!r} (pools: {', '.join(sorted(known))})"
                )
        return self

    @property
    def served_models(self) -> list[str]:
        """The models this process's workers load and claim: those of its pools (all without --pool)."""
        if self.pools is None:
            return list(self.catalog)
        return [name for name, entry in self.catalog.items() if entry.pool in self.pools]

    def engine_for(self, model: str) -> str:
        """The engine that serves `model` (the models file, or REELQ_ENGINES, else the default)."""
        entry = self.catalog.get(model)
        return entry.engine if entry is not None else self.engines.get(model, DEFAULT_ENGINE)

    @property
    def token_rates(self) -> dict[str, float]:
        """Tokens per second of video, per served model (SPEC §1 "Tokens")."""
        return {name: entry.tokens_per_second for name, entry in self.catalog.items()}

    def price(self, model: str, seconds: float, resolution: str, off_peak: bool = False) -> int:
        """The tokens of a video (SPEC §1 "Tokens"), at the off-peak factor when off-peak (SPEC §6): what a
        create reserves at its requested duration and a completion charges at the actual one."""
        tokens = total_tokens(model, seconds, resolution, self.token_rates, self.resolution_factors)
        return round(tokens * self.off_peak_factor) if off_peak else tokens

    @property
    def model_limits(self) -> dict[str, ModelLimits]:
        """What each served model can be asked for, checked at create."""
        return {name: entry.limits for name, entry in self.catalog.items()}

    def to_json(self) -> str:
        """These settings, complete and with the home resolved, for a child process (`from_json`)."""
        return self.model_copy(update={"home": self.home_dir}).model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Settings:
        """Settings exactly as `to_json` wrote them: the environment is not consulted, so a child
        runs with what its parent validated even if its environment says otherwise."""
        return _GivenSettings.model_validate_json(data)

    @property
    def models(self) -> list[str]:
        return list(self.catalog)

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        url = self.database_url
        if url is None:
            return f"sqlite:///{self.home_dir / 'reelq.db'}"
        # The plain `postgresql://` (and libpq's `postgres://`) of SPEC §5 means psycopg 3, the driver the
        # `postgres` extra installs: SQLAlchemy 2.0 would pick psycopg2 for it, and rejects `postgres://`.
        scheme, sep, rest = url.partition("://")
        if sep and scheme in ("postgresql", "postgres"):
            return f"postgresql+psycopg://{rest}"
        return url

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file when the store is the embedded one (enables the inline read path)."""
        url = self.sqlalchemy_url
        if url.startswith("sqlite:///"):
            return Path(url[len("sqlite:///") :])
        return None

    @property
    def videos_dir(self) -> Path:
        return self.home_dir / "videos"

    @property
    def run_dir(self) -> Path:
        """Per-host runtime files: worker doorbell sockets.

        Unix socket paths are limited to ~107 bytes, so a deep REELQ_HOME gets a short
        directory under the system temp dir, keyed by the home path.
        """
        preferred = self.home_dir / "run"
        if len(str(preferred)) <= 70:
            return preferred
        digest = hashlib.sha256(str(self.home_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"reelq-{digest}"

    def secret_bytes(self) -> bytes:
        """The URL-signing secret: configured, or generated once into REELQ_HOME (mode 0600)."""
        if self.signing_secret:
            return self.signing_secret.encode()
        path = self.home_dir / "signing_secret"
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        self.home_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(32).encode()
        # O_EXCL: when two processes start at once, exactly one writes and both read the winner.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        return value


class _GivenSettings(Settings):
    """Settings built from explicit values only. pydantic-settings fills any field not passed
    (and `model_validate` goes through `__init__` too) from the environment; here the only
    source is what was passed."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus explicit overrides; bad values raise ConfigError (one line)."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across fields: its message names them
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"invalid configuration: {message}") from None
        name = "REELQ_" + str(first["loc"][0]).upper()
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid configuration: {name}: {message}") from None
    except SettingsError as exc:  # a JSON-valued variable that is not JSON
        field = str(exc).split('"')[1] if '"' in str(exc) else "configuration"
        raise ConfigError(f"invalid configuration: REELQ_{field.upper()}: not valid JSON") from None
