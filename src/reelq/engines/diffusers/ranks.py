"""A render worker spanning N GPUs: the leader (rank 0) and the N-1 follower processes it starts.

The leader is the ordinary render worker: it claims tasks, reports progress, encodes and stores.
At start it spawns one follower per further GPU (`python -m reelq.engines.diffusers.ranks`), hands
each its rank and the models to load through its stdin, and joins them in a `torch.distributed`
group (nccl on GPUs, gloo on the CPU). Every rank loads the same multi-GPU models in the same order
(setting up context parallelism is itself collective). For each render the leader writes the
request to every follower's stdin; all ranks then run the denoising loop in lockstep and only the
leader decodes and encodes.

Failure: a follower that dies ends the leader with `RANK_LOST_EXIT_CODE` (a sentinel thread waits
on each follower; a collective that fails because a peer vanished waits for it too). The worker's
supervisor then expires its lease and starts a fresh group, and the task is retried or failed like
any task of a crashed worker. A follower ends when its leader does: its stdin closes, or its parent
changes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

import torch
import torch.distributed as dist

from reelq.domain import VideoSpec
from reelq.engines.base import RenderInputs

log = logging.getLogger(__name__)

RANK_LOST_EXIT_CODE = 88
# Joining and loading the weights on every rank: minutes for a large checkpoint.
JOIN_TIMEOUT = timedelta(minutes=20)
# After a collective failed: how long to wait for the sentinel to see the follower that caused it.
LOST_GRACE_SECONDS = 10.0
STOP_FOLLOWERS_SECONDS = 10.0
PARENT_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class RenderRequest:
    """What a follower needs to run the same pipeline call as the leader."""

    model: str
    spec: VideoSpec
    inputs: RenderInputs


def rank_device(requested: str, rank: int) -> torch.device:
    """Rank r's device: cuda:r of the worker's group (CUDA_VISIBLE_DEVICES), or the CPU."""
    from reelq.engines.diffusers.pipelines import pick_device

    device = pick_device(requested)
    return torch.device("cuda", rank) if device.type == "cuda" else device


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exit_lost(reason: str) -> None:
    log.critical(
        "%s: ending this worker (exit %d); a fresh group retries the task", reason, RANK_LOST_EXIT_CODE
    )
    logging.shutdown()
    os._exit(RANK_LOST_EXIT_CODE)


class RankGroup:
    """The leader's side: its followers, the process group, and the requests it sends them."""

    def __init__(
        self, world: int, models: dict[str, dict[str, Any]], on_lost: Callable[[str], None] = _exit_lost
    ) -> None:
        self.world = world
        self._on_lost = on_lost
        self._closing = threading.Event()
        self._lost = threading.Event()
        port = _free_port()
        backend = _backend()
        self.followers: list[subprocess.Popen[bytes]] = []
        for rank in range(1, world):
            proc = subprocess.Popen(
                [sys.executable, "-m", "reelq.engines.diffusers.ranks"], stdin=subprocess.PIPE
            )
            assert proc.stdin is not None
            header = {"rank": rank, "world": world, "port": port, "backend": backend, "models": models}
            pickle.dump(header, proc.stdin)
            proc.stdin.flush()
            self.followers.append(proc)
            threading.Thread(
                target=self._watch, args=(rank, proc), daemon=True, name=f"reelq-rank{rank}"
            ).start()
        if backend == "nccl":
            torch.cuda.set_device(0)
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=world, timeout=JOIN_TIMEOUT
        )
        atexit.register(self.close)  # a worker ending normally stops its followers, not as lost ranks
        log.info(
            "rank group of %d joined (%s; followers %s)", world, backend, [p.pid for p in self.followers]
        )

    def _watch(self, rank: int, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        if self._closing.is_set():
            return
        self._lost.set()
        self._on_lost(f"rank {rank} (pid {proc.pid}) exited with {code}")

    def ready(self) -> None:
        """Every rank has loaded its models: the worker may claim."""
        dist.barrier()

    def announce(self, request: RenderRequest) -> None:
        """Start the followers on the render the leader is about to run."""
        for proc in self.followers:
            assert proc.stdin is not None
            try:
                pickle.dump(request, proc.stdin)
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.after_failure()
                raise

    def after_failure(self) -> None:
        """A collective (or a write to a follower) failed: if a follower died, end as a lost rank."""
        if self._lost.wait(LOST_GRACE_SECONDS):
            self._on_lost("a rank of this worker died during the render")

    def close(self) -> None:
        """Stop the followers (their stdin closes: they exit) and leave the group."""
        if self._closing.is_set():
            return
        self._closing.set()
        for proc in self.followers:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        deadline = time.monotonic() + STOP_FOLLOWERS_SECONDS
        for proc in self.followers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class FollowerStopped(Exception):
    """The leader stopped the render at this step: the follower waits for the next one."""


def _watch_parent(parent: int) -> None:
    """A follower whose leader died (kill -9) must not stay behind holding its GPU."""
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


def follower_main(stream: IO[bytes]) -> None:
    """A follower process: join the group, load the models, render what the leader announces."""
    from reelq.engines.diffusers.engine import denoise_arguments
    from reelq.engines.diffusers.options import parse_options
    from reelq.engines.diffusers.parallel import agree_to_stop, set_up
    from reelq.engines.diffusers.pipelines import load_model

    header = pickle.load(stream)
    rank, world = int(header["rank"]), int(header["world"])
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(message)s")
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    if header["backend"] == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        header["backend"],
        init_method=f"tcp://127.0.0.1:{header['port']}",
        rank=rank,
        world_size=world,
        timeout=JOIN_TIMEOUT,
    )
    models = {}
    for name, raw in header["models"].items():  # the leader's order: setting up is collective
        options = parse_options(raw)
        models[name] = load_model(options, rank_device(options.device, rank))
        set_up(models[name], rank, world)
    dist.barrier()
    log.info("rank %d of %d ready (%s)", rank, world, ", ".join(models))
    while True:
        try:
            request: RenderRequest = pickle.load(stream)
        except EOFError:
            return  # the leader closed the group or is gone
        model = models[request.model]
        pipe = model.image if request.inputs.first_image is not None else model.text
        assert pipe is not None  # the leader announces only renders it has a pipeline for

        def on_step(_pipe: Any, _step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if agree_to_stop(False, model.device):  # noqa: B023 - called within this iteration only
                raise FollowerStopped
            return tensors

        args = denoise_arguments(model, pipe, request.spec, request.inputs) | {"output_type": "latent"}
        try:
            with torch.inference_mode():
                pipe(**args, callback_on_step_end=on_step)
        except FollowerStopped:
            continue


if __name__ == "__main__":
    from reelq.engines.diffusers import ranks  # the importable module, whose classes requests pickle

    ranks.follower_main(sys.stdin.buffer)
