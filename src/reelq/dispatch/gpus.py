"""Which GPUs the render workers of this machine use, one worker per GPU by default.

`REELQ_GPUS` lists them ("0,1" or "none"); unset, a machine serving a diffusers model uses what
CUDA_VISIBLE_DEVICES allows or, without it, every GPU `nvidia-smi` lists. The supervisor gives
worker i the GPU `gpus[i % len(gpus)]` through CUDA_VISIBLE_DEVICES, so in each worker the model
simply loads on `cuda`. Found without importing torch: the API process never loads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reelq.config import Settings

GPU_ENGINES = frozenset({"diffusers"})


def worker_gpus(settings: Settings) -> list[str]:
    """The GPU ids render workers are spread over ([] when none is used)."""
    if settings.gpus is not None:
        return list(settings.gpus)
    if not any(entry.engine in GPU_ENGINES for entry in settings.catalog.values()):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return _nvidia_smi_gpus()


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


def default_worker_count(settings: Settings, gpus: list[str]) -> int:
    """REELQ_WORKERS when given; else one worker per GPU on a GPU node, else the settings' default."""
    if "workers" in settings.model_fields_set or not gpus:
        return settings.workers
    return len(gpus)
