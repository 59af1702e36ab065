"""Read-your-writes for the status endpoints: ``/metrics`` and ``/health/detailed`` show every event
acknowledged before the read began.

Export is asynchronous, so a read right after a ``202`` could miss it. Before answering, a read notes
where each spool ends (the other intake processes' shards, then the main spool once those are copied
into it) and waits until the export side has recorded up to there — bounded by
``OTELSVC_READ_AFTER_WRITE_MS``: past it, the read answers with what is there and is counted as stale
(the export side down, or far behind).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ..spool import Position, end_position

__all__ = ["FreshReads"]

_POLL_SECONDS = 0.005


class FreshReads:
    """Holds a status read until the export side caught up with it (at most ``timeout`` seconds)."""

    def __init__(
        self,
        main: Path,
        shards: Sequence[Path],
        *,
        copied_to: Callable[[Path], Position],
        recorded: Callable[[], Awaitable[Position | None]],
        stale: Callable[[str], None],
        timeout: float,
    ) -> None:
        """``copied_to(shard)``: how far a shard was copied into ``main``; ``recorded()``: how far the
        export side recorded ``main``; ``stale(path)``: count a read that gave up waiting."""
        self._main = main
        self._shards = shards
        self._copied_to = copied_to
        self._recorded = recorded
        self._stale = stale
        self._timeout = timeout

    async def wait(self, path: str) -> bool:
        """Wait until every event acknowledged so far is recorded; False (counted) if time ran out."""
        if self._timeout <= 0:
            return True
        deadline = time.monotonic() + self._timeout
        for shard, end in [(shard, end_position(shard)) for shard in self._shards]:
            while self._copied_to(shard) < end:
                if not await _pause(deadline):
                    return self._gave_up(path)
        end = end_position(self._main)
        while (recorded := await self._recorded()) is None or recorded < end:
            if not await _pause(deadline):
                return self._gave_up(path)
        return True

    def _gave_up(self, path: str) -> bool:
        self._stale(path)
        return False


async def _pause(deadline: float) -> bool:
    """Sleep a poll interval unless ``deadline`` passed; whether there was time left."""
    if time.monotonic() >= deadline:
        return False
    await asyncio.sleep(_POLL_SECONDS)
    return True
