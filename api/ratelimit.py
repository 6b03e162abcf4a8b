"""A sliding-window rate limit, kept in the memory of one API process."""

import math
import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most `limit` accepted hits per `window` seconds for each key. Refused hits are not counted.

    Not thread-safe: the API calls it from its event loop only. Each API process counts on its own.
    """

    def __init__(self, limit: int, *, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> int:
        """Count a hit for `key`: 0 when it is allowed, else the whole seconds until one will be."""
        now = self.clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(1, math.ceil(hits[0] + self.window - now))
        hits.append(now)
        return 0
