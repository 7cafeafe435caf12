"""The task service: the rules of reading and creating tasks, behind every HTTP transport (no framework)."""

from reelq.database.views import TaskView
from reelq.service.tasks import TaskService, parse_bearer

__all__ = ["TaskService", "TaskView", "parse_bearer"]
