"""Reading tasks back: pages by state, single rows, counts, money and audit trails.

This module owns :class:`ReadMixin`, the part of :class:`~batchgen.ledger.store.Ledger`
that reads the tasks table and the events. Reads run on the ledger's connection
directly, not through the writer's queue.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from batchgen.ledger.base import LedgerBase
from batchgen.ledger.schema import ROW_COLUMNS, TaskRow, TaskState, decode_row

__all__ = ["ReadMixin"]


class ReadMixin(LedgerBase):
    """The reads of :class:`~batchgen.ledger.store.Ledger`."""

    # --- reads ------------------------------------------------------------------------------

    async def page(
        self,
        states: Sequence[TaskState],
        *,
        after: tuple[int, str] = (-1, ""),
        limit: int = 500,
        in_run: bool = True,
        where: str = "",
        params: Sequence[Any] = (),
    ) -> list[TaskRow]:
        """Tasks in ``states`` after the cursor ``(seq, key)``, in that order, at most ``limit``.

        The cursor includes the key because tasks of an older spec keep their old
        ``seq``, which may equal a current one.
        """
        placeholders = ", ".join("?" for _ in states)
        sql = (
            f"SELECT {ROW_COLUMNS} FROM tasks WHERE state IN ({placeholders})"
            " AND (seq > ? OR (seq = ? AND key > ?))"
        )
        args: list[Any] = [s.value for s in states] + [after[0], after[0], after[1]]
        if in_run:
            sql += " AND last_run IS ?"
            args.append(self.member_run)
        if where:
            sql += f" AND ({where})"
            args.extend(params)
        sql += " ORDER BY seq, key LIMIT ?"
        args.append(limit)
        async with self._conn.execute(sql, args) as cur:
            return [decode_row(r) for r in await cur.fetchall()]

    async def iter_rows(
        self, states: Sequence[TaskState] | None = None, *, in_run: bool = False, page: int = 1000
    ) -> AsyncIterator[TaskRow]:
        """Every task (in ``states``), in seq order, read a page at a time."""
        wanted = list(states) if states is not None else list(TaskState)
        after = (-1, "")
        while True:
            rows = await self.page(wanted, after=after, limit=page, in_run=in_run)
            if not rows:
                return
            for row in rows:
                yield row
            after = (rows[-1].seq, rows[-1].key)

    async def done_files(
        self, *, page: int = 5000
    ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        """``(key, files)`` of every done task of this run; a light query for start-up."""
        after = -1
        while True:
            async with self._conn.execute(
                "SELECT key, seq, files FROM tasks WHERE state = 'done' AND seq > ?"
                " AND last_run IS ? ORDER BY seq LIMIT ?",
                (after, self.member_run, page),
            ) as cur:
                rows = await cur.fetchall()
            if not rows:
                return
            for key, seq, files in rows:
                after = seq
                yield str(key), json.loads(files) if files else []

    async def get(self, key: str) -> TaskRow | None:
        """One task by key."""
        async with self._conn.execute(
            f"SELECT {ROW_COLUMNS} FROM tasks WHERE key = ?", (key,)
        ) as cur:
            row = await cur.fetchone()
        return decode_row(row) if row else None

    async def counts(self, *, in_run: bool = False) -> dict[str, int]:
        """Tasks per state (every state present, zero included)."""
        sql = "SELECT state, COUNT(*) FROM tasks"
        args: tuple[Any, ...] = ()
        if in_run:
            sql += " WHERE last_run IS ?"
            args = (self.member_run,)
        sql += " GROUP BY state"
        out = {s.value: 0 for s in TaskState}
        async with self._conn.execute(sql, args) as cur:
            for state, count in await cur.fetchall():
                out[str(state)] = int(count)
        return out

    async def failures_by_code(self) -> dict[str, int]:
        """Failed and unknown tasks per error code."""
        out: dict[str, int] = {}
        async with self._conn.execute(
            "SELECT COALESCE(error_code, 'unknown'), COUNT(*) FROM tasks"
            " WHERE state IN ('failed', 'unknown') GROUP BY 1 ORDER BY 2 DESC"
        ) as cur:
            for code, count in await cur.fetchall():
                out[str(code)] = int(count)
        return out

    async def totals(self) -> dict[str, float]:
        """Money: ``spent`` (charged, not refunded, chat calls included), ``chat_spent``
        (the chat calls of generated axes), ``planned`` (price of every task)."""
        async with self._conn.execute(
            "SELECT COALESCE(SUM(charged), 0), COALESCE(SUM(price), 0),"
            " COALESCE(SUM(CASE WHEN state NOT IN ('done') THEN price ELSE 0 END), 0),"
            " COALESCE(SUM(regenerations), 0),"
            " (SELECT COALESCE(SUM(cost), 0) FROM chats) FROM tasks"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return {
            "spent": round(float(row[0]) + float(row[4]), 6),
            "chat_spent": round(float(row[4]), 6),
            "planned": round(float(row[1]), 6),
            "remaining": round(float(row[2]), 6),
            "regenerations": float(row[3]),
        }

    async def events_for(self, key: str) -> list[tuple[float, str, str | None]]:
        """The audit trail of one task: (time, state, detail)."""
        async with self._conn.execute(
            "SELECT at, state, detail FROM events WHERE key = ? ORDER BY id", (key,)
        ) as cur:
            return [(float(a), str(s), d) for a, s, d in await cur.fetchall()]

    async def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``ok`` when the file is sound."""
        async with self._conn.execute("PRAGMA integrity_check") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else "no answer"
