"""Video storage: local directory with signed URLs (S3 with presigned URLs comes with scale-out)."""

from reelq.storage.local import LocalStorage

__all__ = ["LocalStorage"]
