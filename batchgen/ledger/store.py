"""The ledger: one SQLite file per job, the single source of truth for every task.

Every state change is written here *before* the action it allows: a task is
``submitting`` (committed) before its request leaves, and its remote id is committed
as soon as the answer arrives. After a crash, a row still ``submitting`` may or may
not have been charged: it becomes ``unknown`` and is never resubmitted silently.

Writes go through one writer task that owns the connection and group-commits: callers
queue a transition and await the commit that holds it. A batch is one transaction of a
few ``executemany`` calls, so the ledger keeps up with thousands of transitions per
second although each aiosqlite call costs a thread hop. Every transition also appends a
row to ``events``, the audit trail. Schema changes are named migrations, each applied
once in its own transaction and recorded in ``migrations``.

This module owns :class:`Ledger`: opening the file (setup and migrations), the
group-committing writer, and the runs and meta values. The schema and the row types
live in :mod:`.schema`; syncing the spec and bulk changes in :mod:`.sync`; reads in
:mod:`.reads`; the chat calls of generated axes in :mod:`.chats`. :class:`Ledger` has all
their methods.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchgen.errors import LedgerError, redact
from batchgen.i18n import _
from batchgen.ledger.chats import ChatMixin
from batchgen.ledger.reads import ReadMixin
from batchgen.ledger.schema import APPLICATION_ID, EVENT_SQL, MIGRATIONS, UPDATE_SQL, Transition
from batchgen.ledger.sync import SyncMixin

T = TypeVar("T")

__all__ = ["Ledger"]


@dataclass(slots=True)
class _Op:
    transition: Transition | None
    custom: Callable[[aiosqlite.Connection], Awaitable[Any]] | None
    done: anyio.Event
    result: Any = None
    error: BaseException | None = None


def _as_ledger_error(exc: BaseException) -> BaseException:
    if isinstance(exc, aiosqlite.Error | OSError):
        return LedgerError(f"ledger write failed: {redact(str(exc))}")
    return exc


class Ledger(SyncMixin, ReadMixin, ChatMixin):
    """The job's ledger. Open with ``async with Ledger.open(path) as ledger``."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.run_id: int | None = None
        # Tasks of the current spec are the rows whose ``last_run`` is this run id: the
        # run that last synced the spec. A run whose spec did not change adopts the
        # previous generation instead of rewriting every row (see :meth:`adopt_last_sync`).
        self.member_run: int | None = None
        self._send: MemoryObjectSendStream[_Op] | None = None
        self.transitions_written = 0
        self.batches_written = 0
        self.tables: set[str] = set()  # the tables the file had when it was opened

    # --- opening --------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, *, create: bool = True, read_only: bool = False
    ) -> AsyncIterator[Ledger]:
        """Open (creating and migrating) the ledger at ``path`` and start its writer.

        ``read_only`` opens an existing ledger without changing anything in it (no
        migration, no writer: writes raise LedgerError), so status, export, plan, the
        gallery and check can read it while a run writes it.

        Raises LedgerError when the file is not a batchgen ledger or cannot be used.
        """
        if (not create or read_only) and not path.exists():
            raise LedgerError(_("no ledger at {path}: nothing has run yet").format(path=path))
        if path.is_dir():
            raise LedgerError(f"the ledger path {path} is a folder")
        try:
            if read_only:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, aiosqlite.Error) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
        try:
            ledger = cls(conn, path)
            if read_only:
                await ledger._check_ours()
                await conn.execute("PRAGMA busy_timeout=5000")
                yield ledger
                return
            await ledger._setup()
            send, receive = anyio.create_memory_object_stream[_Op](10_000)
            ledger._send = send
            failure: BaseException | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(ledger._writer, receive)
                try:
                    yield ledger
                except BaseException as exc:
                    # Re-raised below, outside the task group, so the caller sees its
                    # own exception rather than an ExceptionGroup around it.
                    failure = exc
                finally:
                    send.close()
                    ledger._send = None
            if failure is not None:
                raise failure
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _check_ours(self) -> int:
        """The file's application id, once it is known to be a batchgen ledger (or new)."""
        conn = self._conn
        try:
            async with conn.execute("PRAGMA application_id") as cur:
                row = await cur.fetchone()
            app_id = int(row[0]) if row else 0
            async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
                tables = {str(r[0]) for r in await cur.fetchall()}
        except aiosqlite.Error as exc:
            raise LedgerError(f"{self.path} is not a usable batchgen ledger: {exc}") from None
        if app_id not in (0, APPLICATION_ID) or (tables and "migrations" not in tables):
            raise LedgerError(
                f"{self.path} is an SQLite file of another program, not a batchgen"
                " ledger: refusing to touch it"
            )
        self.tables = tables
        return app_id

    async def _setup(self) -> None:
        conn = self._conn
        app_id = await self._check_ours()
        try:
            if app_id == 0:
                await conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            await conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed intent survives power loss too; group commit makes the
            # fsync cheap next to any rate limit.
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            async with conn.execute("SELECT name FROM migrations") as cur:
                applied = {r[0] for r in await cur.fetchall()}
            for name, script in MIGRATIONS:
                if name in applied:
                    continue
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO migrations (name, applied_at) VALUES (?, ?)",
                        (name, time.time()),
                    )
                    await conn.execute("COMMIT")
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
        except aiosqlite.Error as exc:
            raise LedgerError(f"{self.path} is not a usable batchgen ledger: {exc}") from None

    # --- the writer ------------------------------------------------------------------

    async def _writer(self, receive: MemoryObjectReceiveStream[_Op]) -> None:
        # Shielded: the writer must outlive a cancellation of the caller, whose cleanup
        # still records things; it ends when the ledger closes its queue.
        with anyio.CancelScope(shield=True):
            await self._write_loop(receive)

    async def _write_loop(self, receive: MemoryObjectReceiveStream[_Op]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < 5000:
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    await self._commit(batch)

    async def _commit(self, batch: list[_Op]) -> None:
        conn = self._conn
        now = time.time()
        error: BaseException | None = None
        try:
            await conn.execute("BEGIN IMMEDIATE")
            updates: list[list[Any]] = []
            events: list[tuple[Any, ...]] = []
            for op in batch:
                if op.transition is not None:
                    t = op.transition
                    updates.append(t.params(now))
                    events.append((now, self.run_id, t.key, t.state.value, t.detail or None))
                    continue
                assert op.custom is not None
                if updates:
                    await conn.executemany(UPDATE_SQL, updates)
                    await conn.executemany(EVENT_SQL, events)
                    updates, events = [], []
                # A savepoint per custom op: its failure is its caller's alone, the
                # rest of the batch still commits.
                await conn.execute("SAVEPOINT custom_op")
                try:
                    op.result = await op.custom(conn)
                except Exception as exc:
                    await conn.execute("ROLLBACK TO custom_op")
                    op.error = _as_ledger_error(exc)
                await conn.execute("RELEASE custom_op")
            if updates:
                await conn.executemany(UPDATE_SQL, updates)
                await conn.executemany(EVENT_SQL, events)
            await conn.execute("COMMIT")
            self.transitions_written += sum(1 for op in batch if op.transition is not None)
            self.batches_written += 1
        except BaseException as exc:  # the batch failed as a whole: tell every waiter
            error = exc
            with contextlib.suppress(aiosqlite.Error):
                await conn.execute("ROLLBACK")
        for op in batch:
            if error is not None:
                op.error = _as_ledger_error(error)
            op.done.set()

    async def _submit(self, op: _Op) -> Any:
        await self._enqueue(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    async def _enqueue(self, op: _Op) -> None:
        send = self._send
        if send is None:
            raise LedgerError("the ledger is closed (or open read-only)")
        try:
            await send.send(op)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise LedgerError("the ledger is closed") from None

    async def write(self, *transitions: Transition) -> None:
        """Queue transitions and return once the commit that holds them is durable."""
        ops = [_Op(t, None, anyio.Event()) for t in transitions]
        for op in ops:
            await self._enqueue(op)
        for op in ops:
            await op.done.wait()
            if op.error is not None:
                raise op.error

    async def read(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run the read-only ``fn(conn)`` on the connection now (not in the writer)."""
        try:
            return await fn(self._conn)
        except aiosqlite.Error as exc:
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from None

    async def run_in_writer(self, fn: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        """Run ``fn(conn)`` inside the writer's next transaction, in queue order."""
        return await self._submit(_Op(None, fn, anyio.Event()))

    # --- runs ---------------------------------------------------------------------------

    async def begin_run(self, *, argv: Sequence[str], spec_digest: str) -> int:
        """Record the start of a run; returns its id (also kept on ``run_id``)."""

        async def insert(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "INSERT INTO runs (started_at, argv, spec_digest) VALUES (?, ?, ?)",
                (time.time(), redact(json.dumps(list(argv))), spec_digest),
            )
            return int(cur.lastrowid or 0)

        self.run_id = int(await self.run_in_writer(insert))
        self.member_run = self.run_id
        return self.run_id

    async def end_run(self, summary: Mapping[str, Any]) -> None:
        """Record the end of the current run and its summary."""
        run_id = self.run_id

        async def update(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?",
                (time.time(), redact(json.dumps(summary, default=str)), run_id),
            )

        await self.run_in_writer(update)

    async def last_run_summary(self) -> dict[str, Any] | None:
        """The summary the last finished run recorded, with its times and argv."""
        async with self._conn.execute(
            "SELECT id, started_at, finished_at, argv, summary FROM runs"
            " WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        summary = json.loads(row[4]) if row[4] else {}
        return {
            "run": row[0],
            "started_at": row[1],
            "finished_at": row[2],
            "argv": json.loads(row[3]) if row[3] else [],
            "exit_code": summary.get("exit_code"),
            "stop_reason": summary.get("stop_reason"),
            "this_run": summary.get("this_run", {}),
        }

    async def last_synced(self) -> tuple[str | None, int | None]:
        """The spec digest and task count of the last run that finished syncing."""
        async with self._conn.execute(
            "SELECT spec_digest, spec_tasks FROM runs WHERE spec_tasks IS NOT NULL"
            " ORDER BY id DESC LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        return (row[0], row[1]) if row else (None, None)

    async def get_meta(self, key: str) -> str | None:
        """A value the runner keeps about the job (see :meth:`set_meta`)."""
        async with self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def set_meta(self, key: str, value: str) -> None:
        """Record a value about the job, committed with the writer's next batch."""

        async def put(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self.run_in_writer(put)

    async def last_event_id(self) -> int:
        """The id of the newest event: it changes whenever any task changes state."""
        async with self._conn.execute("SELECT MAX(id) FROM events") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0
