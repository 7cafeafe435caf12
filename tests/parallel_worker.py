"""The leader of a two-rank worker (gloo on the CPU), run as its own process by test_diffusers_parallel.

`python -m tests.parallel_worker render MODELS HOME OUT` loads the models file's multi-GPU models on
two ranks and renders: one render stopped at its second step (every rank leaves the loop there), one
that context parallelism cannot split evenly (refused before any rank starts it), then one MP4 per
model into OUT. It prints one line per event.

`python -m tests.parallel_worker kill MODELS HOME` is a render worker: it claims the next task and
renders it, killing its follower at the first step. The process must end with `RANK_LOST_EXIT_CODE`
and leave the task to the supervisor's recovery.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from reelq.config import load_settings
from reelq.domain import VideoSpec
from reelq.engines.base import ProgressCallback, RenderAborted, RenderError, RenderInputs

STOP_AT_CALL = 2


def _spec(model: str, ratio: str = "1:1") -> VideoSpec:
    # 1:1 at the tiny models' 4096 pixels: 64x64, a token count two ranks split evenly.
    return VideoSpec(
        model=model, prompt="a red fox in snow", duration=1, aspect_ratio=ratio, resolution="540p"
    )


def render(models: Path, home: Path, out: Path) -> None:
    from reelq.engines.diffusers.engine import DiffusersEngine

    engine = DiffusersEngine(load_settings(models_file=models, home=home))
    calls: list[float] = []

    def stop_at_second_step(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == STOP_AT_CALL:
            raise RenderAborted("cancelled")

    try:
        engine.render(_spec("wan"), RenderInputs(), out / "stopped.mp4", stop_at_second_step)
    except RenderAborted:
        print("stopped", len(calls), flush=True)
    try:
        engine.render(_spec("wan-ulysses", "16:9"), RenderInputs(), out / "odd.mp4", lambda _: None)
    except RenderError as exc:
        print("refused", exc, flush=True)
    for model in sys.argv[5:]:
        engine.render(_spec(model), RenderInputs(), out / f"{model}.mp4", lambda _: None)
        print("rendered", model, flush=True)
    engine.close()


class _KillsItsFollower:
    """The engine, with the follower killed when the first step reports its progress."""

    name = "diffusers"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def render(
        self, spec: VideoSpec, inputs: RenderInputs, out_path: Path, progress: ProgressCallback
    ) -> None:
        def kill_first(fraction: float) -> None:
            for proc in self.engine.group.followers:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    print("killed", proc.pid, flush=True)
            progress(fraction)

        self.engine.render(spec, inputs, out_path, kill_first)


def kill(models: Path, home: Path) -> None:
    from reelq.worker.bootstrap import end_worker_process, render_context
    from reelq.worker.run import run_task

    settings = load_settings(models_file=models, home=home)
    ctx = render_context(settings, "w0", hard_stop=end_worker_process)
    ctx.engines = {name: _KillsItsFollower(engine) for name, engine in ctx.engines.items()}
    task = ctx.store.claim_next(ctx.worker_id, settings.lease_seconds)
    assert task is not None
    print("claimed", task.id, flush=True)
    outcome = run_task(ctx, task)
    print("finished", outcome, flush=True)  # not reached: the worker ends as a lost rank


if __name__ == "__main__":
    mode, models_file, home_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if mode == "render":
        render(models_file, home_dir, Path(sys.argv[4]))
    else:
        kill(models_file, home_dir)
