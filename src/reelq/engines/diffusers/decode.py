"""Wan's VAE decode, frame group by frame group, so each group is encoded while the next decodes.

Wan's VAE is causal in time: `AutoencoderKLWan._decode` runs its decoder over one latent frame at a
time (carrying a cache of the previous frames' features) and concatenates the results. Here the same
loop, over the same module, with the same feature cache, yields each group as soon as it exists
(1 frame for the first latent frame, `vae_scale_factor_temporal` for each later one) after the same
un-patchify, clamp and post-processing the pipeline applies to the whole clip: the frames are the
same, only earlier. The engine falls back to the pipeline's own decode where this loop would not be
the one the pipeline runs (a tiled VAE, offloading hooks, a VAE of another class).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify


def can_stream(pipe: Any) -> bool:
    """Whether `decode_groups` decodes exactly as this pipeline's own call would."""
    vae = getattr(pipe, "vae", None)
    if type(vae) is not AutoencoderKLWan or getattr(vae, "use_tiling", False):
        return False
    # accelerate's offload hooks move the VAE in and out around `decode`, which is bypassed here.
    return getattr(vae, "_hf_hook", None) is None


def decode_groups(pipe: Any, latents: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield a Wan pipeline's video for `latents` (what `output_type="latent"` returned) as (frames, 3,
    h, w) tensors in [0, 1], group by group: what `output_type="pt"` returns, in pieces."""
    vae = pipe.vae
    config = vae.config
    # As the pipeline does before `vae.decode`: un-normalise the latents in the VAE's precision.
    latents = latents.to(vae.device, dtype=vae.dtype)
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
    std = 1.0 / std.to(latents.device, latents.dtype)
    latents = latents / std + mean
    vae.clear_cache()
    try:
        x = vae.post_quant_conv(latents)
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(
                x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0
            )
            if config.patch_size is not None:
                out = unpatchify(out, patch_size=config.patch_size)
            out = torch.clamp(out, min=-1.0, max=1.0)
            yield pipe.video_processor.postprocess_video(out, output_type="pt")[0]
    finally:
        vae.clear_cache()
