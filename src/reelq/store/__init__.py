"""The task store: schema, migrations, the state machine (TaskStore) and the hot read path."""

from reelq.store.db import make_engine, migrate
from reelq.store.taskstore import (
    ApiKey,
    NewTask,
    QuotaExceeded,
    Quotas,
    SweepResult,
    TaskRow,
    TaskStore,
    hash_key,
)

__all__ = [
    "ApiKey",
    "NewTask",
    "QuotaExceeded",
    "Quotas",
    "SweepResult",
    "TaskRow",
    "TaskStore",
    "hash_key",
    "make_engine",
    "migrate",
]
