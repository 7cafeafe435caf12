"""The task service: the rules of reading and creating tasks, behind every HTTP transport (no framework)."""

from reelq.service.tasks import TaskService, parse_bearer
from reelq.store.fastread import TaskView

__all__ = ["TaskService", "TaskView", "parse_bearer"]
