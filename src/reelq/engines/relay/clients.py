"""The upstream client of a relay channel, and the start-up check that every channel's key is set.

Pure configuration and clients (no database, no process): the relay worker (worker/relay.py) builds
its clients here, and the supervisor checks the keys before it starts any worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from reelq.engines import relayed_models
from reelq.engines.relay.openai_upstream import OpenAIUpstream
from reelq.engines.relay.options import RelayOptions, parse_options
from reelq.engines.relay.reelq_upstream import ReelqUpstream
from reelq.engines.relay.upstream import Upstream
from reelq.engines.relay.vidu_upstream import ViduUpstream

if TYPE_CHECKING:
    from reelq.config import Settings


def build_upstream(model: str, options: RelayOptions, client: httpx.AsyncClient) -> Upstream:
    """The upstream client of one channel (also what a cancel route would use: `.cancel(id)`)."""
    if options.upstream == "vidu":
        return ViduUpstream(options, model, client)
    if options.upstream == "openai":
        return OpenAIUpstream(options, model, client)
    return ReelqUpstream(options, model, client)


def check_upstream_keys(settings: Settings) -> None:
    """Every channel's key variable of the relayed models this process serves is set; else ValueError
    naming the model and the variable (a relay worker, and `reelq serve`/`worker`, stop on it)."""
    for model in relayed_models(settings):
        for channel in parse_options(settings.catalog[model].options).channels():
            try:
                channel.api_key()
            except ValueError as exc:
                raise ValueError(f"[models.{model}] {exc}") from None

