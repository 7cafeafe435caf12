"""The decode budget: how many decodes run at once in one process, and the bytes they hold together;
and the allocator setting that hands large decoded blocks back to the OS as soon as they are freed."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

from reelq.images.limits import DECODE_BUDGET_BYTES, DECODE_SLOTS


class DecodeBudget:
    """At most `slots` decodes at once in this process, holding at most `limit` bytes between them.

    A decode waits for room rather than failing: a burst of large images is decoded a few at a time,
    never all at once. (Costs above `limit` are refused before they get here.)
    """

    def __init__(self, limit: int, slots: int) -> None:
        self.limit = limit
        self.slots = slots
        self._used = 0
        self._running = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._running < self.slots and self._used + cost <= self.limit)
            self._used += cost
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._used -= cost
                self._running -= 1
                self._changed.notify_all()


# glibc's mallopt parameter number (malloc.h) and the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 8 * 1024 * 1024


def _map_large_blocks_apart() -> None:
    """Make glibc give every allocation of 8 MB or more its own mapping, returned to the OS when freed.

    Decoded pixels are large blocks (Pillow allocates images in 16 MB blocks; libwebp, libjpeg and the
    bytes of a frame in one piece). By default glibc raises its mmap threshold after the first such block
    is freed, and later ones come from the heaps of the decoding threads' arenas, where freed memory stays
    with the process: a burst of large creates left the API process gigabytes larger for good.
    malloc_trim after each burst would hand it back, but then every new image is zeroed (calloc) on reused
    memory while Pillow holds the GIL, stalling the event loop several times longer than with fresh
    mappings, which the kernel zeroes lazily as the decoder (not holding the GIL) writes them (figures:
    docs/performance.md, "Figures behind code choices").
    8 MB keeps smaller buffers (a 1080p video frame is 6 MB) on the heap as before. Process-wide, set once
    by whichever process imports this module; elsewhere than glibc there is nothing to set.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


_map_large_blocks_apart()
BUDGET = DecodeBudget(DECODE_BUDGET_BYTES, DECODE_SLOTS)
