"""Large WebPs, checked in child processes: Pillow's WebP reader holds the GIL while it copies the
decoded frame and frees its canvases (a 40 MP WebP decoded on a thread stalled the event loop:
docs/performance.md, "Figures behind code choices"), and offers no reduced decode (`_webp` exposes
only libwebp's animation decoder, at full size)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from reelq.images.budget import BUDGET
from reelq.images.decode import check_bytes, decode
from reelq.images.limits import DECODE_SLOTS, ImageError, check_cost

# From how many pixels a WebP's create-time check runs in a child process. Below it the GIL-held copy is
# short (4 MP: 16 MB, a few ms) and a thread is cheaper than a round trip to another process.
WEBP_CHILD_PIXELS = 4_000_000
# A check that takes longer is stopped (its process killed) and the image refused: a 40 MP WebP takes
# under a second, so this is only ever reached by a decoder stuck on hostile input.
WEBP_CHECK_TIMEOUT = 60.0
# What a WebP check holds at its peak (`_plan`: the RGB or RGBA frame, 4 bytes a pixel, plus libwebp's
# canvases and Pillow's copy, 12).
_WEBP_CHECK_BYTES_PER_PIXEL = 16


class _WebpChecker:
    """Checks large WebPs (`check_image`) in a pool of child processes, so that no pixel work holds this
    process's GIL (the API's event loop runs here).

    Only the bytes go to the child and only the verdict (None, or the ImageError's message) comes back.
    The pool is started on first use (spawn, so no copy of the server's state or threads is inherited),
    has `DECODE_SLOTS` processes at most, and every check holds its cost in this process's decode budget
    while the child decodes: the children's memory is this host's memory too. A child that dies (killed
    for memory, say) breaks the pool: it is replaced, and the check is tried once more on the new one (the
    death may have been a neighbouring check's); a second death refuses the image with a clear message.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def check(self, data: bytes, field: str, size: tuple[int, int]) -> None:
        cost = size[0] * size[1] * _WEBP_CHECK_BYTES_PER_PIXEL
        check_cost(cost, field)
        with BUDGET.hold(cost):
            for _attempt in range(2):
                pool = self._current()
                try:
                    future = pool.submit(_check_in_child, data, field)
                    message = future.result(timeout=WEBP_CHECK_TIMEOUT)
                except FutureTimeout:  # first: since 3.11 it is the builtin TimeoutError, an OSError
                    self._discard(pool, kill=True)
                    raise ImageError(
                        field, f"could not be decoded: it took longer than {WEBP_CHECK_TIMEOUT:g} s."
                    ) from None
                except (BrokenProcessPool, OSError, RuntimeError):
                    # A child died, could not be started, or the pool was shut down under us.
                    self._discard(pool, kill=False)
                    continue
                if message is not None:
                    raise ImageError(field, message)
                return
        raise ImageError(
            field, "could not be decoded: the decoding process stopped unexpectedly (out of memory?); "
            "try again, or send a smaller image."
        )

    def pids(self) -> list[int]:
        """The process ids of the pool's children now (none before the first large WebP)."""
        with self._lock:
            return list(self._processes(self._pool))

    def close(self) -> None:
        """Stop the children (at server shutdown); a later check starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor, *, kill: bool) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        if kill:
            # A running task cannot be cancelled, and Python 3.11's executor has no way to stop its
            # workers (3.14's kill_workers): kill them by hand, the others' checks are retried.
            for process in self._processes(pool).values():
                with contextlib.suppress(OSError):
                    process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _processes(pool: ProcessPoolExecutor | None) -> dict[int, multiprocessing.process.BaseProcess]:
        return dict(getattr(pool, "_processes", None) or {})


def _start_child(parent: int) -> None:
    """Runs first in each pool child."""
    # Ctrl-C reaches the whole process group: the server shuts the pool down, the children need not
    # print a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The children hold both ends of the pool's pipes, so a server killed outright (kill -9) would leave
    # them waiting for work forever: leave with it.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _check_in_child(data: bytes, field: str) -> str | None:
    """`check_image` in a pool child, in this process: None if the image decodes, else why not (a reason)."""
    try:
        kind, _size = check_bytes(data, field)
        decode(data, kind, field, for_render=False).close()
    except ImageError as exc:
        return exc.reason
    except MemoryError:
        return "could not be decoded: out of memory."
    return None


def close_decoder_processes() -> None:
    """Stop the processes that check large WebPs (the API calls this at shutdown)."""
    WEBP_CHECKER.close()


WEBP_CHECKER = _WebpChecker(DECODE_SLOTS)
