"""The diffusers engine's speed and model options on the tiny random-weight pipelines (CPU).

Step caching (diffusers' first-block cache, cache-dit's DBCache): applied, removable, and the renders
after removing it (or with it off) are those of a model never cached. LoRAs: fused into the weights
at load at their scales, nothing of the adapters left. Pre-encode: frames are encoded while the VAE
still decodes, into the very same MP4. A model asking for a package this machine lacks is one
config error line. Random weights make quality numbers meaningless: none is asserted here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI") != "true":  # under CI the extra is installed: a missing one must fail
    pytest.importorskip("diffusers")

import torch

from reelq.config import ConfigError, load_settings
from reelq.domain import VideoSpec
from reelq.engines.base import RenderInputs
from reelq.engines.diffusers.engine import DiffusersEngine
from reelq.engines.diffusers.options import parse_options
from reelq.engines.diffusers.pipelines import LoadedModel, disable_cache, is_cached, load_model
from reelq.media import probe
from tests.tiny_pipelines import save_wan

pytestmark = [
    pytest.mark.service,
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"),
]

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {"wan": save_wan(root / "wan"), "wan-i2v": save_wan(root / "wan-i2v", image_to_video=True)}


def _load(weights: dict[str, Path], **options: Any) -> LoadedModel:
    base = {"pipeline": "WanPipeline", "weights": str(weights["wan"]), "steps": 4, "max_pixels": 4096}
    return load_model(parse_options(base | options), CPU)


def _frames(model: LoadedModel, steps: int = 6) -> torch.Tensor:
    """A direct pipeline call at a toy size (the engine's own call goes through `render`)."""
    with torch.inference_mode():
        out = model.text(
            prompt="a red fox", num_frames=5, height=32, width=32, num_inference_steps=steps,
            guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="pt",
        )  # fmt: skip
    return out.frames[0]


# --- step caching -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cache",
    [
        {"type": "first_block", "threshold": 1.0},
        pytest.param(
            {"type": "dbcache", "threshold": 1.0, "front_blocks": 1, "warmup_steps": 1},
            marks=pytest.mark.skipif(
                importlib.util.find_spec("cache_dit") is None, reason="the diffusers-fast extra"
            ),
        ),
    ],
)
def test_a_step_cache_applies_skips_steps_and_comes_off_cleanly(
    weights: dict[str, Path], cache: dict[str, Any]
) -> None:
    plain = _load(weights)
    assert not is_cached(plain.text)
    reference = _frames(plain)
    assert torch.equal(_frames(plain), reference)  # the toy render is deterministic

    cached = _load(weights, cache=cache)
    assert is_cached(cached.text)
    assert type(cached.options.cache).__name__ == {"first_block": "FirstBlockCache"}.get(
        cache["type"], "DBCache"
    )
    # Threshold 1: every step after the first (after the warm-up) reuses the cache, so the video differs.
    assert not torch.equal(_frames(cached), reference)
    if cache["type"] == "dbcache":
        import cache_dit

        stats = cache_dit.summary(cached.text)
        assert stats and stats[0].cached_steps, stats
    disable_cache(cached)
    assert not is_cached(cached.text)
    assert torch.equal(_frames(cached), reference)  # exactly the never-cached render


@pytest.mark.skipif(importlib.util.find_spec("cache_dit") is None, reason="the diffusers-fast extra")
def test_a_dbcache_computing_more_blocks_than_the_model_has_fails_at_load(weights: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"back_blocks \(8\) is more than the transformer.s 2"):
        _load(weights, cache={"type": "dbcache"})  # 8 front blocks by default; the toy model has 2


def test_the_cache_key_defaults_to_diffusers_first_block_cache(weights: dict[str, Path]) -> None:
    options = parse_options({"pipeline": "WanPipeline", "weights": str(weights["wan"]), "cache": {}})
    assert type(options.cache).__name__ == "FirstBlockCache" and options.cache.threshold == 0.05
    assert parse_options({"pipeline": "WanPipeline", "weights": "/x"}).cache is None


# --- packages a model asks for --------------------------------------------------------------------------


def _models_file(tmp_path: Path, weights: Path, extra: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f'[models.m]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{weights}"\n{extra}\n'
    )
    return path


