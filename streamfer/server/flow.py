"""Per-connection (per face, for frames that name one) flow control: one frame in flight, the
newest waiting; a frame-rate cap.

A phone that sends faster than the server answers must lose frames, not fall behind: the
user wants the expression on their face now, not a queue of old ones. So each connection
keeps at most one frame in the pipeline (decode -> batch queue -> inference -> reply) and
one waiting behind it; a newer frame replaces the waiting one, which is answered
"superseded". Plain synchronous objects: they are used from the event loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestGate(Generic[T]):
    """Admits one item at a time; keeps only the newest item that arrives meanwhile.

    `offer(item)` answers (run_now, superseded): run `item` now when nothing is in flight,
    else it waits and the item it replaced (if any) is returned to be answered "superseded".
    When the running item is answered, `done()` hands over the waiting one (now in flight),
    or None when the gate is idle again.
    """

    def __init__(self) -> None:
        self._busy = False
        self._waiting: T | None = None

    @property
    def busy(self) -> bool:
        return self._busy

    def offer(self, item: T) -> tuple[bool, T | None]:
        if not self._busy:
            self._busy = True
            return True, None
        superseded, self._waiting = self._waiting, item
        return False, superseded

    def done(self) -> T | None:
        nxt, self._waiting = self._waiting, None
        self._busy = nxt is not None
        return nxt

    def take_waiting(self) -> T | None:
        """Remove and return the waiting item (to answer it at shutdown or disconnect)."""
        item, self._waiting = self._waiting, None
        return item


class RateLimiter:
    """Token bucket: `rate` frames per second on average, bursts of up to `burst` frames.

    The burst absorbs network jitter (two frames arriving together after a stall) without
    letting a client exceed the rate over any longer stretch. rate <= 0 disables the cap.
    """

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(2.0, rate / 4.0)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
