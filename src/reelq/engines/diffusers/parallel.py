"""How the ranks of a worker spanning several GPUs share one render's denoising loop.

Every rank runs the same pipeline call with the same arguments (same seed, same noise); what differs
is what each computes inside the transformer:

- `CfgSplit` ("cfg", 2 ranks): classifier-free guidance needs two transformer passes per step, the
  conditional and the unconditional one. Each rank computes one and they swap results with an
  all-gather, so every rank ends the step with both and takes the same scheduler step: the latents
  stay identical on both, and equal to a one-GPU render of the same seed.
- "ulysses" / "ring": diffusers' context parallelism (`enable_parallelism`), the sequence split
  over the ranks inside attention; every rank gets the whole output back.

`agree_to_stop` runs at the end of every step on every rank: when the leader must stop (cancel,
lease lost, deadline, drain), all ranks leave the loop at the same step, so none is left waiting in
a collective the others never reach.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

# What each family's pipelines do when guidance is on: Wan calls the transformer twice per step
# (conditional, then unconditional, batch of one each); LTX-Video once, on a doubled batch
# (unconditional half first).
PAIRED_FAMILIES = frozenset({"wan"})
# Ring attention merges partial results by their log-sum-exp, which torch's plain SDPA ("native") does
# not return: it needs one of these kernels (all GPU ones). Ulysses works with any backend that splits.
RING_BACKENDS = frozenset({"flash", "_native_cudnn", "_native_flash", "sage"})
DEFAULT_BACKENDS = {"ulysses": "native", "ring": "_native_cudnn"}


class CfgSplit:
    """Classifier-free guidance over two ranks: rank 0 the conditional branch, rank 1 the unconditional.

    Installed as the transformer's `forward`. Wan (paired calls): the conditional call runs on rank 0
    while rank 1 returns a buffer at once and goes on to the unconditional call, which it runs while
    rank 0 skips it; there the two results are exchanged and rank 1's buffer is filled in place before
    the pipeline reads it. LTX-Video (one call on a doubled batch): each rank runs its half.
    """

    def __init__(self, family: str, rank: int) -> None:
        if rank not in (0, 1):
            raise ValueError("cfg splits over exactly two ranks")
        self.paired = family in PAIRED_FAMILIES
        self.rank = rank
        self._calls = 0
        self._mine: torch.Tensor | None = None
        self._waiting: torch.Tensor | None = None  # rank 1's stand-in for the conditional output

    def install(self, transformer: Any) -> None:
        forward = transformer.forward
        out_channels = int(transformer.config.out_channels)

        def split_forward(*args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
            if args or kwargs.get("return_dict", True):
                raise RuntimeError("parallel = 'cfg' drives pipelines that call the transformer by keyword")
            if self.paired:
                return self._paired(forward, out_channels, kwargs)
            return self._batched(forward, kwargs)

        transformer.forward = split_forward

    def _paired(
        self, forward: Callable[..., Any], out_channels: int, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor]:
        conditional = self._calls % 2 == 0
        self._calls += 1
        hidden = kwargs["hidden_states"]
        if conditional:
            if self.rank == 0:
                self._mine = forward(**kwargs)[0]
                return (self._mine,)
            shape = (hidden.shape[0], out_channels, *hidden.shape[2:])
            self._waiting = torch.empty(shape, dtype=hidden.dtype, device=hidden.device)
            return (self._waiting,)
        if self.rank == 1:
            self._mine = forward(**kwargs)[0]
        mine = self._mine
        assert mine is not None
        parts = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(parts, mine.contiguous())
        cond, uncond = parts
        if self.rank == 1:
            assert self._waiting is not None
            self._waiting.copy_(cond)
        self._mine = self._waiting = None
        return (uncond,)

    def _batched(self, forward: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[torch.Tensor]:
        batch = kwargs["hidden_states"].shape[0]
        if batch % 2:
            return forward(**kwargs)  # guidance off for this call
        half = batch // 2
        start = self.rank * half

        def share(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                return value[start : start + half]
            return value

        mine = forward(**{key: share(value) for key, value in kwargs.items()})[0].contiguous()
        parts = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(parts, mine)
        return (torch.cat(parts),)


def enable_context_parallel(transformer: Any, mode: str, world: int, backend: str | None) -> None:
    """diffusers' context parallelism over the `world` ranks (the sequence split inside attention)."""
    from diffusers import ContextParallelConfig

    config = (
        ContextParallelConfig(ulysses_degree=world, ulysses_anything=True)
        if mode == "ulysses"
        else ContextParallelConfig(ring_degree=world, ring_anything=True)
    )
    if backend is None:  # the default may be one diffusers cannot split
        transformer.set_attention_backend(DEFAULT_BACKENDS[mode])
    with _mesh_without_accelerator():
        transformer.enable_parallelism(config=config)