@pytest.mark.parametrize(
    ("extra", "hidden", "message"),
    [
        ('attention_backend = "sage"', "sageattention", "attention_backend 'sage' needs sageattention"),
        ('attention_backend = "flash"', "flash_attn", "attention_backend 'flash' needs flash-attn"),
        ('attention_backend = "_flash_3"', "flash_attn_interface", "needs FlashAttention 3"),
        ('attention_backend = "flash_4_hub"', None, "downloads its kernel from the Hugging Face Hub"),
        ('cache = {type = "dbcache"}', "cache_dit", "cache type 'dbcache' needs the cache-dit package"),
        ('loras = [{path = "WEIGHTS"}]', "peft", "loras need the peft package"),
        ('loras = [{path = "/nowhere/lora.safetensors"}]', None, "/nowhere/lora.safetensors does not exist"),
    ],
)
def test_a_model_asking_for_a_missing_package_is_one_config_error_line(
    tmp_path: Path,
    weights: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    extra: str,
    hidden: str | None,
    message: str,
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == hidden else real_find_spec(name, *a)
    )
    path = _models_file(tmp_path, weights["wan"], extra.replace("WEIGHTS", str(weights["wan"])))
    with pytest.raises(ConfigError) as caught:
        load_settings(models_file=path, home=tmp_path / "home")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_attention_backends_that_come_with_torch_need_no_package(
    tmp_path: Path, weights: dict[str, Path]
) -> None:
    for backend in ("native", "_native_cudnn", "_native_flash", "_native_math"):
        path = _models_file(tmp_path, weights["wan"], f'attention_backend = "{backend}"')
        load_settings(models_file=path, home=tmp_path / "home")


# --- LoRAs -----------------------------------------------------------------------------------------------


