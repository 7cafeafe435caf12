"""Render workers: what runs a claimed task (`run`), beside its heartbeat (`heartbeat`), in a worker
process (`process`) or in the CLI, with what it carries between tasks (`context`)."""

from reelq.dispatch.children import make_worker_id, worker_marker
from reelq.worker.context import Outcome, WorkerContext
from reelq.worker.run import load_inputs, run_task

__all__ = ["Outcome", "WorkerContext", "load_inputs", "make_worker_id", "run_task", "worker_marker"]
