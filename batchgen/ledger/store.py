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
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiosqlite
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchgen.errors import LedgerError, redact

__all__ = [
    "LEDGER_NAME",
    "Ledger",
    "TaskRow",
    "TaskState",
    "Transition",
]

LEDGER_NAME: Final = "batchgen.sqlite"
# Marks the file as ours (``PRAGMA application_id``): "bgen".
_APPLICATION_ID: Final = 0x6267656E


class TaskState(enum.StrEnum):
    """Where a task is. See the README for the state diagram."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"


_MIGRATIONS: Final[tuple[tuple[str, str], ...]] = (
    (
        "0001_initial",
        """
        CREATE TABLE tasks (
            key TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt TEXT NOT NULL,
            request TEXT NOT NULL,
            vars TEXT NOT NULL,
            layout_path TEXT NOT NULL,
            price REAL NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'pending',
            remote_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            regenerations INTEGER NOT NULL DEFAULT 0,
            error_code TEXT,
            error_message TEXT,
            charged REAL NOT NULL DEFAULT 0,
            urls TEXT,
            path TEXT,
            bytes INTEGER,
            sha256 TEXT,
            files TEXT,
            next_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            submitted_at REAL,
            finished_at REAL,
            last_run INTEGER
        );
        CREATE INDEX tasks_state_seq ON tasks(state, seq);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            run INTEGER,
            key TEXT NOT NULL,
            state TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX events_key ON events(key);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL,
            argv TEXT,
            spec_digest TEXT,
            spec_tasks INTEGER,
            summary TEXT
        );
        """,
    ),
    (
        "0002_meta",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    ),
)

# Columns a transition may set. Each is written as ``CASE WHEN ? THEN ? ELSE col END``
# so one statement template serves every transition and executemany keeps their order.
_MUTABLE: Final = (
    "state",
    "remote_id",
    "attempts",
    "regenerations",
    "error_code",
    "error_message",
    "charged",
    "urls",
    "path",
    "bytes",
    "sha256",
    "files",
    "next_at",
    "submitted_at",
    "finished_at",
)
_UPDATE_SQL: Final = (
    "UPDATE tasks SET "
    + ", ".join(f"{c} = CASE WHEN ? THEN ? ELSE {c} END" for c in _MUTABLE)
    + ", updated_at = ? WHERE key = ?"
)
_EVENT_SQL: Final = "INSERT INTO events (at, run, key, state, detail) VALUES (?, ?, ?, ?, ?)"
_INSERT_SQL: Final = (
    "INSERT INTO tasks (key, seq, endpoint, model, prompt, request, vars, layout_path, price,"
    " state, created_at, updated_at, last_run)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
    " ON CONFLICT(key) DO NOTHING"
)
_REFRESH_SQL: Final = (
    "UPDATE tasks SET seq = ?, layout_path = ?, price = ?, last_run = ? WHERE key = ?"
)

_UNSET: Final = object()


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task as the ledger holds it."""

    key: str
    seq: int
    endpoint: str
    model: str
    prompt: str
    request: Mapping[str, Any] = field(repr=False)
    vars: Mapping[str, Any]
    layout_path: str
    price: float
    state: TaskState
    remote_id: str | None
    attempts: int
    regenerations: int
    error_code: str | None
    error_message: str | None
    charged: float
    urls: tuple[str, ...]
    path: str | None
    bytes: int | None
    sha256: str | None
    files: tuple[Mapping[str, Any], ...]
    next_at: float | None
    created_at: float
    updated_at: float
    submitted_at: float | None
    finished_at: float | None
    last_run: int | None


_ROW_COLUMNS: Final = (
    "key, seq, endpoint, model, prompt, request, vars, layout_path, price, state, remote_id,"
    " attempts, regenerations, error_code, error_message, charged, urls, path, bytes, sha256,"
    " files, next_at, created_at, updated_at, submitted_at, finished_at, last_run"
)


