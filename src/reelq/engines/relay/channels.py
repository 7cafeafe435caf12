"""Relay channels (SPEC §7): a relayed model's several upstreams, their in-flight caps and cool-downs.

The relay worker holds one `ChannelSet` per relayed model. Each held task sits on exactly one channel
from the moment it is claimed (its `in_flight` counts it), so a cap is enforced where the work is
taken: the claim asks for at most `ChannelSet.room()` tasks and the rest stay `queued` in their
fair-share order. A new task goes to the channel with room whose load per weight is least, which
spreads tasks in proportion to the weights; a channel whose creates keep failing before they could
have been accepted is skipped for its cool-down.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import httpx

from reelq import metrics
from reelq.engines.relay.options import RelayOptions
from reelq.engines.relay.upstream import Upstream

log = logging.getLogger("reelq.relay")


@dataclass(eq=False)
class Channel:
    """One upstream of one relayed model, and what this worker knows of it now."""

    model: str
    options: RelayOptions
    upstream: Upstream
    client: httpx.AsyncClient
    in_flight: int = 0
    failures: int = 0  # creates refused in a row (before they could have been accepted)
    cool_until: float = 0.0  # monotonic
    disabled: str | None = None  # why no task may go here (a model the upstream does not serve)

    @property
    def name(self) -> str:
        return self.options.channel_name

    def room(self) -> float:
        if self.disabled is not None:
            return 0
        cap = self.options.max_in_flight
        return math.inf if cap is None else max(0, cap - self.in_flight)

    def cooling(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.cool_until

    def hold(self) -> None:
        self.in_flight += 1
        metrics.upstream_in_flight(self.model, self.name, 1)

    def let_go(self) -> None:
        self.in_flight -= 1
        metrics.upstream_in_flight(self.model, self.name, -1)

    def refused(self, kind: str) -> None:
        """A create this channel refused before it could have been accepted; enough in a row cool it."""
        metrics.upstream_error(self.model, self.name, kind)
        self.failures += 1
        if self.failures >= self.options.cooldown_after and self.options.cooldown > 0:
            self.cool_until = time.monotonic() + self.options.cooldown
            self.failures = 0
            log.warning(
                "upstream %s of %s refused %d creates in a row; skipped for %g s",
                self.name,
                self.model,
                self.options.cooldown_after,
                self.options.cooldown,
            )

    def accepted(self) -> None:
        self.failures = 0


@dataclass
class ChannelSet:
    """The channels of one relayed model, in the models file's order."""

    model: str
    channels: list[Channel] = field(default_factory=list)

    def named(self, name: str | None) -> Channel | None:
        """The channel a row names (a row from before channels names none: the first); None when the
        models file no longer lists it."""
        if name is None:
            return self.channels[0]
        return next((c for c in self.channels if c.name == name), None)

    def room(self) -> float:
        """How many more new tasks the channels can take now (cooling channels take none)."""
        now = time.monotonic()
        return sum((c.room() for c in self.channels if not c.cooling(now)), 0.0)

    def pick(self, exclude: frozenset[Channel] | set[Channel] = frozenset()) -> Channel | None:
        """The channel with room (not cooling, not in `exclude`) whose load per weight is least."""
        now = time.monotonic()
        open_ = [c for c in self.channels if c not in exclude and c.room() > 0 and not c.cooling(now)]
        if not open_:
            return None
        return min(open_, key=lambda c: (c.in_flight + 1) / c.options.weight)
