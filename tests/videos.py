"""Checks on MP4s that never trust the server's word: decode them with PyAV."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np


def decode_frames(source: Path | bytes) -> list[np.ndarray]:
    """Every frame of an MP4 (a path or its bytes) as RGB arrays."""
    opened = av.open(io.BytesIO(source)) if isinstance(source, bytes) else av.open(str(source))
    with opened as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
