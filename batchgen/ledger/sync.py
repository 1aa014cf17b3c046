"""Changing many task rows at once: syncing the spec's tasks in, and bulk state changes.

This module owns :class:`SyncMixin`, the part of :class:`~batchgen.ledger.store.Ledger`
that inserts the spec's planned tasks (or adopts the last sync's when the spec did not
change), counts the tasks the spec no longer lists, and moves every matching task to a
new state (crash recovery, ``retry``, the tasks of a model the key may not use). Each
change runs in the writer, so it is committed in queue order with the transitions
around it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from batchgen.errors import redact
from batchgen.ledger.base import LedgerBase
from batchgen.ledger.schema import INSERT_SQL, REFRESH_SQL, NewTask, TaskState

__all__ = ["SyncMixin"]


class SyncMixin(LedgerBase):
    """Syncing the spec and bulk changes of :class:`~batchgen.ledger.store.Ledger`."""

    # --- syncing the spec -------------------------------------------------------------

    async def sync(self, tasks: Iterable[NewTask], *, batch: int = 2000) -> tuple[int, int]:
        """Insert new tasks and refresh known ones; returns (added, total seen).

        Rows already in the ledger keep their state; their order, output path and
        price follow the current spec. Tasks no longer in the spec are left alone
        (see :meth:`count_not_in_run`).
        """
        run_id = self.run_id
        added = 0
        seen = 0
        chunk: list[tuple[Any, ...]] = []

        async def flush(rows: list[tuple[Any, ...]]) -> int:
            async def ins(conn: aiosqlite.Connection) -> int:
                before = conn.total_changes
                await conn.executemany(INSERT_SQL, rows)
                inserted = conn.total_changes - before
                await conn.executemany(REFRESH_SQL, [(r[1], r[7], r[8], r[11], r[0]) for r in rows])
                return inserted

            return int(await self.run_in_writer(ins))

        now = time.time()
        for t in tasks:
            chunk.append(
                (
                    t.key,
                    t.seq,
                    t.endpoint,
                    t.model,
                    t.prompt,
                    json.dumps(t.request, separators=(",", ":"), sort_keys=True),
                    json.dumps(t.vars, separators=(",", ":"), sort_keys=True),
                    t.layout_path,
                    t.price,
                    now,
                    now,
                    run_id,
                )
            )
            seen += 1
            if len(chunk) >= batch:
                added += await flush(chunk)
                chunk = []
        if chunk:
            added += await flush(chunk)

        async def mark(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE runs SET spec_tasks = ? WHERE id = ?", (seen, run_id))
            # The generation later runs of this spec adopt: a sync that dies half-way
            # labels some rows with its run id, so "the newest label" is not it.
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('member_run', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(run_id),),
            )

        await self.run_in_writer(mark)
        return added, seen

    async def adopt_last_sync(self) -> bool:
        """Keep the tasks of the last sync as this run's tasks (the spec did not change).

        No row is rewritten: this run adopts the last sync's generation, so a resume of
        a large job starts in constant time. Returns False, adopting nothing, when a
        later sync died half-way and relabelled rows: then the caller must sync.
        """
        run_id = self.run_id

        async def adopt(conn: aiosqlite.Connection) -> int | None:
            generation = await last_generation(conn)
            async with conn.execute("SELECT MAX(last_run) FROM tasks") as cur:
                top = await cur.fetchone()
            if top is not None and top[0] is not None and int(top[0]) != generation:
                return None
            async with conn.execute(
                "SELECT spec_tasks FROM runs WHERE spec_tasks IS NOT NULL ORDER BY id DESC LIMIT 1"
            ) as cur:
                row = await cur.fetchone()
            await conn.execute(
                "UPDATE runs SET spec_tasks = ? WHERE id = ?", (row[0] if row else None, run_id)
            )
            return generation

        async def last_generation(conn: aiosqlite.Connection) -> int | None:
            async with conn.execute("SELECT value FROM meta WHERE key = 'member_run'") as cur:
                member = await cur.fetchone()
            if member is not None:
                return int(member[0])
            # A ledger from before the meta table: there every run relabelled its rows,
            # so the last run that finished syncing is the generation.
            async with conn.execute(
                "SELECT id FROM runs WHERE spec_tasks IS NOT NULL AND id IS NOT ?"
                " ORDER BY id DESC LIMIT 1",
                (run_id,),
            ) as cur:
                last = await cur.fetchone()
            return int(last[0]) if last is not None else None

        adopted = await self.run_in_writer(adopt)
        if adopted is None:
            return False
        self.member_run = adopted
        return True

    async def count_not_in_run(self) -> int:
        """Tasks in the ledger that the current spec no longer lists."""
        async with self._conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE last_run IS NOT ? ", (self.member_run,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # --- bulk changes ---------------------------------------------------------------------

    async def bulk_set_state(
        self,
        *,
        from_states: Sequence[TaskState],
        to_state: TaskState,
        detail: str,
        where: str = "",
        params: Sequence[Any] = (),
        in_run: bool = False,
        reset_attempts: bool = False,
        clear_error: bool = False,
        error: tuple[str, str] | None = None,
        restart_clock: bool = False,
    ) -> int:
        """Move every matching task to ``to_state`` with an event each; returns the count.

        ``where`` is an extra SQL condition over fixed column names (values bound via
        ``params``); ``in_run`` restricts to tasks of the current spec.
        """
        run_id = self.run_id
        member = self.member_run
        placeholders = ", ".join("?" for _ in from_states)
        cond = f"state IN ({placeholders})"
        args: list[Any] = [s.value for s in from_states]
        if in_run:
            cond += " AND last_run IS ?"
            args.append(member)
        if where:
            cond += f" AND ({where})"
            args.extend(params)
        sets = "state = ?, updated_at = ?"
        if reset_attempts:
            sets += ", attempts = 0"
        set_args: list[Any] = []
        if restart_clock:  # a task sent back to polling gets a new task_timeout
            sets += ", submitted_at = ?"
            set_args.append(time.time())
        if clear_error:
            sets += ", error_code = NULL, error_message = NULL"
        elif error is not None:
            sets += ", error_code = ?, error_message = ?"
            set_args += [error[0], redact(error[1])]
        now = time.time()

        async def apply(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                "INSERT INTO events (at, run, key, state, detail)"
                f" SELECT ?, ?, key, ?, ? FROM tasks WHERE {cond}",
                (now, run_id, to_state.value, redact(detail), *args),
            )
            cur = await conn.execute(
                f"UPDATE tasks SET {sets} WHERE {cond}", (to_state.value, now, *set_args, *args)
            )
            return int(cur.rowcount)

        return int(await self.run_in_writer(apply))