@contextlib.contextmanager
def _mesh_without_accelerator() -> Iterator[None]:
    """diffusers places rank r on device `r % accelerator count`, which divides by zero on a machine
    without accelerator (the CPU ranks of the tests and of the benchmark's tiny mode): count one there."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    setattr(torch.accelerator, "device_count", lambda: 1)  # noqa: B010 - patched for this call only
    try:
        yield
    finally:
        setattr(torch.accelerator, "device_count", original)  # noqa: B010


def sequence_length(pipe: Any, family: str, width: int, height: int, num_frames: int) -> int:
    """The transformer's tokens for one render: what context parallelism splits over the ranks."""
    if family == "wan":
        p_t, p_h, p_w = pipe.transformer.config.patch_size
        frames = (num_frames - 1) // int(pipe.vae_scale_factor_temporal) + 1
        spatial = int(pipe.vae_scale_factor_spatial)
        return int(frames // p_t * (height // spatial // p_h) * (width // spatial // p_w))
    frames = (num_frames - 1) // int(pipe.vae_temporal_compression_ratio) + 1
    spatial = int(pipe.vae_spatial_compression_ratio) * int(pipe.transformer_spatial_patch_size)
    return int(frames * (height // spatial) * (width // spatial))


def split_problem(model: Any, pipe: Any, width: int, height: int, num_frames: int) -> str | None:
    """Why this render cannot be split over the model's ranks (checked before any rank starts it)."""
    options = model.options
    if options.parallel_mode not in ("ulysses", "ring"):
        return None
    tokens = sequence_length(pipe, options.family, width, height, num_frames)
    if tokens % options.gpus_per_worker:
        return (
            f"{width}x{height}, {num_frames} frames is {tokens} tokens, which {options.parallel_mode} cannot"
            f" split evenly over {options.gpus_per_worker} GPUs; ask for another size or duration"
        )
    return None


def agree_to_stop(stop: bool, device: torch.device) -> bool:
    """Whether any rank wants to stop after this step (every rank calls it at every step's end)."""
    flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def set_up(model: Any, rank: int, world: int) -> list[CfgSplit]:
    """Split a loaded model (`pipelines.LoadedModel`) over the group, as its options say."""
    options = model.options
    mode = options.parallel_mode
    pipes = [model.text] if model.image is None or model.image is model.text else [model.text, model.image]
    seen: set[int] = set()
    splits: list[CfgSplit] = []
    for pipe in pipes:
        for name in ("transformer", "transformer_2"):
            transformer = getattr(pipe, name, None)
            if transformer is None or id(transformer) in seen:
                continue
            seen.add(id(transformer))
            if mode == "cfg":
                # One split shared by a pipeline's two experts (Wan 2.2): calls alternate across them.
                if not splits:
                    splits.append(CfgSplit(options.family, rank))
                splits[0].install(transformer)
            else:
                enable_context_parallel(transformer, mode, world, options.attention_backend)
    return splits
