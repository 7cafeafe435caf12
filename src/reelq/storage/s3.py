"""S3 (or any S3-compatible store) video storage: uploaded after the render, served by presigned GETs.

Chosen by `REELQ_STORAGE_URL=s3://bucket/prefix`. Credentials, region and endpoint are boto3's own:
the standard `AWS_*` variables (`AWS_ENDPOINT_URL` for MinIO, R2, Ceph…), config files or an
instance role; reelq reads none of them itself.

- A render is still written to a local temporary file (`TempFiles`, the encoder wants a seekable
  file), then streamed up with `upload_file` (multipart past `MULTIPART_THRESHOLD`, parts sent in
  parallel, the file never held in memory) and deleted. An S3 object appears whole or not at all,
  so a half video is never served; the key carries the attempt, as on local files, so a late
  worker that lost its lease never replaces the winner's object (it deletes its own instead).
- `presigned_url` is a presigned GET (SigV4) that expires when the task's link does
  (`REELQ_VIDEO_URL_TTL` after completion): no Authorization, `Range` and `HEAD` work, the
  object's Content-Type is `video/mp4`. SigV4 caps a presigned URL at 7 days (config refuses a
  longer TTL with S3). URLs signed with temporary credentials (an STS session, an instance role)
  stop working when those credentials expire, whatever their own expiry says: give the API
  processes long-lived credentials, or a TTL shorter than the session.
- Expiry: the sweeper deletes the object once its link expired, like a local file; a bucket
  lifecycle rule on the prefix (docs/scale-out.md) is the backstop for objects nobody swept.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reelq.storage.base import TempFiles, video_key

log = logging.getLogger("reelq.storage")

MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNK = 8 * 1024 * 1024
UPLOAD_CONCURRENCY = 4
MAX_PRESIGN_SECONDS = 7 * 86400  # SigV4's limit on X-Amz-Expires
_READY_TIMEOUT = 3.0


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/") (prefix "" when none); ValueError if not."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("must be s3://bucket or s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise ValueError("must be s3://bucket/prefix without a query")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Storage(TempFiles):
    def __init__(self, url: str, temp_root: Path, client: Any = None, public_url: str | None = None) -> None:
        super().__init__(temp_root)
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "REELQ_STORAGE_URL is s3://… but boto3 is not installed: pip install 'reelq[s3]'"
            ) from None
        self.bucket, self.prefix = parse_s3_url(url)
        # Only what an upload needs; some S3-compatible stores refuse the newer default checksums.
        config = Config(
            # SigV4 everywhere: botocore still presigns with SigV2 in some regions, which newer
            # regions and many S3-compatible stores refuse, and whose expiry is not capped at 7 days.
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 5, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        self._client = client or session.client("s3", config=config)
        # Download links name the endpoint clients reach (REELQ_S3_PUBLIC_URL), else the one we use.
        self._presigner = (
            session.client("s3", config=config, endpoint_url=public_url) if public_url else self._client
        )
        # Readiness must answer fast and say "no" when S3 does not answer, not retry for a minute.
        self._probe = session.client(
            "s3",
            config=config.merge(
                Config(
                    connect_timeout=_READY_TIMEOUT, read_timeout=_READY_TIMEOUT, retries={"max_attempts": 1}
                )
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=UPLOAD_CONCURRENCY,
        )

    def object_key(self, key: str) -> str:
        return self.prefix + key

    # ---- videos -----------------------------------------------------------------------------
    def commit(self, temp: Path, task_id: str, attempt: int) -> str:
        """Upload a finished render (multipart when large) and delete the local file; its storage key."""
        key = video_key(task_id, attempt)
        self._client.upload_file(
            str(temp),
            self.bucket,
            self.object_key(key),
            ExtraArgs={
                "ContentType": "video/mp4",
                "ContentDisposition": f'inline; filename="{task_id}.mp4"',
            },
            Config=self._transfer,
        )
        temp.unlink(missing_ok=True)
        return key

    def delete(self, key: str) -> None:
        # DeleteObject of a missing key succeeds: a sweep that runs twice is harmless.
        self._client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def download(self, key: str, dest: Path) -> None:
        self._client.download_file(self.bucket, self.object_key(key), str(dest), Config=self._transfer)

    # ---- links ------------------------------------------------------------------------------
    @property
    def serves_files(self) -> bool:
        return False  # links are S3's own, presigned

    def presigned_url(self, key: str, expires: int) -> str:
        return self._presign(key, expires)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one storage per process; pollers re-read finished tasks
    def _presign(self, key: str, expires: int) -> str:
        # Signed now for the seconds left until the task's link expires, so every URL handed out for
        # a task stops working at the same moment, however late it was read (cached: same URL).
        seconds = min(MAX_PRESIGN_SECONDS, max(1, math.ceil(expires - time.time())))
        return self._presigner.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=seconds,
        )

    @functools.lru_cache(maxsize=1)  # noqa: B019 - one storage per process; every page load asks
    def link_origin(self) -> str | None:
        # Read off a real presigned link (signed locally, no request): boto3 picks the host (path
        # or virtual-hosted style, AWS_ENDPOINT_URL, region) and this is exactly what it picked.
        url = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_key("origin")}, ExpiresIn=60
        )
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def path(self, key: str) -> Path:
        raise TypeError(f"{key} is stored in S3, not on a local path (serves_files is False)")

    # ---- readiness --------------------------------------------------------------------------
    def problem(self) -> str | None:
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            reason = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
            return f"storage unavailable: S3 bucket {self.bucket!r}: {reason}"
        return None
