"""What the ledger file holds: its schema, the rows read from it and the changes written to it.

This module owns the layout of the SQLite file: the file name, the application id
that marks it as ours, the named migrations that build the schema (each applied once
in its own transaction and recorded in ``migrations``, see
:meth:`~batchgen.ledger.store.Ledger.open`), and the SQL statements the writer and
the sync share. It also owns the values that cross the ledger's boundary: a task
state, a task row as read back (:class:`TaskRow`), a task to insert from the spec
(:class:`NewTask`) and a change to one row (:class:`Transition`).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from batchgen.errors import redact

__all__ = [
    "APPLICATION_ID",
    "EVENT_SQL",
    "INSERT_SQL",
    "LEDGER_NAME",
    "MEASURED_META",
    "MIGRATIONS",
    "REFRESH_SQL",
    "ROW_COLUMNS",
    "UPDATE_SQL",
    "NewTask",
    "TaskRow",
    "TaskState",
    "Transition",
    "decode_row",
    "finite_or_none",
]

LEDGER_NAME: Final = "batchgen.sqlite"
#: The ``meta`` key of the job's spend as the service's usage counter measured it.
MEASURED_META: Final = "spend_measured"
# Marks the file as ours (``PRAGMA application_id``): "bgen".
APPLICATION_ID: Final = 0x6267656E


class TaskState(enum.StrEnum):
    """Where a task is. See the README for the state diagram."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"


MIGRATIONS: Final[tuple[tuple[str, str], ...]] = (
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
    (
        "0003_lease",
        """
        CREATE TABLE lease (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            command TEXT NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            token TEXT NOT NULL
        );
        """,
    ),
    (
        # Chat calls that write generated axes' values: each committed ``sending``
        # before it leaves, its answer (and cost) as soon as it arrives; ``locked_at``
        # once its values are in the lockfile (see batchgen.ledger.chats).
        "0004_chat",
        """
        CREATE TABLE chats (
            id INTEGER PRIMARY KEY,
            run INTEGER,
            axis TEXT NOT NULL,
            asked TEXT NOT NULL,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            state TEXT NOT NULL,
            request_id TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost REAL NOT NULL DEFAULT 0,
            cost_source TEXT,
            answer TEXT,
            error_code TEXT,
            error_message TEXT,
            created_at REAL NOT NULL,
            answered_at REAL,
            locked_at REAL
        );
        CREATE INDEX chats_axis ON chats(axis, asked, state);
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
UPDATE_SQL: Final = (
    "UPDATE tasks SET "
    + ", ".join(f"{c} = CASE WHEN ? THEN ? ELSE {c} END" for c in _MUTABLE)
    + ", updated_at = ? WHERE key = ?"
)
EVENT_SQL: Final = "INSERT INTO events (at, run, key, state, detail) VALUES (?, ?, ?, ?, ?)"
INSERT_SQL: Final = (
    "INSERT INTO tasks (key, seq, endpoint, model, prompt, request, vars, layout_path, price,"
    " state, created_at, updated_at, last_run)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
    " ON CONFLICT(key) DO NOTHING"
)
REFRESH_SQL: Final = (
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


ROW_COLUMNS: Final = (
    "key, seq, endpoint, model, prompt, request, vars, layout_path, price, state, remote_id,"
    " attempts, regenerations, error_code, error_message, charged, urls, path, bytes, sha256,"
    " files, next_at, created_at, updated_at, submitted_at, finished_at, last_run"
)


def decode_row(r: Sequence[Any]) -> TaskRow:
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


def finite_or_none(value: float | None) -> float | None:
    """``None`` for NaN/inf: SQLite would store them, JSON could not carry them."""
    if value is None or not math.isfinite(value):
        return None
    return value
