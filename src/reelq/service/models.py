"""`GET /v1/models` (SPEC §7): the served models and what each can be asked for.

Built from the catalog alone (`Settings.catalog`, each entry's `ModelLimits`), so the API process
answers it without loading an engine. The shape is OpenAI's model list, which the `openai` SDK's
`models.list()` reads, with reelq's fields beside the standard four.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from reelq.catalog import ModelEntry
from reelq.domain import ASPECT_RATIOS

OWNER = "reelq"


def model_object(name: str, entry: ModelEntry, created: int, resolutions: list[str]) -> dict[str, Any]:
    limits = entry.limits
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": OWNER,
        "max_duration": limits.max_duration,
        "resolutions": resolutions,
        "aspect_ratios": list(ASPECT_RATIOS),
        "first_image": limits.first_image,
        "last_image": limits.last_image,
        # The off-peak create field (SPEC §6) is a scheduling choice any model's task may make.
        "off_peak": True,
    }


def model_list(
    catalog: Mapping[str, ModelEntry],
    resolutions: list[str],
    created: int,
    allowed: Collection[str] | None = None,
) -> dict[str, Any]:
    """The list object, in the catalog's order (the first is what `reelq generate` picks by default).

    `allowed`: the models a key may use (None: all); the one place the list is filtered per key.
    """
    data = [
        model_object(name, entry, created, resolutions)
        for name, entry in catalog.items()
        if allowed is None or name in allowed
    ]
    return {"object": "list", "data": data}
