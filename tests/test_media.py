"""media.py: real MP4 files, decoded again with PyAV rather than trusting the writer."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from reelq.media import (
    BT709_RGB_TO_YUV,
    YUV_OFFSET,
    Mp4Writer,
    Probe,
    cover_fit,
    encode_frames,
    probe,
    top_level_atoms,
)
from tests.videos import decode_frames, psnr


def moving_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """Smooth gradients with a moving square: content x264 cannot reduce to nothing."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        f = np.empty((height, width, 3), np.float32)
        f[..., 0] = 128 + 100 * np.sin(xs / 37 + i / 5)
        f[..., 1] = 128 + 100 * np.cos(ys / 29 - i / 7)
        f[..., 2] = 128 + 100 * np.sin((xs + ys) / 41 + i / 3)
        x0 = (i * 7) % (width - 40)
        f[40:80, x0 : x0 + 40] = (250, 240, 20)
        frames.append(f.clip(0, 255).astype(np.uint8))
    return frames


def box_types(path: Path) -> list[str]:
    """Top-level MP4 boxes, walked independently of media.top_level_atoms."""
    data = path.read_bytes()
    types, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[offset + 8 : offset + 16])
        types.append(kind.decode("latin-1"))
        offset += size if size else len(data)
    return types


def test_encode_is_h264_yuv420p_24fps_faststart_with_exact_duration(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    frames = moving_frames(320, 240, 48)
    assert encode_frames(frames, out, 320, 240) == 48

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.format.name == "yuv420p"
        assert stream.average_rate == 24
        assert stream.duration * stream.time_base == Fraction(2)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 48
    assert decoded[0].shape == (240, 320, 3)
    types = box_types(out)
    assert types.index("moov") < types.index("mdat")
    # Decent quality: every frame close to what was written (and in the right order).
    for i in (0, 1, 23, 47):
        assert psnr(decoded[i], frames[i]) > 35, i
    assert psnr(decoded[10], frames[30]) < 20


def test_probe_reads_the_container(tmp_path: Path) -> None:
    out = tmp_path / "p.mp4"
    encode_frames(moving_frames(256, 144, 120), out, 256, 144)
    assert probe(out) == Probe(
        width=256,
        height=144,
        fps=24.0,
        frame_count=120,
        duration=5.0,
        codec="h264",
        pix_fmt="yuv420p",
        faststart=True,
    )
    assert top_level_atoms(out) == box_types(out)


def test_probe_detects_a_file_without_faststart(tmp_path: Path) -> None:
    out = tmp_path / "slow.mp4"
    with av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i, frame in enumerate(moving_frames(64 * 2, 64 * 2, 12)):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:64, :64]), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    types = box_types(out)
    assert types.index("mdat") < types.index("moov")
    info = probe(out)
    assert info.faststart is False
    assert (info.width, info.height, info.frame_count) == (64, 64, 12)


def test_same_frames_give_identical_output(tmp_path: Path) -> None:
    frames = moving_frames(320, 180, 30)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    encode_frames(frames, a, 320, 180)
    encode_frames(iter(frames), b, 320, 180)
    assert a.read_bytes() == b.read_bytes()
    assert all(np.array_equal(x, y) for x, y in zip(decode_frames(a), decode_frames(b), strict=True))


