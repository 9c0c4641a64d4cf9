"""Wake long polls when a request changes.

Changes made in this process wake waiters at once; changes made by another
process sharing the store are seen by re-reading it at a bounded interval.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

__all__ = ["RequestWatch"]


class RequestWatch:
    def __init__(self) -> None:
        self._events: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self.closing = False

    def close(self) -> None:
        """Wake every waiter: the server is stopping and answers now."""
        self.closing = True
        for request_id in list(self._events):
            self.changed(request_id)

    def changed(self, request_id: str) -> None:
        for event in self._events.pop(request_id, ()):
            event.set()

    async def wait(self, request_id: str, timeout: float) -> bool:
        """Wait for a change or ``timeout`` seconds; ``True`` if woken."""
        if self.closing:
            return True
        event = asyncio.Event()
        waiters = self._events[request_id]
        waiters.add(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters.discard(event)
            if not waiters and self._events.get(request_id) is waiters:
                del self._events[request_id]
