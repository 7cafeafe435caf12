"""The SDK's side of the environment: REELQ_BASE_URL and REELQ_API_KEY, read in this one place.

The server's `REELQ_*` variables are `reelq.config.Settings`; these two belong to whoever
calls a server (the SDK and `reelq generate`), so they live with the client.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REELQ_", extra="ignore", frozen=True)

    base_url: str | None = None
    api_key: str | None = None
