"""Cover images: a finished video's first frame as a JPEG, behind a signed link like the video's.

The Vidu platform's `creations[].cover_url` and OpenAI's `variant=thumbnail` both want a still of
the video. It is made on first request from the stored MP4 (one frame decoded with PyAV, encoded
with Pillow, in a thread) and kept in a small in-memory cache: nothing more to store, sweep or
delete, and a deleted or expired video has no cover because the route checks the row first.

The link is `/v1/files/covers/<id>.jpg?expires=…&signature=…`, HMAC-SHA256 with the server's
signing secret over that path and the expiry, the same rule and lifetime as the video's link
(storage/local.py), so a video link's signature never opens a cover and the reverse.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

COVER_ROUTE = "/v1/files/covers/{task_id}.jpg"
MAX_CACHED = 64
JPEG_QUALITY = 85


def cover_path(task_id: str) -> str:
    return COVER_ROUTE.format(task_id=task_id)


class Covers:
    """Signs cover links and makes (and caches) the JPEGs."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def signature(self, task_id: str, expires: int) -> str:
        message = f"{cover_path(task_id)}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, base_url: str, task_id: str, expires: int) -> str:
        return (
            f"{base_url}{cover_path(task_id)}?expires={expires}&signature={self.signature(task_id, expires)}"
        )

    def verify(self, task_id: str, expires: int, signature: str) -> bool:
        expected = self.signature(task_id, expires).encode("ascii")
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))

    def jpeg(self, task_id: str, video_key: str, storage: object) -> bytes:
        """The first frame of the task's stored video as a JPEG (blocking: call it in a thread)."""
        cache_key = (task_id, video_key)
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
        try:
            path = storage.path(video_key)  # type: ignore[attr-defined]
        except FileNotFoundError:
            path = None  # stored elsewhere (S3): fetch a local copy to decode
        if path is not None:
            data = first_frame_jpeg(path)
        else:
            with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
                storage.download(video_key, Path(tmp.name))  # type: ignore[attr-defined]
                data = first_frame_jpeg(Path(tmp.name))
        with self._lock:
            self._cache[cache_key] = data
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return data


def first_frame_jpeg(path: Path) -> bytes:
    """Decode one frame (the first) of an MP4 and encode it as a JPEG."""
    import av  # the encoder's library: imported where a cover is made, not by every API import

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        image = frame.to_image()
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
