"""Admission: how many uploads the server takes at once, and how much memory their decodes may use.

A picture of a few hundred kilobytes can promise tens of millions of pixels (a 128 KB PNG of 6300x6300
takes about 4 s and 180 MB to decode), so uploads are admitted in two steps, each a :class:`Limiter`
that refuses instead of queueing without bound:

1. the middleware admits at most ``max_uploads`` requests to ``POST /api/search`` at once (their bodies
   being received, parsed and decoded); the next waits at most ``admission_wait`` seconds, then gets 503
   with ``Retry-After``;
2. the route admits at most ``max_decodes`` decodes at once whose estimated peak memory
   (:func:`lookalike.decoding.decode_cost`, from the image header) fits ``decode_memory_bytes``
   together; one image larger than the whole budget decodes alone. The same wait, then the same 503.

Nothing else waits on these: ``/health``, searches by id, browsing and thumbnails never do, and a big
decode runs in a worker thread, so the event loop keeps answering them.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from .responses import error_response

BUSY_MESSAGE = "the server is busy with other uploads; retry in a few seconds"


def busy_response(retry_after: float) -> object:
    """503 with ``Retry-After`` (whole seconds, at least 1); the connection is closed after it, so a body
    that was not read is not waited for."""
    return error_response(
        503, BUSY_MESSAGE, headers={"Retry-After": str(max(1, math.ceil(retry_after))), "Connection": "close"}
    )


class Limiter:
    """At most ``slots`` holders at once and, with a ``budget``, at most that much summed cost.

    A cost above the whole budget is charged as the budget (it runs alone). Used on one event loop only:
    create it inside the loop (the app's lifespan) and call everything from it.
    """

    def __init__(self, slots: int, budget: int | None = None) -> None:
        self.slots = int(slots)
        self.budget = None if budget is None else int(budget)
        self.active = 0  # holders now
        self.used = 0  # their summed (charged) cost
        self.refused = 0  # acquisitions that timed out
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _fits(self, charged: int) -> bool:
        if self.active >= self.slots:
            return False
        return self.budget is None or self.active == 0 or self.used + charged <= self.budget

    async def acquire(self, cost: int = 0, wait: float = 0.0) -> int | None:
        """Take a slot, waiting at most ``wait`` seconds; the cost charged (give it to :meth:`release`),
        or None when refused."""
        charged = 0 if self.budget is None else max(0, min(int(cost), self.budget))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        while not self._fits(charged):
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.refused += 1
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait([waiter], timeout=remaining)
            finally:
                self._waiters.remove(waiter)
        self.active += 1
        self.used += charged
        return charged

    def release(self, charged: int) -> None:
        """Give back a slot taken by :meth:`acquire`; wakes the waiters, which check again."""
        self.active -= 1
        self.used -= charged
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
