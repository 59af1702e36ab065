"""When the spool is synced: group commit (``always``: requests wait for an fsync that started after their
write, sharing one among many) and the fsync timer (``interval``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .writer import SpoolWriter

__all__ = ["GroupCommit", "sync_every"]


class GroupCommit:
    """Runs ``sync`` in a thread, once for all the writers that arrived while the previous one ran."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._next: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        """Return once everything written before the call is on stable storage (or raise OSError)."""
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
        future = self._next
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        await asyncio.shield(future)

    async def _run(self) -> None:
        # The future taken here is resolved by an fsync that starts after every write made before
        # its waiters called ``wait``: writes during a running fsync wait for the next one.
        while self._next is not None:
            future, self._next = self._next, None
            try:
                await asyncio.to_thread(self._sync)
            except OSError as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)


async def sync_every(writer: SpoolWriter, seconds: float) -> None:
    """fsync the spool every ``seconds`` (``OTELSVC_SPOOL_FSYNC=interval``), until cancelled."""
    while True:
        await asyncio.sleep(seconds)
        writer.sync()
