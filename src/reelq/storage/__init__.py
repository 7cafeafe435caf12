"""Video storage: local files the API serves, or S3 with presigned URLs (`REELQ_STORAGE_URL`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelq.storage.base import Storage, video_key
from reelq.storage.local import LocalStorage

if TYPE_CHECKING:
    from reelq.config import Settings


def build_storage(settings: Settings) -> Storage:
    """The storage `REELQ_STORAGE_URL` names: S3 for `s3://…`, else the local videos directory."""
    url = settings.storage_url
    if url and url.startswith("s3://"):
        from reelq.storage.s3 import S3Storage

        return S3Storage(url, settings.videos_dir, public_url=settings.s3_public_url)
    return LocalStorage(settings.videos_dir)


__all__ = ["LocalStorage", "Storage", "build_storage", "video_key"]
