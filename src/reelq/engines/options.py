"""The shared step of every engine's models-file options checker (engines/*/options.py).

Here, not in catalog.py: the catalog calls the checkers (through `reelq.engines.check_model_options`),
so a checker importing the catalog back would make the two packages a cycle.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

_Options = TypeVar("_Options", bound=BaseModel)


def validate_options(model: type[_Options], options: dict[str, Any]) -> _Options:
    """An engine's options model from a models-file table; an error is one ValueError line naming the key."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "options"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(message if message.startswith(f"{key}:") else f"{key}: {message}") from None
