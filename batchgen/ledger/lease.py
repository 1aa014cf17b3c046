"""One writer per ledger: a lease row with a heartbeat, and an OS file lock where there is one.

Two runs of one job (a second terminal, an overlapping cron entry, a retried CI job)
must never both write its ledger: each would submit the same pending tasks and the
service would charge twice. A run therefore holds the ledger's lease for as long as it
writes:

- an OS lock (``flock``) on ``batchgen.sqlite.lock`` beside the ledger, taken without
  waiting: the kernel drops it when the holder dies, even by SIGKILL, so on one host a
  lock that can be taken proves the last holder is gone;
- a row in the ledger's ``lease`` table naming the holder (host, pid, command, start
  time) with a heartbeat every few seconds: across hosts (a shared volume, where the
  file system may have no lock), a holder is gone when its heartbeat is older than
  :data:`STALE_AFTER`.

A second writer is refused at once with :class:`~batchgen.errors.LeaseHeldError`,
naming the holder and when it was last seen, and changes nothing. A gone holder's lease
is taken over (and said so); a live one only with ``take_over`` (``--take-over``),
which risks paying twice if the holder is in fact still running.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import aiosqlite
import anyio

from batchgen.errors import LeaseHeldError, LedgerError
from batchgen.i18n import _
from batchgen.ledger.store import Ledger

__all__ = [
    "HEARTBEAT",
    "STALE_AFTER",
    "Holder",
    "hold",
    "holder_of",
    "read_holder",
    "refuse_if_held",
]

#: Seconds between heartbeats of the holder.
HEARTBEAT: Final = 5.0
#: A holder on another host whose heartbeat is older than this is taken to be gone.
STALE_AFTER: Final = 30.0
_LOCK_SUFFIX: Final = ".lock"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a ledger's lease."""

    host: str
    pid: int
    command: str
    started_at: float
    heartbeat_at: float
    token: str

    def describe(self, now: float | None = None) -> str:
        """``batchgen run (pid 4242 on host-a), last seen 3 s ago``."""
        seen = max(0.0, (time.time() if now is None else now) - self.heartbeat_at)
        return _("{command} (pid {pid} on {host}), last seen {ago} ago").format(
            command=self.command, pid=self.pid, host=self.host, ago=_ago(seen)
        )


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    except OSError:
        return False
    return True


