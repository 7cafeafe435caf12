"""`TaskView`: what every status read needs of a task row, whichever reader or store produced it.

The hot read path (database/fastread.py) selects exactly these columns; the service, the surface
shapes, the webhooks and the events all read a task through it.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple


class TaskView(NamedTuple):
    """What a status read needs of a task row: the `tasks` columns of the same names.

    A NamedTuple because the fast path caches finished answers keyed on the whole view (it must
    hash), and because a row fetched by sqlite3 becomes one without copying field by field.
    """

    id: str
    key_id: str
    model: str
    status: str
    started_at: float | None
    progress: int
    created_at: float
    finished_at: float | None
    video_deleted: bool
    video_key: str | None  # where the video is stored (an S3 link is presigned for the object)
    actual_duration: float | None
    total_tokens: int | None
    error: str | None
    # What was asked for: the other API surfaces (OpenAI's `seconds`/`size`, the Vidu platform's
    # fields) show the request, not only its result. Defaulted so views built by hand stay valid.
    duration: int = 5
    aspect_ratio: str = "16:9"
    resolution: str = "720p"

    @classmethod
    def of(cls, row: Any) -> TaskView:
        """The view of a store row (database/taskstore.py TaskRow) or anything with these attributes."""
        return cls._make(_view_fields(row))


_view_fields = operator.attrgetter(*TaskView._fields)  # one C call per create answer
