"""The model catalog: which model names are served, by which engine, at what token rate.

`REELQ_MODELS` names a TOML file (SPEC §5) with one `[models.<name>]` table per model. Without it
the catalog is the two synthetic models (`viduq3-pro`, `viduq3-turbo`), or what the older
`REELQ_MODEL_RATES` / `REELQ_ENGINES` variables say. Keys every engine shares are validated here;
the rest of a table are the engine's own options, validated by the engine's options checker
(`reelq.engines.check_model_options`) without loading the engine — the API process learns what a
model can do (`ModelLimits`) from its configuration alone and never imports torch.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reelq.domain import MAX_DURATION, MIN_DURATION, ModelLimits

# A GPU model takes minutes a clip (Wan 14B at 720p: tens of minutes on one H100), not seconds.
ENGINE_DEADLINE_FACTOR = {"diffusers": 600.0}
SHARED_KEYS = ("tokens_per_second", "max_duration", "render_deadline_factor", "pool")
# SPEC §7: a model names the pool of workers that serves it; workers run `--pool NAME`.
DEFAULT_POOL = "default"
POOL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# SPEC §5: tokens_per_second defaults to 300 for *-pro models, 150 otherwise.
PRO_RATE, DEFAULT_RATE = 300.0, 150.0
MAX_MODEL_NAME = 100




class CatalogError(ValueError):
    """The models file is unreadable or wrong; the message names the file and the key."""


class ModelEntry(BaseModel):
    """One `[models.<name>]` table; `options` holds the engine's own keys, as written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str
    tokens_per_second: float = Field(gt=0)
    # None: the engine's default for the model (synthetic: MAX_DURATION).
    max_duration: int | None = Field(None, ge=MIN_DURATION, le=MAX_DURATION)
    # Seconds of render deadline per second of 720p video (REELQ_RENDER_DEADLINE_FACTOR when None).
    render_deadline_factor: float | None = Field(None, gt=0)
    # The workers that load and claim this model: those started with `--pool <this>` (SPEC §7).
    pool: str = Field(DEFAULT_POOL, pattern=POOL_PATTERN)
    options: dict[str, Any] = Field(default_factory=dict)
    limits: ModelLimits = Field(default_factory=ModelLimits)


def default_rate(name: str) -> float:
    return PRO_RATE if name.endswith("-pro") else DEFAULT_RATE


def load_catalog(path: Path) -> dict[str, ModelEntry]:
    """Read and validate a models file; every problem is one CatalogError line naming file and key."""
    try:
        data = tomllib.loads(path.expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the models file ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - {"models"}
    if unknown:
        key = sorted(unknown)[0]
        raise CatalogError(f"{path}: unknown top-level key {key!r} (only [models.<name>] tables)")
    tables = data.get("models")
    if not isinstance(tables, dict) or not tables:
        raise CatalogError(f"{path}: no [models.<name>] table: list at least one model")
    return {name: _entry(path, name, table) for name, table in tables.items()}


def _entry(path: Path, name: str, table: object) -> ModelEntry:
    from reelq.engines import ENGINES, check_model_options

    where = f"{path}: [models.{name}]"
    if not 1 <= len(name) <= MAX_MODEL_NAME or not name.isprintable():
        raise CatalogError(f"{where}: a model name is 1..{MAX_MODEL_NAME} printable characters")
    if not isinstance(table, dict):
        raise CatalogError(f"{where}: must be a table")
    table = dict(table)
    engine = table.pop("engine", None)
    if engine not in ENGINES:
        available = ", ".join(sorted(ENGINES))
        raise CatalogError(f"{where}: engine = {engine!r} is not one of {available}")
    shared = {k: table.pop(k) for k in SHARED_KEYS if k in table}
    shared.setdefault("tokens_per_second", default_rate(name))
    if engine in ENGINE_DEADLINE_FACTOR:
        shared.setdefault("render_deadline_factor", ENGINE_DEADLINE_FACTOR[engine])
    try:
        entry = ModelEntry(engine=engine, options=table, **shared)
        limits = check_model_options(engine, table, entry.max_duration)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "table"
        raise CatalogError(f"{where}: {key}: {first['msg']}") from None
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from None
    return entry.model_copy(update={"limits": limits})


def implicit_catalog(rates: dict[str, float], engines: dict[str, str]) -> dict[str, ModelEntry]:
    """The catalog without a models file: every rated model, on its mapped engine (synthetic by default)."""
    from reelq.engines import DEFAULT_ENGINE, RELAY_ENGINE

    for name, engine in engines.items():
        if engine == RELAY_ENGINE:
            # A relayed model needs its upstream (base_url, api_key_env): only a models file says it.
            raise CatalogError(
                f"model {name!r}: the relay engine is configured in the models file (REELQ_MODELS)"
            )
    return {
        name: ModelEntry(engine=engines.get(name, DEFAULT_ENGINE), tokens_per_second=rate)
        for name, rate in rates.items()
    }
