"""Tiny random-weight diffusers pipelines, built in code and saved with `save_pretrained`.

The architectures are the real ones (Wan, LTX-Video) at toy widths, as diffusers' own tests build
them; the tokenizer is ByT5's, which needs no vocabulary file. Nothing is downloaded. Rendering with
them exercises the whole engine path on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path


def _text_encoder(kind: str):  # type: ignore[no-untyped-def]
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    # ByT5's vocabulary: 256 bytes + 3 specials + 125 sentinels.
    shape = {"vocab_size": 384, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}
    encoder = UMT5EncoderModel(UMT5Config(**shape)) if kind == "umt5" else T5EncoderModel(T5Config(**shape))
    return ByT5Tokenizer(), encoder


def save_wan(path: Path, *, image_to_video: bool = False, seed: int = 0) -> Path:
    """Wan 2.1-style text-to-video, or a Wan 2.2-style image-to-video (no CLIP: takes last_image)."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36 if image_to_video else 16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    tokenizer, text_encoder = _text_encoder("umt5")
    parts = {"transformer": transformer, "vae": vae, "scheduler": scheduler}
    parts |= {"text_encoder": text_encoder, "tokenizer": tokenizer}
    if image_to_video:
        pipe = WanImageToVideoPipeline(**parts, image_encoder=None, image_processor=None)
    else:
        pipe = WanPipeline(**parts)
    pipe.save_pretrained(path)
    return path


def save_ltx(path: Path, *, condition: bool = False, seed: int = 0) -> Path:
    """LTX-Video text-to-video (`LTXPipeline`) or its condition pipeline (first+last frame)."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXConditionPipeline,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    tokenizer, text_encoder = _text_encoder("t5")
    cls = LTXConditionPipeline if condition else LTXPipeline
    pipe = cls(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )
    pipe.save_pretrained(path)
    return path