def _os_lock(ledger: Path) -> tuple[IO[Any] | None, bool]:
    """Take the OS lock beside ``ledger`` without waiting.

    Returns (the open lock file or None, whether another process holds it). None with
    False: this file system offers no lock; the lease row alone decides then.
    """
    path = ledger.with_name(ledger.name + _LOCK_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None, True
    except PermissionError:  # Windows: the byte is locked by another process
        handle.close()
        return None, True
    except OSError:
        handle.close()
        return None, False  # ENOLCK, EOPNOTSUPP: no locks here (a network file system)
    return handle, False


def _os_unlock(handle: IO[Any] | None) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()  # closing the file drops the lock


async def refuse_if_held(path: Path) -> None:
    """Raise LeaseHeldError now if a live run holds ``path`` (changing nothing).

    A fast path for a run to say so before it does anything else (the preflight's
    requests); :func:`hold` remains the decision. A ledger or lock file that does not
    exist yet is not created.
    """
    lock_path = path.with_name(path.name + _LOCK_SUFFIX)
    if not lock_path.is_file():
        return
    lock, locked_elsewhere = _os_lock(path)
    _os_unlock(lock)
    holder = await holder_of(path) if path.is_file() else None
    if locked_elsewhere:
        raise LeaseHeldError(_refusal(path, holder), holder=holder)
    if holder is not None and _alive(holder, locked=lock is not None):
        raise LeaseHeldError(_refusal(path, holder), holder=holder)


async def holder_of(path: Path) -> Holder | None:
    """The holder a ledger's lease row names (None: none, or no lease table yet)."""
    if not path.is_file():
        return None
    async with Ledger.open(path, read_only=True) as ledger:
        if "lease" not in ledger.tables:
            return None
        return await ledger.read(read_holder)


async def read_holder(conn: aiosqlite.Connection) -> Holder | None:
    """The holder the lease row names (for :meth:`Ledger.read`)."""
    async with conn.execute(
        "SELECT host, pid, command, started_at, heartbeat_at, token FROM lease WHERE id = 1"
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    return Holder(str(row[0]), int(row[1]), str(row[2]), float(row[3]), float(row[4]), str(row[5]))


@asynccontextmanager
async def hold(
    ledger: Ledger,
    *,
    command: str,
    take_over: bool = False,
    on_message: Callable[[str, str], None] | None = None,
    on_lost: Callable[[Holder | None], None] | None = None,
) -> AsyncIterator[Holder]:
    """Hold ``ledger``'s lease until the block ends (see the module docstring).

    Raises LeaseHeldError (changing nothing) when a live holder has it and
    ``take_over`` is false. ``on_lost`` is called if the lease is taken away (another
    process took it over): the caller must stop writing.
    """
    lock, locked_elsewhere = _os_lock(ledger.path)
    if locked_elsewhere and not take_over:
        holder = await _current(ledger)
        raise LeaseHeldError(_refusal(ledger.path, holder), holder=holder)
    now = time.time()
    ours = Holder(socket.gethostname(), os.getpid(), command, now, now, uuid.uuid4().hex)
    try:
        previous = await ledger.run_in_writer(
            lambda conn: _claim(
                conn, ledger.path, ours, locked=lock is not None, take_over=take_over
            )
        )
    except BaseException:
        _os_unlock(lock)
        raise
    if previous is not None and on_message is not None:
        how = "took over" if take_over else "took over the lease left by"
        on_message("warning" if take_over else "info", f"{how} {previous.describe()}")
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_heartbeat, ledger, ours, on_lost)
            try:
                yield ours
            except BaseException as exc:
                # Re-raised outside the task group: the caller sees its own exception,
                # not an ExceptionGroup around it.
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(LedgerError):
                await ledger.run_in_writer(
                    lambda conn: conn.execute("DELETE FROM lease WHERE token = ?", (ours.token,))
                )
            _os_unlock(lock)


async def _current(ledger: Ledger) -> Holder | None:
    try:
        return await ledger.read(read_holder)
    except LedgerError:
        return None


def _refusal(path: Path, holder: Holder | None) -> str:
    who = holder.describe() if holder is not None else _("another process on this host")
    return _(
        "the job's ledger {path} is held by {who}: it is being run already (a second"
        " writer could pay twice for the same tasks); wait for it, or stop it"
    ).format(path=path, who=who)


async def _claim(
    conn: aiosqlite.Connection, path: Path, ours: Holder, *, locked: bool, take_over: bool
) -> Holder | None:
    """Write our lease row unless a live holder's is there; return the one replaced."""
    previous = await read_holder(conn)
    if previous is not None and not take_over and _alive(previous, locked=locked):
        raise LeaseHeldError(_refusal(path, previous), holder=previous)
    await conn.execute(
        "INSERT INTO lease (id, host, pid, command, started_at, heartbeat_at, token)"
        " VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET host = excluded.host,"
        " pid = excluded.pid, command = excluded.command, started_at = excluded.started_at,"
        " heartbeat_at = excluded.heartbeat_at, token = excluded.token",
        (ours.host, ours.pid, ours.command, ours.started_at, ours.heartbeat_at, ours.token),
    )
    return previous


def _alive(holder: Holder, *, locked: bool) -> bool:
    """Whether the holder a row names may still be running."""
    if holder.host == socket.gethostname():
        # Holding the OS lock ourselves proves the last holder on this host is gone.
        return False if locked else _pid_alive(holder.pid)
    return time.time() - holder.heartbeat_at < STALE_AFTER


async def _heartbeat(
    ledger: Ledger, ours: Holder, on_lost: Callable[[Holder | None], None] | None
) -> None:
    while True:
        await anyio.sleep(HEARTBEAT)
        try:
            kept = await ledger.run_in_writer(lambda conn: _beat(conn, ours.token))
        except LedgerError:
            return  # the ledger is closing
        if not kept:
            if on_lost is not None:
                on_lost(await _current(ledger))
            return


async def _beat(conn: aiosqlite.Connection, token: str) -> bool:
    cur = await conn.execute(
        "UPDATE lease SET heartbeat_at = ? WHERE token = ?", (time.time(), token)
    )
    return bool(cur.rowcount)