def _row(r: Sequence[Any]) -> TaskRow:
    return TaskRow(
        key=r[0],
        seq=r[1],
        endpoint=r[2],
        model=r[3],
        prompt=r[4],
        request=json.loads(r[5]),
        vars=json.loads(r[6]),
        layout_path=r[7],
        price=r[8],
        state=TaskState(r[9]),
        remote_id=r[10],
        attempts=r[11],
        regenerations=r[12],
        error_code=r[13],
        error_message=r[14],
        charged=r[15],
        urls=tuple(json.loads(r[16])) if r[16] else (),
        path=r[17],
        bytes=r[18],
        sha256=r[19],
        files=tuple(json.loads(r[20])) if r[20] else (),
        next_at=r[21],
        created_at=r[22],
        updated_at=r[23],
        submitted_at=r[24],
        finished_at=r[25],
        last_run=r[26],
    )


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to insert (or refresh) from the spec's expansion."""

    key: str
    seq: int
    endpoint: str
    model: str
    prompt: str
    request: Mapping[str, Any]
    vars: Mapping[str, Any]
    layout_path: str
    price: float


class Transition:
    """A change to one task row: the new state, the columns to set, and the event detail.

    Only the columns given are written; pass ``None`` to clear a column.
    """

    __slots__ = ("detail", "key", "state", "values")

    def __init__(self, key: str, state: TaskState, *, detail: str = "", **values: Any) -> None:
        unknown = set(values) - set(_MUTABLE)
        if unknown:
            raise ValueError(f"not a mutable task column: {sorted(unknown)}")
        self.key = key
        self.state = state
        self.detail = redact(detail)
        self.values = values

    def params(self, now: float) -> list[Any]:
        """The parameters of the shared UPDATE statement."""
        out: list[Any] = []
        for column in _MUTABLE:
            if column == "state":
                out += [1, self.state.value]
                continue
            value = self.values.get(column, _UNSET)
            if value is _UNSET:
                out += [0, None]
            else:
                if column in ("urls", "files") and value is not None:
                    value = json.dumps(list(value), separators=(",", ":"))
                elif column == "error_message" and value is not None:
                    value = redact(str(value))[:2000]
                out += [1, value]
        out += [now, self.key]
        return out


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


class Ledger:
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

    # --- opening --------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path, *, create: bool = True) -> AsyncIterator[Ledger]:
        """Open (creating and migrating) the ledger at ``path`` and start its writer.

        Raises LedgerError when the file is not a batchgen ledger or cannot be used.
        """
        if not create and not path.exists():
            raise LedgerError(f"no ledger at {path}: nothing has run yet")
        if path.is_dir():
            raise LedgerError(f"the ledger path {path} is a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, aiosqlite.Error) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
        try:
            ledger = cls(conn, path)
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

    async def _setup(self) -> None:
        conn = self._conn
        try:
            async with conn.execute("PRAGMA application_id") as cur:
                row = await cur.fetchone()
            app_id = int(row[0]) if row else 0
            async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
                tables = {str(r[0]) for r in await cur.fetchall()}
            if app_id not in (0, _APPLICATION_ID) or (tables and "migrations" not in tables):
                raise LedgerError(
                    f"{self.path} is an SQLite file of another program, not a batchgen"
                    " ledger: refusing to touch it"
                )
            if app_id == 0:
                await conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
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
            for name, script in _MIGRATIONS:
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
                    await conn.executemany(_UPDATE_SQL, updates)
                    await conn.executemany(_EVENT_SQL, events)
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
                await conn.executemany(_UPDATE_SQL, updates)
                await conn.executemany(_EVENT_SQL, events)
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
            raise LedgerError("the ledger is closed")
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
                await conn.executemany(_INSERT_SQL, rows)
                inserted = conn.total_changes - before
                await conn.executemany(
                    _REFRESH_SQL, [(r[1], r[7], r[8], r[11], r[0]) for r in rows]
                )
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
            f"SELECT {_ROW_COLUMNS} FROM tasks WHERE state IN ({placeholders})"
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
            return [_row(r) for r in await cur.fetchall()]

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
            f"SELECT {_ROW_COLUMNS} FROM tasks WHERE key = ?", (key,)
        ) as cur:
            row = await cur.fetchone()
        return _row(row) if row else None

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
        """Money: ``spent`` (charged, not refunded), ``planned`` (price of every task)."""
        async with self._conn.execute(
            "SELECT COALESCE(SUM(charged), 0), COALESCE(SUM(price), 0),"
            " COALESCE(SUM(CASE WHEN state NOT IN ('done') THEN price ELSE 0 END), 0),"
            " COALESCE(SUM(regenerations), 0) FROM tasks"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return {
            "spent": round(float(row[0]), 6),
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


def finite_or_none(value: float | None) -> float | None:
    """``None`` for NaN/inf: SQLite would store them, JSON could not carry them."""
    if value is None or not math.isfinite(value):
        return None
    return value
