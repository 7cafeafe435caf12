"""What scripts/test-image checks against a running container (or compose stack) from the host.

Usage: python scripts/image_smoke.py API_KEY BASE_URL [BASE_URL ...]

Creates a task on the first API, follows it on every API given (a scaled stack's replicas share one
database), downloads the video and decodes every frame: an MP4 that plays, not only a 200. Exits
non-zero with the reason on the first thing that is wrong.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import av
import httpx

DEADLINE = 180.0  # seconds for the task to finish: a synthetic 1 s render takes well under one


def main(key: str, first: str, *others: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as http:
        models = http.get(f"{first}/v1/models", headers=headers)
        models.raise_for_status()
        model = models.json()["data"][0]["id"]
        created = http.post(
            f"{first}/v1/vidu/videos",
            headers=headers,
            json={"model": model, "prompt": "a container ship at dawn", "duration": 1, "resolution": "540p"},
        )
        created.raise_for_status()
        task_id = created.json()["id"]
        task = created.json()
        deadline = time.monotonic() + DEADLINE
        while task["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                sys.exit(f"task {task_id} still {task['status']} after {DEADLINE:.0f} s")
            answer = http.get(f"{first}/v1/result/{task_id}", params={"wait": 10}, headers=headers)
            answer.raise_for_status()
            task = answer.json()
        if task["status"] != "completed":
            sys.exit(f"task {task_id} failed: {task['error']}")
        for other in others:  # every replica answers for the task, with a link that works
            seen = http.get(f"{other}/v1/result/{task_id}", headers=headers)
            seen.raise_for_status()
            if seen.json()["status"] != "completed":
                sys.exit(f"{other} says task {task_id} is {seen.json()['status']}")
        video = http.get(httpx.URL(first + "/").join(task["video_url"]), follow_redirects=True)
        video.raise_for_status()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "video.mp4"
            path.write_bytes(video.content)
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                frames = sum(1 for _ in container.decode(stream))
                size = (stream.codec_context.width, stream.codec_context.height)
                codec = stream.codec_context.name
        if frames != 24 or size != (960, 540) or codec != "h264":
            sys.exit(f"unexpected video: {frames} frames, {size}, {codec}")
        shape = f"{frames} frames {size[0]}x{size[1]} {codec}"
        print(f"ok: {task_id} on {model}: {len(video.content)} bytes, {shape}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
