"""Which GPUs the render workers of this machine use, one worker per GPU by default.

`REELQ_GPUS` lists them ("0,1" or "none"); unset, a machine serving a diffusers model uses what
CUDA_VISIBLE_DEVICES allows or, without it, every GPU `nvidia-smi` lists. A node whose models span
several GPUs per worker (`gpus_per_worker`) cuts the list into contiguous groups ("0,1", "2,3").
The supervisor gives worker i the group `groups[i % len(groups)]` through CUDA_VISIBLE_DEVICES, so
in each worker the model simply loads on `cuda` (and its ranks on cuda:0..N-1). Found without
importing torch: the API process never loads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING

from reelq.config import ConfigError
from reelq.engines import rendered_models
from reelq.engines.diffusers.options import parse_options

if TYPE_CHECKING:
    from reelq.config import Settings

GPU_ENGINES = frozenset({"diffusers"})


def worker_gpus(settings: Settings) -> list[str]:
    """The GPU ids render workers are spread over ([] when none is used)."""
    if settings.gpus is not None:
        return list(settings.gpus)
    # Only the models this node renders (its pools'): a CPU pool's node needs no GPU.
    if not any(settings.catalog[m].engine in GPU_ENGINES for m in rendered_models(settings)):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return _nvidia_smi_gpus()


def gpus_per_worker(settings: Settings) -> int:
    """How many GPUs each render worker of this node spans: its models' `gpus_per_worker`.

    A model on one GPU renders on its worker's first GPU, so it can share a node with models that span
    N; two different N > 1 on one node cannot both hold: the workers would need groups of two sizes.
    """
    sizes = {
        parse_options(settings.catalog[m].options).gpus_per_worker
        for m in rendered_models(settings)
        if settings.catalog[m].engine in GPU_ENGINES
    }
    sizes.discard(1)
    if len(sizes) > 1:
        raise ConfigError(
            "invalid configuration: REELQ_MODELS: the models of one node must agree on gpus_per_worker"
            f" (found {', '.join(str(n) for n in sorted(sizes))}); serve them from separate pools"
        )
    return sizes.pop() if sizes else 1


def worker_gpu_groups(settings: Settings) -> list[str]:
    """What each render worker gets as CUDA_VISIBLE_DEVICES: one GPU ("0") or a group ("0,1")."""
    gpus = worker_gpus(settings)
    n = gpus_per_worker(settings)
    if n == 1 or not gpus:  # no GPU: the ranks of a multi-GPU model run on the CPU (tests)
        return gpus
    if len(gpus) % n:
        raise ConfigError(
            f"invalid configuration: gpus_per_worker = {n} does not divide the {len(gpus)} GPUs"
            f" this node uses ({','.join(gpus)}); list a multiple of {n} in REELQ_GPUS"
        )
    return [",".join(gpus[i : i + n]) for i in range(0, len(gpus), n)]


def _nvidia_smi_gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def default_worker_count(settings: Settings, gpus: list[str], fallback: int | None = None) -> int:
    """REELQ_WORKERS when given; else none when this node renders no model (a relay-only gateway: its
    relay worker holds every task), one per GPU (or GPU group, `worker_gpu_groups`) on a GPU node, else
    `fallback` or the settings' default."""
    if "workers" in settings.model_fields_set:
        return settings.workers
    if not rendered_models(settings):
        return 0
    if not gpus:
        return settings.workers if fallback is None else fallback
    return len(gpus)