def _save_lora(model: LoadedModel, path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every self-attention query of the tiny Wan transformer, in diffusers' format."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.text.transformer.named_modules():
        if name.endswith("attn1.to_q"):
            key = f"transformer.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator)
            tensors[f"{key}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator)
    save_file(tensors, path)
    return tensors


def test_loras_are_fused_at_load_at_their_scales_and_leave_no_adapter(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    base = _load(weights, dtype="float32")
    first = _save_lora(base, tmp_path / "distill.safetensors", seed=1)
    (tmp_path / "style").mkdir()
    second = _save_lora(base, tmp_path / "style" / "pytorch_lora_weights.safetensors", seed=2)
    loras = [{"path": str(tmp_path / "distill.safetensors"), "scale": 0.5}, {"path": str(tmp_path / "style")}]
    # A few-step distilled model as one models-file entry: its LoRA, 4 steps, no CFG.
    fused = _load(weights, dtype="float32", loras=loras, guidance=1.0)
    for i in range(2):
        key = f"transformer.blocks.{i}.attn1.to_q"
        delta = 0.5 * first[f"{key}.lora_B.weight"] @ first[f"{key}.lora_A.weight"]
        delta += second[f"{key}.lora_B.weight"] @ second[f"{key}.lora_A.weight"]
        expected = base.text.transformer.blocks[i].attn1.to_q.weight + delta
        layer = fused.text.transformer.blocks[i].attn1.to_q
        assert type(layer) is torch.nn.Linear  # the adapters' wrappers are gone
        torch.testing.assert_close(layer.weight, expected, rtol=1e-5, atol=1e-5)
    assert not [name for name, _ in fused.text.transformer.named_modules() if "lora" in name]
    assert not getattr(fused.text.transformer, "peft_config", None)
    # Layers the LoRAs do not touch are the base model's.
    untouched = fused.text.transformer.blocks[0].attn1.to_k.weight
    assert torch.equal(untouched, base.text.transformer.blocks[0].attn1.to_k.weight)
    assert not torch.equal(_frames(fused, steps=2), _frames(base, steps=2))


def test_a_lora_at_scale_zero_renders_the_base_model(weights: dict[str, Path], tmp_path: Path) -> None:
    base = _load(weights, dtype="float32")
    _save_lora(base, tmp_path / "l.safetensors", seed=3)
    zero = _load(weights, dtype="float32", loras=[{"path": str(tmp_path / "l.safetensors"), "scale": 0.0}])
    assert torch.equal(_frames(zero, steps=2), _frames(base, steps=2))


# --- pre-encode ------------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("image_to_video", [False, True])
def test_pre_encode_writes_frames_while_the_vae_decodes_into_the_same_mp4(
    weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_to_video: bool
) -> None:
    from PIL import Image

    from reelq.engines.diffusers import engine as engine_module

    spec = VideoSpec(model="m", prompt="a boat", duration=1, resolution="540p")
    inputs = RenderInputs()
    options: dict[str, Any] = {"steps": 2}
    if image_to_video:
        options |= {"i2v_pipeline": "WanImageToVideoPipeline", "i2v_weights": str(weights["wan-i2v"])}
        inputs = RenderInputs(first_image=Image.new("RGB", (300, 200), (200, 60, 60)))
    events: list[str] = []  # the VAE decoder's calls (one per latent frame) and frames handed to x264
    real_write = engine_module.Mp4Writer.write

    def write(self: Any, frame: Any) -> None:
        events.append("written")
        real_write(self, frame)

    monkeypatch.setattr(engine_module.Mp4Writer, "write", write)
    renders = {}
    for pre_encode in (False, True):
        model = _load(weights, pre_encode=pre_encode, **options)
        pipe = model.image if image_to_video else model.text
        pipe.vae.decoder.register_forward_hook(lambda *_: events.append("decoded"))
        events.clear()
        out = tmp_path / f"{pre_encode}.mp4"
        progress: list[float] = []
        DiffusersEngine(None, models={"m": model}).render(spec, inputs, out, progress.append)  # type: ignore[arg-type]
        renders[pre_encode] = out
        latent_frames = events.count("decoded")
        assert latent_frames == 5 and events.count("written") == 24  # 17 native frames: 1 + 4 x 4
        first_write = events.index("written")
        if pre_encode:
            # The first frame group is encoded before the VAE decodes the second.
            assert first_write < len(events) - events[::-1].index("decoded") - 1, events
        else:
            assert events[:latent_frames] == ["decoded"] * latent_frames
        assert progress == sorted(progress) and progress[-1] < 1
    assert probe(renders[True]).frame_count == 24
    assert _digest(renders[True]) == _digest(renders[False])


def test_conforming_in_pieces_gives_the_frames_of_the_whole_video() -> None:
    from reelq.engines.diffusers.frames import RenderPlan, conform, conform_stream

    spec = VideoSpec(model="m", prompt="p", duration=1, aspect_ratio="16:9", resolution="540p")
    render = RenderPlan(width=80, height=48, num_frames=17, fps=16)
    video = torch.rand(17, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    whole = list(conform(video, spec, render))
    pieces = [video[:1], *video[1:].split(4)]  # Wan's groups: 1 frame, then 4 per latent frame
    streamed = list(conform_stream(iter(pieces), spec, render))
    assert len(streamed) == len(whole) == 24
    assert all((a == b).all() for a, b in zip(streamed, whole, strict=True))
    with pytest.raises(ValueError, match="ended at native frame 13, the plan needs 16"):
        list(conform_stream(iter(pieces[:-1]), spec, render))


def test_the_cache_quality_check_compares_cached_and_uncached_renders_of_one_seed(
    weights: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from benchmarks.cache_quality import main, psnr, ssim

    video = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert psnr(video, video) == [float("inf")] * 3 and ssim(video, video) == pytest.approx([1.0] * 3)
    noisy = (video + 0.1 * torch.randn(video.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert all(15 < v < 25 for v in psnr(noisy, video)) and all(s < 0.99 for s in ssim(noisy, video))

    path = _models_file(tmp_path, weights["wan"], "steps = 4\nmax_pixels = 4096")
    cache = '{"type": "first_block", "threshold": 1.0}'
    (tmp_path / "prompts.txt").write_text("a red fox in snow\n\na boat at dawn\n")
    args = ["--models", str(path), "--model", "m", "--duration", "1", "--resolution", "540p"]
    args += ["--prompts", str(tmp_path / "prompts.txt")]
    assert main([*args, "--cache", cache, "--save", str(tmp_path / "out")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row["prompt"] for row in rows] == ["a red fox in snow", "a boat at dawn"]
    # The cache skipped steps, so the renders differ (how much means nothing with random weights).
    assert all(row["psnr_mean_db"] < float("inf") and row["ssim_worst"] <= 1 for row in rows)
    assert probe(tmp_path / "out" / "0-cached.mp4").frame_count == 24
