"""Encode RGB frames to MP4, probe MP4 files, fit images to a frame: PyAV, NumPy, Pillow.

No system ffmpeg: PyAV's wheels carry libavcodec with libx264.
"""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation
from PIL import Image

DEFAULT_FPS = 24

# Chosen by measurement (docs/performance.md, "Renders": real-time factor and file size per preset):
# superfast keeps CABAC and deblocking (ultrafast drops both and its files are the largest) and leaves
# about twice the required margin (3x real time at 720p, 1.5x at 1080p) on a busy machine or with
# several workers per core; veryfast would halve the files at noticeably more CPU per video.
DEFAULT_PRESET = "superfast"
# Visually clean for both flat synthetic gradients and photos (decoded PSNR ~42 dB synthetic, ~39 dB
# photo-like); x264's own default is 23.
DEFAULT_CRF = 20
# Adaptive quantisation spends extra bits on the faint grain of flat areas: on photo-like input it made
# files several times bigger (and encoding slower) for no measurable gain at this CRF (docs/performance.md,
# "Renders"); gradients showed no extra banding without it.
_X264_PARAMS = "aq-mode=0"
# x264's output depends on its thread count (frame threads change the lookahead and rate control), so it
# is pinned: the same frames give the same bytes whether the machine has 2 cores or 64.
X264_THREADS = 2
# One key frame every two seconds keeps seeking in a browser snappy at a small size cost.
KEYFRAME_SECONDS = 2

# BITEXACT asks swscale for output that does not depend on the CPU's SIMD flavour (ACCURATE_RND as well
# cost 25-30 % more conversion time for no visible gain). HD video is BT.709 limited range, and the stream
# says so, so players and decoders convert back with the same matrix.
_SWS_FLAGS = Interpolation.BILINEAR | Interpolation.BITEXACT

# RGB (0..255) to BT.709 limited-range Y'CbCr, the colour space every file is tagged with:
# yuv = BT709_RGB_TO_YUV @ rgb + YUV_OFFSET. For engines that draw straight into YUV planes.
_KR, _KB = 0.2126, 0.0722
BT709_RGB_TO_YUV = (
    np.array(
        [
            [219 * _KR, 219 * (1 - _KR - _KB), 219 * _KB],
            [-112 * _KR / (1 - _KB), -112 * (1 - _KR - _KB) / (1 - _KB), 112.0],
            [112.0, -112 * (1 - _KR - _KB) / (1 - _KR), -112 * _KB / (1 - _KR)],
        ]
    )
    / 255.0
)
YUV_OFFSET = np.array([16.0, 128.0, 128.0])

# Enough frames in flight for the encoder thread to never starve, few enough to bound memory (1080p RGB
# frames are 6 MB each).
_QUEUE_FRAMES = 4


