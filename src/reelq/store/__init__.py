"""The tasks database: schema and migrations, `TaskStore` (keys, tasks, the state machine, usage,
quotas: one module each) and the hot read path."""

from reelq.store.db import make_engine, migrate
from reelq.store.keys import ApiKey, hash_key
from reelq.store.lifecycle import SweepResult
from reelq.store.quotas import QuotaExceeded, Quotas
from reelq.store.tasks import NewTask, TaskRow
from reelq.store.taskstore import TaskStore
from reelq.store.usage import UsageRow

__all__ = [
    "ApiKey",
    "NewTask",
    "QuotaExceeded",
    "Quotas",
    "SweepResult",
    "TaskRow",
    "TaskStore",
    "UsageRow",
    "hash_key",
    "make_engine",
    "migrate",
]