def to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """RGB -> planar yuv420p with the module's matrix, chroma averaged over 2 x 2 blocks."""
    h, w, _ = rgb.shape
    yuv = rgb.astype(np.float64) @ BT709_RGB_TO_YUV.T + YUV_OFFSET
    chroma = yuv[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))
    flat = np.concatenate([yuv[..., 0].ravel(), chroma[..., 0].ravel(), chroma[..., 1].ravel()])
    return np.round(flat).clip(0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


@pytest.mark.parametrize("height", [240, 202], ids=["mod4", "mod2"])
def test_yuv_frames_decode_to_the_rgb_they_came_from(tmp_path: Path, height: int) -> None:
    # The matrix, the writer's colour tags and a decoder's conversion back must all agree, or colours shift.
    frames = moving_frames(320, height, 24)
    out = tmp_path / "yuv.mp4"
    with Mp4Writer(out, 320, height) as writer:
        for frame in frames:
            writer.write_yuv420p(to_yuv420p(frame))
    decoded = decode_frames(out)
    assert len(decoded) == 24
    for i in (0, 12, 23):
        assert psnr(decoded[i], frames[i]) > 35, i
        assert np.abs(decoded[i].mean(axis=(0, 1)) - frames[i].mean(axis=(0, 1))).max() < 2
    # The same frames through the RGB path decode to nearly the same pictures.
    rgb_out = tmp_path / "rgb.mp4"
    encode_frames(frames, rgb_out, 320, height)
    assert psnr(decode_frames(rgb_out)[12], decoded[12]) > 38


def test_writer_rejects_wrong_frames_and_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="uint8"), Mp4Writer(out, 64, 64) as writer:
        writer.write(np.zeros((64, 64, 3), np.uint8))
        writer.write(np.zeros((64, 32, 3), np.uint8))
    assert not out.exists()

    with pytest.raises(ValueError, match="uint8"), Mp4Writer(out, 64, 64) as writer:
        writer.write(np.zeros((64, 64, 3), np.float32))
    assert not out.exists()

    with pytest.raises(ValueError, match="yuv420p"), Mp4Writer(out, 64, 64) as writer:
        writer.write_yuv420p(np.zeros((64, 64), np.uint8))
    assert not out.exists()


def test_writer_needs_even_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", 101, 64)
    assert not (tmp_path / "odd.mp4").exists()


def test_exception_inside_writer_removes_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "partial.mp4"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), Mp4Writer(out, 128, 128) as writer:
        for frame in moving_frames(128, 128, 30):
            writer.write(frame)
        raise Boom
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_cover_fit_scales_to_cover_and_crops_the_centre() -> None:
    # Three vertical bands: red | green | blue, 300x100. Covering 100x100 keeps the green middle.
    img = Image.new("RGB", (300, 100))
    img.paste((255, 0, 0), (0, 0, 100, 100))
    img.paste((0, 255, 0), (100, 0, 200, 100))
    img.paste((0, 0, 255), (200, 0, 300, 100))
    square = cover_fit(img, 100, 100)
    assert square.size == (100, 100) and square.mode == "RGB"
    arr = np.asarray(square)
    assert arr[5:95, 5:95].reshape(-1, 3).mean(axis=0) == pytest.approx((0, 255, 0), abs=3)

    # Covering a wide frame from the same image scales up 4x in width: the height is cropped, not padded.
    wide = np.asarray(cover_fit(img, 1200, 200))
    assert wide.shape == (200, 1200, 3)
    assert wide[:, :350].reshape(-1, 3).mean(axis=0) == pytest.approx((255, 0, 0), abs=3)
    assert wide[:, 850:].reshape(-1, 3).mean(axis=0) == pytest.approx((0, 0, 255), abs=3)

    # A tall target from a wide source keeps the middle third only (scaled up).
    tall = np.asarray(cover_fit(img, 90, 160))
    assert tall.shape == (160, 90, 3)
    assert tall.reshape(-1, 3).mean(axis=0) == pytest.approx((0, 255, 0), abs=3)


def test_cover_fit_converts_modes_and_copies_same_size() -> None:
    rgba = Image.new("RGBA", (64, 48), (10, 20, 30, 128))
    out = cover_fit(rgba, 64, 48)
    assert out.mode == "RGB" and out.size == (64, 48)
    assert out is not rgba
    gray = cover_fit(Image.new("L", (10, 10), 200), 40, 20)
    assert gray.mode == "RGB" and gray.size == (40, 20)
    assert np.asarray(gray)[5, 5].tolist() == [200, 200, 200]
