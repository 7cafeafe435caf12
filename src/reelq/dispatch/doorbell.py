"""Wake idle embedded workers the moment a task is queued, without polling the database.

Each worker binds a Unix datagram socket in REELQ_HOME/run; whoever queues a task
sends one byte to every socket there. A lost ring costs nothing but latency: workers
still look for work every `FALLBACK_POLL_SECONDS`, and the sweeper rings for rows that
sat queued too long.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

FALLBACK_POLL_SECONDS = 1.0
SOCKET_GLOB = "worker-*.sock"


def ring(run_dir: Path) -> int:
    """Notify every listening worker on this host; returns how many were reached."""
    reached = 0
    try:
        entries = list(run_dir.glob(SOCKET_GLOB))
    except OSError:
        return 0
    if not entries:
        return 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for entry in entries:
            try:
                sock.sendto(b"!", str(entry))
                reached += 1
            except BlockingIOError:
                reached += 1  # its queue is full of rings already: it is awake anyway
            except (ConnectionRefusedError, FileNotFoundError):
                # A worker that died without unlinking its socket.
                with contextlib.suppress(OSError):
                    entry.unlink()
            except OSError:
                continue
    return reached


class DoorbellListener:
    """The worker's side: wait for a ring or a timeout."""

    def __init__(self, run_dir: Path, name: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / f"worker-{name}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))

    def wait(self, timeout: float = FALLBACK_POLL_SECONDS) -> bool:
        """True when rung (all pending rings are drained), False on timeout."""
        self._sock.settimeout(timeout)
        try:
            self._sock.recv(64)
        except (TimeoutError, InterruptedError):
            return False
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self._sock.recv(64):
                pass
        return True

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
