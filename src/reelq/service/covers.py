"""Cover images: a finished video's first frame as a JPEG, behind a signed link like the video's.

The Vidu platform's `creations[].cover_url` and OpenAI's `variant=thumbnail` both want a still of
the video. It is made on first request from the stored MP4 (one frame decoded with PyAV, encoded
with Pillow, in a thread) and kept in a small in-memory cache: nothing more to store, sweep or
delete, and a deleted or expired video has no cover because the route checks the row first.

The link is `/v1/files/covers/<id>.jpg?expires=…&signature=…`, signed and timed like the video's
by the one link signer (service/links.py, purpose "cover"), so a video link's signature never
opens a cover and the reverse.
"""

from __future__ import annotations

import io
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from reelq.storage import Storage

MAX_CACHED = 64
MAX_CACHED_BYTES = 16 * 1024 * 1024  # a 1080p first frame is a few hundred KB
# Covers decoded at once per API process (each ~30 ms of CPU): more wait their turn on the event loop
# (api/files.py), holding no thread of the pool that authentication and reads share.
COVER_SLOTS = 2
JPEG_QUALITY = 85


class Covers:
    """Makes (and caches) the JPEGs."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def cached(self, task_id: str, video_key: str) -> bytes | None:
        """The cover if it was made recently (cheap: no thread, no decoding slot needed)."""
        cache_key = (task_id, video_key)
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
            return cached

    def jpeg(self, task_id: str, video_key: str, storage: Storage) -> bytes:
        """The first frame of the task's stored video as a JPEG (blocking: call it in a thread).

        Looks in the cache again first: requests that queued for a slot behind the one making this
        cover find it made."""
        cache_key = (task_id, video_key)
        cached = self.cached(task_id, video_key)
        if cached is not None:
            return cached
        if storage.serves_files:
            data = first_frame_jpeg(storage.path(video_key))
        else:  # stored elsewhere (S3): fetch a local copy to decode
            with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
                storage.download(video_key, Path(tmp.name))
                data = first_frame_jpeg(Path(tmp.name))
        with self._lock:
            if cache_key not in self._cache:
                self._cache[cache_key] = data
                self._cached_bytes += len(data)
            over_bytes = self._cached_bytes > MAX_CACHED_BYTES
            while len(self._cache) > MAX_CACHED or (over_bytes and len(self._cache) > 1):
                self._cached_bytes -= len(self._cache.popitem(last=False)[1])
                over_bytes = self._cached_bytes > MAX_CACHED_BYTES
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
