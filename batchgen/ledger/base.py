"""The typed base that :class:`~batchgen.ledger.store.Ledger` and its mixins share.

The ledger's methods are split over a few modules (:mod:`.store`, :mod:`.sync`,
:mod:`.reads`); the mixins there subclass :class:`LedgerBase`, which declares what
they use of the ledger: its connection, the current run and its generation of tasks,
and the writer. :class:`~batchgen.ledger.store.Ledger` sets and implements them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

__all__ = ["LedgerBase"]


class LedgerBase:
    """What the ledger's mixins rely on; :class:`~batchgen.ledger.store.Ledger` provides it."""

    # The connection. Reads use it directly; writes go through :meth:`run_in_writer`.
    _conn: aiosqlite.Connection
    # The current run (set by ``begin_run``), recorded with every event.
    run_id: int | None
    # The run whose sync labelled the tasks of the current spec (``last_run``).
    member_run: int | None

    async def run_in_writer(self, fn: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        """Run ``fn(conn)`` inside the writer's next transaction, in queue order."""
        raise NotImplementedError
