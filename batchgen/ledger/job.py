"""A job's ledgers read as one: the root's, or every shard's.

``status``, ``export``, ``plan``, ``check``, the gallery and ``merge`` see a sharded job
as one job: :func:`open_job` opens every ledger it has (read only unless asked: a run
may be writing them) and :class:`JobLedgers` reads across them, rows in plan order.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from batchgen.errors import LedgerError
from batchgen.ledger.paths import Shard, job_ledgers, ledger_path
from batchgen.ledger.schema import TaskRow, TaskState
from batchgen.ledger.store import Ledger
from batchgen.spec.load import Spec

__all__ = ["JobLedgers", "open_job"]


@dataclass(slots=True)
class JobLedgers:
    """The ledgers of one job, each with its shard (None: the unsharded ledger)."""

    ledgers: list[tuple[Shard | None, Ledger]]

    @property
    def sharded(self) -> bool:
        """Whether the job runs as shards."""
        return any(shard is not None for shard, _ in self.ledgers)

    async def iter_rows(self, states: Sequence[TaskState] | None = None) -> AsyncIterator[TaskRow]:
        """Every task of every ledger (in ``states``), in plan order (seq, then key)."""
        iterators = [ledger.iter_rows(states) for _, ledger in self.ledgers]
        heads: list[tuple[int, str, int, TaskRow]] = []
        for i, iterator in enumerate(iterators):
            row = await anext(iterator, None)
            if row is not None:
                heads.append((row.seq, row.key, i, row))
        heapq.heapify(heads)
        while heads:
            _, _, i, row = heapq.heappop(heads)
            yield row
            following = await anext(iterators[i], None)
            if following is not None:
                heapq.heappush(heads, (following.seq, following.key, i, following))

    async def counts(self) -> dict[str, int]:
        """Tasks per state over every ledger (every state present, zero included)."""
        counts = dict.fromkeys((s.value for s in TaskState), 0)
        for _, ledger in self.ledgers:
            for state, n in (await ledger.counts()).items():
                counts[state] += n
        return counts

    async def done_keys(self) -> frozenset[str]:
        """The keys of every done task."""
        return frozenset([row.key async for row in self.iter_rows([TaskState.DONE])])


@asynccontextmanager
async def open_job(spec: Spec, *, read_only: bool = True) -> AsyncIterator[JobLedgers]:
    """Open every ledger of ``spec``'s job. Raises LedgerError when it has none yet."""
    found = job_ledgers(spec)
    if not found:
        raise LedgerError(f"no ledger at {ledger_path(spec)}: nothing has run yet")
    async with AsyncExitStack() as stack:
        opened: list[tuple[Shard | None, Ledger]] = []
        for shard, path in found:
            ledger = await stack.enter_async_context(
                Ledger.open(path, create=False, read_only=read_only)
            )
            opened.append((shard, ledger))
        yield JobLedgers(opened)
