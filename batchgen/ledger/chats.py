"""Chat calls in the ledger: what was asked for a generated axis, and what it cost.

A chat call can be charged, so it is recorded like a task submission: ``sending``
(committed) before the request leaves, then ``answered`` with the raw text, the request
id, the tokens and the cost as soon as the answer is in, or ``failed`` (the service
refused it: not charged) or ``unknown`` (the answer was lost after the request left:
it may have been charged). A row left ``sending`` by a crash becomes ``unknown`` at the
next start. An answered row's values are reused by the next lock of the same axis until
they are in the lockfile (``locked_at``), so a crash between the answer and the lock
never pays for the same values twice.

This module owns :class:`ChatMixin`, the part of :class:`~batchgen.ledger.store.Ledger`
that reads and writes the ``chats`` table (migration ``0004_chat``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from batchgen.errors import redact
from batchgen.ledger.base import LedgerBase

__all__ = ["ChatMixin", "ChatRow"]

SENDING, ANSWERED, FAILED, UNKNOWN = "sending", "answered", "failed", "unknown"


@dataclass(frozen=True, slots=True)
class ChatRow:
    """One chat call as the ledger holds it."""

    id: int
    axis: str
    asked: str
    model: str
    state: str
    request_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float
    cost_source: str | None
    answer: str | None


_COLUMNS = (
    "id, axis, asked, model, state, request_id, prompt_tokens, completion_tokens, cost,"
    " cost_source, answer"
)


class ChatMixin(LedgerBase):
    """The chat calls of :class:`~batchgen.ledger.store.Ledger`."""

    async def chat_intent(
        self, *, axis: str, asked: str, model: str, request: Mapping[str, Any]
    ) -> int:
        """Record a chat call about to be sent (``sending``); return its id once durable."""
        body = json.dumps(request, ensure_ascii=False, separators=(",", ":"))
        run = self.run_id

        async def insert(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "INSERT INTO chats (run, axis, asked, model, request, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run, axis, asked, model, redact(body), SENDING, time.time()),
            )
            return int(cur.lastrowid or 0)

        return int(await self.run_in_writer(insert))

    async def chat_answered(
        self,
        chat_id: int,
        *,
        answer: str,
        request_id: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost: float,
        cost_source: str,
    ) -> None:
        """Record the answer of a chat call (``answered``), durably."""

        async def update(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE chats SET state = ?, answer = ?, request_id = ?, prompt_tokens = ?,"
                " completion_tokens = ?, cost = ?, cost_source = ?, answered_at = ?"
                " WHERE id = ?",
                (
                    ANSWERED,
                    answer,
                    request_id,
                    prompt_tokens,
                    completion_tokens,
                    cost,
                    cost_source,
                    time.time(),
                    chat_id,
                ),
            )

        await self.run_in_writer(update)

    async def chat_failed(
        self,
        chat_id: int,
        *,
        accepted: bool,
        code: str,
        message: str,
        request_id: str | None = None,
        partial: str | None = None,
        cost: float = 0.0,
    ) -> None:
        """Record a chat call that got no usable answer: ``unknown`` if the service may
        have taken (and charged) it, else ``failed``; ``partial`` is what came before."""

        async def update(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE chats SET state = ?, error_code = ?, error_message = ?, request_id = ?,"
                " answer = ?, cost = ?, answered_at = ? WHERE id = ?",
                (
                    UNKNOWN if accepted else FAILED,
                    code,
                    redact(message)[:2000],
                    request_id,
                    partial,
                    cost,
                    time.time(),
                    chat_id,
                ),
            )

        await self.run_in_writer(update)

    async def chat_recover(self) -> int:
        """Chat calls a dead process left ``sending`` become ``unknown``; return how many."""

        async def update(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "UPDATE chats SET state = ?, error_code = 'interrupted',"
                " error_message = 'stopped before the answer was recorded' WHERE state = ?",
                (UNKNOWN, SENDING),
            )
            return int(cur.rowcount or 0)

        return int(await self.run_in_writer(update))

    async def chat_answers(self, axis: str, asked: str) -> list[ChatRow]:
        """Answered calls for ``axis`` asked the same way whose values no lock holds yet."""
        async with self._conn.execute(
            f"SELECT {_COLUMNS} FROM chats WHERE axis = ? AND asked = ? AND state = ?"
            " AND locked_at IS NULL ORDER BY id",
            (axis, asked, ANSWERED),
        ) as cur:
            return [ChatRow(*row) for row in await cur.fetchall()]

    async def chat_locked(self, ids: Sequence[int]) -> None:
        """Mark answers as held by the lockfile: they are never reused again."""
        if not ids:
            return
        now = time.time()

        async def update(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE chats SET locked_at = ? WHERE id = ?", [(now, i) for i in ids]
            )

        await self.run_in_writer(update)

    async def chat_supersede(self, axis: str) -> int:
        """Before an axis is asked again on purpose (``--refresh``): its answers that no
        lock holds are set aside, so the new values are new. Returns how many."""

        async def update(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "UPDATE chats SET locked_at = ? WHERE axis = ? AND state = ? AND locked_at IS NULL",
                (time.time(), axis, ANSWERED),
            )
            return int(cur.rowcount or 0)

        return int(await self.run_in_writer(update))

    async def chat_totals(self) -> dict[str, float]:
        """Chat calls by state and their cost: ``calls``, ``answered``, ``unknown``, ``spent``."""
        async with self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(state = 'answered'), 0),"
            " COALESCE(SUM(state = 'unknown'), 0), COALESCE(SUM(cost), 0) FROM chats"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return {
            "calls": float(row[0]),
            "answered": float(row[1]),
            "unknown": float(row[2]),
            "spent": round(float(row[3]), 6),
        }
