"""Waking the relay worker for one task: the API's callback route -> the worker's datagram socket.

The callback route's URL is here too: the relay worker sends it upstream, the API serves it.

The relay worker binds `worker-relay-<pid>.sock` in the run directory, beside the render workers'
doorbells, so a doorbell ring (b"!": new tasks queued) reaches it too. A poke names one task
(b"poke:<task id>"): the worker holding it reads the upstream's status at once instead of at its
next scheduled poll. A lost poke costs latency only: polling stays the fallback.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

RELAY_SOCKET_PREFIX = "worker-relay-"
POKE_PREFIX = b"poke:"
# The API's callback route (service/relay.py, api/relay.py); the relay worker hands its URL upstream.
CALLBACK_ROUTE = "/callbacks/vidu/{task_id}"


def callback_url(public_base_url: str, task_id: str) -> str:
    """Where the platform calls back for one of our tasks (its path is part of what it signs)."""
    return public_base_url + CALLBACK_ROUTE.format(task_id=task_id)


def relay_socket_path(run_dir: Path, pid: int) -> Path:
    return run_dir / f"{RELAY_SOCKET_PREFIX}{pid}.sock"


def poke(run_dir: Path, task_id: str) -> int:
    """Tell every relay worker on this host to read `task_id`'s upstream status now; how many heard."""
    try:
        entries = list(run_dir.glob(f"{RELAY_SOCKET_PREFIX}*.sock"))
    except OSError:
        return 0
    reached = 0
    message = POKE_PREFIX + task_id.encode("ascii", "replace")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for entry in entries:
            try:
                sock.sendto(message, str(entry))
                reached += 1
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    entry.unlink()  # a worker that died without removing its socket
            except OSError:
                continue  # full queue: the worker is busy reading; polling covers this poke
    return reached
