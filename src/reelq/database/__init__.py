"""The tasks database: schema and migrations, `TaskStore` (keys, tasks, the state machine, usage,
quotas: one module each) and the hot read path."""

from reelq.database.db import SchemaOutdated, ensure_schema, make_engine, migrate
from reelq.database.keys import ApiKey, hash_key
from reelq.database.lifecycle import SweepResult
from reelq.database.quotas import QuotaExceeded, Quotas
from reelq.database.tasks import NewTask, TaskRow
from reelq.database.taskstore import TaskStore
from reelq.database.usage import UsageRow

__all__ = [
    "ApiKey",
    "NewTask",
    "QuotaExceeded",
    "Quotas",
    "SchemaOutdated",
    "SweepResult",
    "TaskRow",
    "TaskStore",
    "UsageRow",
    "ensure_schema",
    "hash_key",
    "make_engine",
    "migrate",
]