class Mp4Writer:
    """Write RGB frames (H x W x 3 uint8) to an H.264 yuv420p MP4 with the moov atom first.

    Frames are converted and encoded on a background thread: swscale and x264 release the GIL, so on a
    2-core machine the caller builds the next frame while the previous one is encoded. A frame handed to
    `write` must not be modified afterwards. Used as a context manager, an exception inside the block
    aborts the encode and removes the partial file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: int = DEFAULT_FPS,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        threads: int = X264_THREADS,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"yuv420p needs a positive even frame size, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.frames_written = 0
        self._error: BaseException | None = None
        self._closed = False

        self._container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            stream = self._container.add_stream(
                "libx264", rate=fps, options={"preset": preset, "crf": str(crf), "x264-params": _X264_PARAMS}
            )
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # pts counts frames, so the duration is exactly frames / fps whatever timescale the muxer picks.
            stream.time_base = Fraction(1, fps)
            cc = stream.codec_context
            cc.time_base = Fraction(1, fps)
            cc.thread_count = threads
            cc.thread_type = "FRAME"
            cc.gop_size = max(1, KEYFRAME_SECONDS * fps)
            cc.colorspace = Colorspace.ITU709
            cc.color_range = ColorRange.MPEG
            cc.color_primaries = ColorPrimaries.BT709
            cc.color_trc = ColorTrc.BT709
        except BaseException:
            self._container.close()
            self.path.unlink(missing_ok=True)
            raise
        self._stream = stream
        self._queue: queue.Queue[tuple[np.ndarray, str] | None] = queue.Queue(maxsize=_QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._encode_loop, name="reelq-mp4-encoder", daemon=True)
        self._thread.start()

    def write(self, frame: np.ndarray) -> None:
        """Queue one RGB frame (H x W x 3 uint8); raises at once if the encoder thread has failed."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected a {self.height}x{self.width}x3 uint8 frame, got {frame.shape} {frame.dtype}"
            )
        self._put(frame, "rgb24")

    def write_yuv420p(self, planes: np.ndarray) -> None:
        """Queue one frame already in BT.709 limited-range yuv420p, in PyAV's layout: a (H*3/2) x W uint8
        array holding the Y plane, then U, then V, each plane contiguous (see `BT709_RGB_TO_YUV`).

        Skips the RGB to YUV conversion, about a third of the encoder thread's time per frame.
        """
        if planes.shape != (self.height * 3 // 2, self.width) or planes.dtype != np.uint8:
            raise ValueError(
                f"expected a {self.height * 3 // 2}x{self.width} uint8 yuv420p array, "
                f"got {planes.shape} {planes.dtype}"
            )
        self._put(planes, "yuv420p")

    def _put(self, array: np.ndarray, pix_fmt: str) -> None:
        if self._closed:
            raise RuntimeError("Mp4Writer is closed")
        self._raise_if_failed()
        self._queue.put((array, pix_fmt))
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (the faststart rewrite happens here)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without finishing and remove the partial file."""
        if not self._closed:
            self._closed = True
            # The encoder thread may be blocked on nothing but the queue; tell it to stop, discarding work.
            self._error = self._error or _Aborted()
            self._queue.put(None)
            self._thread.join()
            # The file is being thrown away: a failure to write its trailer does not matter.
            with contextlib.suppress(Exception):
                self._container.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.path.unlink(missing_ok=True)
                raise
        else:
            self.abort()

    def _raise_if_failed(self) -> None:
        if self._error is not None and not isinstance(self._error, _Aborted):
            raise RuntimeError(f"encoding {self.path.name} failed: {self._error}") from self._error

    def _encode_loop(self) -> None:
        pts = 0
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so a producer blocked on put() wakes up and sees the error
            array, pix_fmt = item
            try:
                if pix_fmt == "yuv420p":
                    vf = self._yuv_frame(array)
                else:
                    vf = av.VideoFrame.from_ndarray(array, format=pix_fmt).reformat(
                        format="yuv420p",
                        src_colorspace=Colorspace.ITU709,
                        dst_colorspace=Colorspace.ITU709,
                        dst_color_range=ColorRange.MPEG,
                        interpolation=_SWS_FLAGS,
                        threads=1,
                    )
                vf.pts = pts
                pts += 1
                for packet in self._stream.encode(vf):
                    self._container.mux(packet)
            except BaseException as exc:
                self._error = exc

    def _yuv_frame(self, array: np.ndarray) -> av.VideoFrame:
        # Copied plane by plane: PyAV's from_ndarray infers the height as rows // 6 * 4, wrong for heights
        # that are not a multiple of 4.
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        flat = array.reshape(-1)
        offset = 0
        for plane in frame.planes:
            w, h = plane.width, plane.height
            rows = np.frombuffer(memoryview(plane), np.uint8)[: plane.line_size * h].reshape(
                h, plane.line_size
            )
            rows[:, :w] = flat[offset : offset + w * h].reshape(h, w)
            offset += w * h
        return frame


class _Aborted(Exception):
    pass


def encode_frames(
    frames: Iterable[np.ndarray],
    out_path: str | os.PathLike[str],
    width: int,
    height: int,
    fps: int = DEFAULT_FPS,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    threads: int = X264_THREADS,
) -> int:
    """Encode every frame to `out_path` (removed again if anything fails); returns the frame count."""
    with Mp4Writer(out_path, width, height, fps, crf=crf, preset=preset, threads=threads) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


@dataclass(frozen=True, slots=True)
class Probe:
    """What a client of the file sees, read from the container without decoding the frames."""

    width: int
    height: int
    fps: float
    frame_count: int
    duration: float
    codec: str
    pix_fmt: str
    faststart: bool


def probe(path: str | os.PathLike[str]) -> Probe:
    """Read size, rate, frame count, codec and atom order of an MP4's first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ValueError(f"{path}: video stream has no frame rate")
        fps = float(rate)
        frame_count = stream.frames
        if frame_count <= 0:
            # Containers without a sample table entry count: count packets (no decoding).
            frame_count = sum(1 for p in container.demux(stream) if p.size)
        cc = stream.codec_context
        return Probe(
            width=cc.width,
            height=cc.height,
            fps=fps,
            frame_count=frame_count,
            duration=frame_count / fps,
            codec=cc.name,
            pix_fmt=cc.format.name if cc.format else "",
            faststart=_moov_before_mdat(Path(path)),
        )


def top_level_atoms(path: str | os.PathLike[str]) -> list[str]:
    """The types of an MP4's top-level boxes, in file order (reads only the box headers)."""
    atoms: list[str] = []
    size_total = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            size, kind = struct.unpack(">I4s", f.read(8))
            header = 8
            if size == 1:  # 64-bit size follows the type
                (size,) = struct.unpack(">Q", f.read(8))
                header = 16
            elif size == 0:  # box runs to the end of the file
                size = size_total - offset
            if size < header:
                break  # corrupt: stop rather than loop forever
            atoms.append(kind.decode("latin-1"))
            offset += size
    return atoms


def _moov_before_mdat(path: Path) -> bool:
    atoms = top_level_atoms(path)
    return "moov" in atoms and "mdat" in atoms and atoms.index("moov") < atoms.index("mdat")


def cover_box(src_width: int, src_height: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred source box with the target's aspect ratio that `cover_fit` scales to the target."""
    scale = max(width / src_width, height / src_height)
    box_w, box_h = width / scale, height / scale
    left, top = (src_width - box_w) / 2, (src_height - box_h) / 2
    return (left, top, left + box_w, top + box_h)


def cover_fit(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height and crop the centre (CSS `object-fit: cover`), as RGB."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size == (width, height):
        return img.copy()
    # One resample with a fractional source box: no double filtering, no off-by-one crop.
    return img.resize((width, height), Image.Resampling.LANCZOS, box=cover_box(*img.size, width, height))
