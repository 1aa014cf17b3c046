"""Unit tests for batchgen.ledger on real SQLite files: schema, sync, writes, reads, failures."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest

from batchgen.errors import LedgerError, register_secret
from batchgen.ledger.schema import LEDGER_NAME, MIGRATIONS, NewTask, TaskState, Transition
from batchgen.ledger.store import Ledger

pytestmark = pytest.mark.anyio

CANARY = "canary-5ecret-7f3a9c21"
SK_KEY = "sk-live0123456789abcdef"

CustomOp = Callable[[aiosqlite.Connection], Awaitable[Any]]


def new_task(
    i: int,
    *,
    key: str | None = None,
    seq: int | None = None,
    price: float = 0.04,
    layout_path: str | None = None,
    prompt: str | None = None,
    model: str = "nano-banana",
) -> NewTask:
    """The i-th task of a plan: key ``k0007``, seq ``i``, a small request."""
    text = prompt if prompt is not None else f"a cat, take {i}"
    return NewTask(
        key=key if key is not None else f"k{i:04d}",
        seq=i if seq is None else seq,
        endpoint="/v1/images/generations",
        model=model,
        prompt=text,
        request={"model": model, "prompt": text, "n": 1},
        vars={"i": i, "style": "watercolor"},
        layout_path=layout_path if layout_path is not None else f"{model}/cat-{i}.png",
        price=price,
    )


def raw_bytes(path: Path) -> bytes:
    """The bytes of the database file and its write-ahead log, as a reader of the disk sees."""
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        data += wal.read_bytes()
    return data


def query(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one read on a separate plain sqlite3 connection."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, args).fetchall())
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's ledger lives."""
    return tmp_path / "job" / LEDGER_NAME


# --- opening and schema ------------------------------------------------------------------


async def test_migrations_are_recorded_once_and_reopening_is_idempotent(db: Path) -> None:
    """The first open applies and records each migration; later opens change nothing."""
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
    first = query(db, "SELECT name, applied_at FROM migrations")
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]
    assert [name for name, _ in first] == [
        "0001_initial",
        "0002_meta",
        "0003_lease",
        "0004_chat",
    ]
    for _ in range(2):
        async with Ledger.open(db, create=False) as ledger:
            assert await ledger.get("k0000") is not None
    assert query(db, "SELECT name, applied_at FROM migrations") == first
    tables = {r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tasks", "events", "runs", "migrations", "meta", "chats"} <= tables


async def test_ledger_uses_wal_and_full_sync(db: Path) -> None:
    """The file is in WAL mode and the writer's connection commits with synchronous=FULL."""

    async def synchronous(conn: aiosqlite.Connection) -> int:
        async with conn.execute("PRAGMA synchronous") as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async with Ledger.open(db) as ledger:
        assert query(db, "PRAGMA journal_mode") == [("wal",)]
        assert await ledger.run_in_writer(synchronous) == 2  # FULL
        assert await ledger.integrity_check() == "ok"


async def test_missing_ledger_without_create_raises(tmp_path: Path) -> None:
    """create=False on a path with no file raises LedgerError and creates nothing."""
    path = tmp_path / "nothing" / LEDGER_NAME
    with pytest.raises(LedgerError, match="no ledger at"):
        async with Ledger.open(path, create=False):
            pass
    assert not path.exists()
    assert not path.parent.exists()


async def test_garbage_file_raises_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    """A file that is not SQLite raises LedgerError naming it, and its bytes are untouched."""
    path = tmp_path / LEDGER_NAME
    garbage = b"this is not a database\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(LedgerError, match="not a usable batchgen ledger: file is not a database"):
        async with Ledger.open(path):
            pass
    assert path.read_bytes() == garbage


async def test_foreign_sqlite_with_a_clashing_table_raises(tmp_path: Path) -> None:
    """An SQLite file whose own ``tasks`` table clashes with ours raises LedgerError."""
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match=r"other\.sqlite is an SQLite file of another program"):
        async with Ledger.open(path):
            pass
    assert query(path, "PRAGMA table_info(tasks)")[1][1] == "title"  # migration rolled back


async def test_foreign_sqlite_without_our_tables_is_refused(tmp_path: Path) -> None:
    """Any SQLite file that already holds tables but no batchgen migrations is refused."""
    path = tmp_path / "notes.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="batchgen ledger"):
        async with Ledger.open(path):
            pass
    assert [r[0] for r in query(path, "SELECT name FROM sqlite_master")] == ["notes"]


async def test_unusable_folder_raises(tmp_path: Path) -> None:
    """A ledger whose folder cannot be made raises LedgerError, not a raw OSError."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(LedgerError, match=r"cannot open the ledger .*a-file"):
        async with Ledger.open(blocker / LEDGER_NAME):
            pass


# --- runs ----------------------------------------------------------------------------------


async def test_begin_and_end_run_record_the_run(db: Path) -> None:
    """begin_run numbers runs across opens; end_run stores the finish time and summary."""
    async with Ledger.open(db) as ledger:
        assert await ledger.begin_run(argv=["run", "job.yaml"], spec_digest="abc") == 1
        assert ledger.run_id == 1
        ((finished, summary),) = query(db, "SELECT finished_at, summary FROM runs")
        assert finished is None
        assert summary is None
        await ledger.end_run({"done": 3, "failed": 0})
    async with Ledger.open(db) as ledger:
        assert await ledger.begin_run(argv=["run"], spec_digest="def") == 2
    rows = query(db, "SELECT id, argv, spec_digest, finished_at, summary FROM runs ORDER BY id")
    assert rows[0][:3] == (1, '["run", "job.yaml"]', "abc")
    assert rows[0][3] is not None
    assert json.loads(rows[0][4]) == {"done": 3, "failed": 0}
    assert rows[1][:3] == (2, '["run"]', "def")


async def test_last_synced_reports_the_last_synced_spec(db: Path) -> None:
    """last_synced gives the digest and task count of the latest run that synced."""
    async with Ledger.open(db) as ledger:
        assert await ledger.last_synced() == (None, None)
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(4))
        await ledger.begin_run(argv=[], spec_digest="d2")  # started, never synced
        assert await ledger.last_synced() == ("d1", 4)


# --- sync ----------------------------------------------------------------------------------


async def test_sync_inserts_new_tasks_and_counts(db: Path) -> None:
    """sync inserts every new task as pending and returns (added, seen), in any chunk size."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d")
        assert await ledger.sync((new_task(i) for i in range(5)), batch=2) == (5, 5)
        row = await ledger.get("k0003")
        assert row is not None
        assert row.state is TaskState.PENDING
        assert (row.seq, row.model, row.price, row.last_run) == (3, "nano-banana", 0.04, 1)
        assert row.request == {"model": "nano-banana", "prompt": "a cat, take 3", "n": 1}
        assert row.vars == {"i": 3, "style": "watercolor"}
        assert row.attempts == 0
        assert row.urls == ()
        assert row.files == ()


async def test_resync_keeps_state_and_refreshes_order_path_and_price(db: Path) -> None:
    """Known rows keep their state (and inputs) on re-sync; seq, layout_path and price follow."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(3))
        await ledger.write(Transition("k0001", TaskState.DONE, remote_id="r1"))
        await ledger.begin_run(argv=[], spec_digest="d2")
        changed = new_task(1, seq=10, price=0.09, layout_path="new/one.png", prompt="changed")
        tasks = [new_task(0), changed, new_task(2), new_task(3), new_task(4)]
        assert await ledger.sync(tasks, batch=2) == (2, 5)
        row = await ledger.get("k0001")
        assert row is not None
        assert row.state is TaskState.DONE
        assert row.remote_id == "r1"
        assert (row.seq, row.layout_path, row.price, row.last_run) == (10, "new/one.png", 0.09, 2)
        assert row.prompt == "a cat, take 1"  # the key names the inputs: they never change


async def test_count_not_in_run_counts_tasks_the_spec_dropped(db: Path) -> None:
    """Tasks not seen by this run's sync are counted; an unchanged plan is adopted again."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(5))
        assert await ledger.count_not_in_run() == 0
        await ledger.begin_run(argv=[], spec_digest="d2")
        await ledger.sync(new_task(i) for i in range(3))
        assert await ledger.count_not_in_run() == 2
        await ledger.begin_run(argv=[], spec_digest="d2")
        assert await ledger.count_not_in_run() == 5
        assert await ledger.adopt_last_sync()
        assert await ledger.count_not_in_run() == 2
        assert await ledger.last_synced() == ("d2", 3)
        assert {r.key for r in await ledger.page([TaskState.PENDING])} == {
            "k0000",
            "k0001",
            "k0002",
        }
    # Adopting the previous sync rewrites no task row: a resume starts in constant time.
    assert query(db, "SELECT DISTINCT last_run FROM tasks ORDER BY 1") == [(1,), (2,)]


async def test_a_sync_that_died_half_way_does_not_change_the_adopted_plan(db: Path) -> None:
    """A run of a new spec that died mid-sync labelled some rows; the next run of the
    old spec adopts the old spec's tasks, not those half-labelled rows."""

    def dies_after_two() -> Iterator[NewTask]:
        yield new_task(0)
        yield new_task(5)
        raise RuntimeError("killed mid-sync")

    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(5))
        await ledger.begin_run(argv=[], spec_digest="d2")
        with pytest.raises(RuntimeError):
            await ledger.sync(dies_after_two(), batch=1)
        await ledger.begin_run(argv=[], spec_digest="d1")
        assert await ledger.last_synced() == ("d1", 5)
        assert not await ledger.adopt_last_sync()  # k0000 was relabelled: sync again
        await ledger.sync(new_task(i) for i in range(5))
        assert await ledger.count_not_in_run() == 1  # k0005, of the spec that died
        keys = {r.key for r in await ledger.page([TaskState.PENDING])}
        assert keys == {f"k{i:04d}" for i in range(5)}


async def test_meta_values_and_last_event_id(db: Path) -> None:
    """Meta values round-trip and are replaced; the newest event id follows transitions."""
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
        assert await ledger.get_meta("x") is None
        assert await ledger.last_event_id() == 0
        await ledger.set_meta("x", "1")
        await ledger.set_meta("x", "2")
        assert await ledger.get_meta("x") == "2"
        await ledger.write(Transition("k0000", TaskState.SUBMITTING))
        first = await ledger.last_event_id()
        await ledger.write(Transition("k0000", TaskState.PENDING))
        assert await ledger.last_event_id() > first > 0


# --- write ---------------------------------------------------------------------------------


async def test_write_sets_only_the_given_columns_and_none_clears(db: Path) -> None:
    """A transition writes its state and the columns it names; None clears a column."""
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
        before = await ledger.get("k0000")
        assert before is not None
        await ledger.write(
            Transition(
                "k0000",
                TaskState.SUBMITTING,
                attempts=1,
                error_code="timeout",
                error_message="slow",
                submitted_at=123.5,
            )
        )
        await ledger.write(Transition("k0000", TaskState.RUNNING, remote_id="task-9"))
        row = await ledger.get("k0000")
        assert row is not None
        assert row.state is TaskState.RUNNING
        assert (row.remote_id, row.attempts, row.submitted_at) == ("task-9", 1, 123.5)
        assert (row.error_code, row.error_message) == ("timeout", "slow")
        assert row.updated_at >= before.updated_at
        await ledger.write(Transition("k0000", TaskState.PENDING, remote_id=None, error_code=None))
        row = await ledger.get("k0000")
        assert row is not None
        assert (row.state, row.remote_id, row.error_code) == (TaskState.PENDING, None, None)
        assert (row.attempts, row.error_message) == (1, "slow")


async def test_urls_and_files_round_trip_as_json(db: Path) -> None:
    """urls and files come back as tuples of what was written; None empties them."""
    files = [{"path": "m/a.png", "bytes": 1234, "sha256": "ab" * 32, "width": 2}]
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
        await ledger.write(
            Transition("k0000", TaskState.DONE, urls=["https://x/1.png", "https://x/2.png"])
        )
        await ledger.write(Transition("k0000", TaskState.DONE, files=files))
        row = await ledger.get("k0000")
        assert row is not None
        assert row.urls == ("https://x/1.png", "https://x/2.png")
        assert row.files == tuple(files)
        await ledger.write(Transition("k0000", TaskState.PENDING, urls=None, files=None))
        row = await ledger.get("k0000")
        assert row is not None
        assert (row.urls, row.files) == ((), ())


def test_transition_refuses_unknown_columns() -> None:
    """Only mutable task columns may be set: a typo fails at once, not at commit."""
    with pytest.raises(ValueError, match=r"not a mutable task column: \['prompt'\]"):
        Transition("k", TaskState.DONE, prompt="x")


async def test_every_transition_appends_an_event(db: Path) -> None:
    """Each transition adds (time, state, detail) to the task's audit trail, in order."""
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0), new_task(1)])
        await ledger.write(Transition("k0000", TaskState.SUBMITTING, detail="attempt 1"))
        await ledger.write(Transition("k0000", TaskState.RUNNING))
        await ledger.write(Transition("k0001", TaskState.FAILED, detail="moderation"))
        await ledger.write(Transition("k0000", TaskState.DONE, detail="saved"))
        events = await ledger.events_for("k0000")
        assert [(state, detail) for _, state, detail in events] == [
            ("submitting", "attempt 1"),
            ("running", None),
            ("done", "saved"),
        ]
        assert all(at > 1e9 for at, _, _ in events)  # wall-clock times
        assert [e[1] for e in await ledger.events_for("k0001")] == ["failed"]
        assert await ledger.events_for("nope") == []
        assert await ledger.get("nope") is None


async def test_secrets_never_reach_the_file(db: Path) -> None:
    """A registered secret or an ``sk-`` key in messages, details or argv is masked on disk."""
    register_secret(CANARY)
    leak = f"upstream said: bad key {SK_KEY} (account {CANARY})"
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=["run", f"--key={SK_KEY}", CANARY], spec_digest="d")
        await ledger.sync([new_task(0), new_task(1)])
        await ledger.write(
            Transition("k0000", TaskState.FAILED, detail=leak, error_code="x", error_message=leak)
        )
        await ledger.bulk_set_state(
            from_states=[TaskState.PENDING],
            to_state=TaskState.FAILED,
            detail="given up",
            error=("auth", leak),
        )
        await ledger.end_run({"last_error": leak})
        row = await ledger.get("k0000")
        assert row is not None
        assert row.error_message is not None
        assert "sk-***" in row.error_message
        data = raw_bytes(db)
        assert CANARY.encode() not in data
        assert SK_KEY.encode() not in data
    data = raw_bytes(db)
    assert CANARY.encode() not in data
    assert SK_KEY.encode() not in data


async def test_bulk_set_state_detail_is_redacted(db: Path) -> None:
    """The detail of a bulk change passes through redact like a transition's detail."""
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
        await ledger.bulk_set_state(
            from_states=[TaskState.PENDING], to_state=TaskState.FAILED, detail=f"key {SK_KEY}"
        )
        ((_, _, detail),) = await ledger.events_for("k0000")
        assert detail is not None
        assert SK_KEY not in detail


# --- ordering and group commit --------------------------------------------------------------


async def hold_writer(ledger: Ledger, tg: anyio.abc.TaskGroup) -> anyio.Event:
    """Park the writer inside a custom op until the returned event is set."""
    gate = anyio.Event()

    async def wait(conn: aiosqlite.Connection) -> None:
        await gate.wait()

    tg.start_soon(ledger.run_in_writer, wait)
    await anyio.wait_all_tasks_blocked()
    return gate


async def test_one_write_call_applies_its_transitions_in_order(db: Path) -> None:
    """Several transitions for one key in one write() end in the last one's state."""
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
        await ledger.write(
            Transition("k0000", TaskState.SUBMITTING, attempts=1),
            Transition("k0000", TaskState.RUNNING, remote_id="r"),
            Transition("k0000", TaskState.DOWNLOADING),
            Transition("k0000", TaskState.DONE, path="a.png"),
        )
        row = await ledger.get("k0000")
        assert row is not None
        assert (row.state, row.attempts, row.remote_id, row.path) == (
            TaskState.DONE,
            1,
            "r",
            "a.png",
        )


async def test_concurrent_writers_in_one_batch_end_in_the_last_queued_state(db: Path) -> None:
    """Many writers racing on one key are committed in queue order: the last queued wins."""
    states = list(TaskState)
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
        batches = ledger.batches_written
        async with anyio.create_task_group() as tg:
            gate = await hold_writer(ledger, tg)
            for i in range(200):
                transition = Transition("k0000", states[i % len(states)], attempts=i, detail=str(i))
                tg.start_soon(ledger.write, transition)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert ledger.batches_written - batches == 2  # the held op, then all 200 at once
        events = await ledger.events_for("k0000")
        assert len(events) == 200
        _, last_state, last_detail = events[-1]
        row = await ledger.get("k0000")
        assert row is not None
        assert row.state.value == last_state
        assert str(row.attempts) == last_detail


async def test_group_commit_lands_every_transition_in_few_batches(db: Path) -> None:
    """5,000 transitions from 50 concurrent tasks all commit, in far fewer than 5,000 batches."""
    async with Ledger.open(db) as ledger:
        await ledger.sync(new_task(i) for i in range(50))
        transitions, batches = ledger.transitions_written, ledger.batches_written

        async def worker(i: int) -> None:
            for n in range(100):
                await ledger.write(Transition(f"k{i:04d}", TaskState.RUNNING, attempts=n))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(worker, i)
        assert ledger.transitions_written - transitions == 5_000
        assert ledger.batches_written - batches <= 250  # about 100: one per round of 50
        rows = [row async for row in ledger.iter_rows()]
        assert len(rows) == 50
        assert all(row.attempts == 99 and row.state is TaskState.RUNNING for row in rows)
        assert query(db, "SELECT COUNT(*) FROM events") == [(5_000,)]


# --- custom ops -----------------------------------------------------------------------------


async def test_failing_custom_op_raises_to_its_caller_and_the_writer_goes_on(db: Path) -> None:
    """A custom op that raises fails its own waiter, rolls back, and later ops still commit."""

    async def half_then_boom(conn: aiosqlite.Connection) -> None:
        await conn.execute("UPDATE tasks SET price = 99")
        raise RuntimeError("boom")

    async def bad_sql(conn: aiosqlite.Connection) -> None:
        await conn.execute("SELECT * FROM no_such_table")

    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
        with pytest.raises(RuntimeError, match="boom"):
            await ledger.run_in_writer(half_then_boom)
        with pytest.raises(LedgerError, match="ledger write failed: no such table"):
            await ledger.run_in_writer(bad_sql)
        await ledger.write(Transition("k0000", TaskState.DONE))
        row = await ledger.get("k0000")
        assert row is not None
        assert (row.state, row.price) == (TaskState.DONE, 0.04)


async def test_failing_custom_op_does_not_fail_transitions_batched_with_it(db: Path) -> None:
    """Transitions committed in the same batch as a failing custom op still land."""

    async def boom(conn: aiosqlite.Connection) -> None:
        raise RuntimeError("boom")

    outcomes: dict[str, str] = {}

    async def record(name: str, op: Callable[[], Awaitable[Any]]) -> None:
        try:
            await op()
        except Exception as exc:
            outcomes[name] = repr(exc)
        else:
            outcomes[name] = "ok"

    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0), new_task(1)])
        async with anyio.create_task_group() as tg:
            gate = await hold_writer(ledger, tg)
            tg.start_soon(
                record, "first", lambda: ledger.write(Transition("k0000", TaskState.DONE))
            )
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(record, "boom", lambda: ledger.run_in_writer(boom))
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(record, "last", lambda: ledger.write(Transition("k0001", TaskState.DONE)))
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert outcomes["boom"].startswith("RuntimeError")
        assert (outcomes["first"], outcomes["last"]) == ("ok", "ok")


async def test_write_after_close_raises_ledger_error(db: Path) -> None:
    """Writing to a closed ledger raises LedgerError."""
    async with Ledger.open(db) as ledger:
        await ledger.sync([new_task(0)])
    with pytest.raises(LedgerError, match="closed"):
        await ledger.write(Transition("k0000", TaskState.DONE))


# --- bulk changes ---------------------------------------------------------------------------


async def test_bulk_set_state_moves_matching_rows_with_an_event_each(db: Path) -> None:
    """bulk_set_state filters by state and where/params, sets error fields, logs each move."""
    async with Ledger.open(db) as ledger:
        await ledger.sync(
            [new_task(i, model="m-a" if i % 2 else "m-b") for i in range(6)],
        )
        await ledger.write(
            Transition("k0005", TaskState.DONE),
            *(Transition(f"k{i:04d}", TaskState.RUNNING, attempts=3) for i in range(3)),
        )
        moved = await ledger.bulk_set_state(
            from_states=[TaskState.RUNNING, TaskState.DONE],
            to_state=TaskState.FAILED,
            detail="model retired",
            where="model = ?",
            params=["m-a"],
            error=("model_not_found", "gone"),
        )
        assert moved == 2  # k0001 (running) and k0005 (done); k0003 is pending
        failed = [r async for r in ledger.iter_rows([TaskState.FAILED])]
        assert [r.key for r in failed] == ["k0001", "k0005"]
        assert all((r.error_code, r.error_message) == ("model_not_found", "gone") for r in failed)
        assert (await ledger.events_for("k0001"))[-1][1:] == ("failed", "model retired")
        assert await ledger.events_for("k0003") == []


async def test_bulk_set_state_can_reset_attempts_clear_errors_and_limit_to_the_run(
    db: Path,
) -> None:
    """reset_attempts zeroes attempts, clear_error empties the error, in_run skips old tasks."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(4))
        await ledger.write(
            *(
                Transition(f"k{i:04d}", TaskState.FAILED, attempts=5, error_code="e")
                for i in range(4)
            )
        )
        await ledger.begin_run(argv=[], spec_digest="d2")
        await ledger.sync(new_task(i) for i in range(3))  # k0003 dropped from the plan
        moved = await ledger.bulk_set_state(
            from_states=[TaskState.FAILED],
            to_state=TaskState.PENDING,
            detail="retry",
            in_run=True,
            reset_attempts=True,
            clear_error=True,
        )
        assert moved == 3
        rows = {r.key: r async for r in ledger.iter_rows()}
        assert all(
            (rows[k].state, rows[k].attempts, rows[k].error_code) == (TaskState.PENDING, 0, None)
            for k in ("k0000", "k0001", "k0002")
        )
        assert (rows["k0003"].state, rows["k0003"].attempts) == (TaskState.FAILED, 5)
        nothing = await ledger.bulk_set_state(
            from_states=[TaskState.UNKNOWN], to_state=TaskState.PENDING, detail="x"
        )
        assert nothing == 0


# --- reads ----------------------------------------------------------------------------------


async def test_page_returns_rows_in_seq_order_after_a_cursor(db: Path) -> None:
    """page() filters by state, orders by seq, starts after the cursor and stops at limit."""
    async with Ledger.open(db) as ledger:
        await ledger.sync(new_task(i, seq=100 - i) for i in range(10))  # seq descends with i
        await ledger.write(Transition("k0004", TaskState.DONE))
        first = await ledger.page([TaskState.PENDING], limit=3)
        assert [r.seq for r in first] == [91, 92, 93]
        rest = await ledger.page(
            [TaskState.PENDING], after=(first[-1].seq, first[-1].key), limit=100
        )
        assert [r.seq for r in rest] == [94, 95, 97, 98, 99, 100]  # 96 is done
        filtered = await ledger.page([TaskState.PENDING], where="price > ?", params=[1.0])
        assert filtered == []
        assert [r.key for r in await ledger.page([TaskState.DONE])] == ["k0004"]


async def test_page_in_run_only_returns_this_runs_tasks(db: Path) -> None:
    """page(in_run=True) leaves out tasks the current spec dropped; in_run=False keeps them."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(4))
        await ledger.begin_run(argv=[], spec_digest="d2")
        await ledger.sync(new_task(i) for i in range(2))
        assert [r.key for r in await ledger.page([TaskState.PENDING])] == ["k0000", "k0001"]
        everything = await ledger.page([TaskState.PENDING], in_run=False)
        assert len(everything) == 4


async def test_iter_rows_streams_every_row_a_page_at_a_time(db: Path) -> None:
    """iter_rows yields every task in seq order across pages, optionally only some states."""
    async with Ledger.open(db) as ledger:
        await ledger.sync(new_task(i) for i in range(23))
        await ledger.write(*(Transition(f"k{i:04d}", TaskState.DONE) for i in range(0, 23, 5)))
        rows = [r async for r in ledger.iter_rows(page=4)]
        assert [r.seq for r in rows] == list(range(23))
        done = [r.seq async for r in ledger.iter_rows([TaskState.DONE], page=2)]
        assert done == [0, 5, 10, 15, 20]


async def test_iter_rows_does_not_skip_rows_that_share_a_seq(db: Path) -> None:
    """Every row is yielded even when a re-planned spec reuses the seqs of dropped tasks."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i, key=f"old{i}") for i in range(3))
        await ledger.begin_run(argv=[], spec_digest="d2")
        await ledger.sync(new_task(i, key=f"new{i}") for i in range(2))
        keys = [r.key async for r in ledger.iter_rows(page=3)]
        assert sorted(keys) == ["new0", "new1", "old0", "old1", "old2"]


async def test_done_files_lists_done_tasks_of_this_run(db: Path) -> None:
    """done_files yields (key, files) for every done task of the run, across pages."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(6))
        await ledger.write(
            *(
                Transition(f"k{i:04d}", TaskState.DONE, files=[{"path": f"{i}.png", "bytes": i}])
                for i in range(5)
            ),
            Transition("k0002", TaskState.DONE, files=None),
        )
        await ledger.begin_run(argv=[], spec_digest="d2")
        await ledger.sync(new_task(i) for i in range(1, 6))  # k0000 leaves the plan
        found = [item async for item in ledger.done_files(page=2)]
        assert found == [
            ("k0001", [{"path": "1.png", "bytes": 1}]),
            ("k0002", []),
            ("k0003", [{"path": "3.png", "bytes": 3}]),
            ("k0004", [{"path": "4.png", "bytes": 4}]),
        ]


async def test_counts_lists_every_state(db: Path) -> None:
    """counts() has an entry for every state, zero included, and can keep to the run."""
    async with Ledger.open(db) as ledger:
        await ledger.begin_run(argv=[], spec_digest="d1")
        await ledger.sync(new_task(i) for i in range(5))
        await ledger.write(
            Transition("k0000", TaskState.DONE),
            Transition("k0001", TaskState.DONE),
            Transition("k0002", TaskState.UNKNOWN),
        )
        expected = {s.value: 0 for s in TaskState} | {"done": 2, "unknown": 1, "pending": 2}
        assert await ledger.counts() == expected
        await ledger.begin_run(argv=[], spec_digest="d2")
        await ledger.sync(new_task(i) for i in range(3, 5))
        in_run = await ledger.counts(in_run=True)
        assert in_run == {s.value: 0 for s in TaskState} | {"pending": 2}


async def test_failures_by_code_counts_failed_and_unknown(db: Path) -> None:
    """Failed and unknown tasks are grouped by error code (none: 'unknown'), largest first."""
    async with Ledger.open(db) as ledger:
        await ledger.sync(new_task(i) for i in range(6))
        await ledger.write(
            Transition("k0000", TaskState.FAILED, error_code="moderation"),
            Transition("k0001", TaskState.FAILED, error_code="moderation"),
            Transition("k0002", TaskState.FAILED, error_code="moderation"),
            Transition("k0003", TaskState.UNKNOWN),
            Transition("k0004", TaskState.DONE, error_code="timeout"),  # recovered: not a failure
        )
        result = await ledger.failures_by_code()
        assert result == {"moderation": 3, "unknown": 1}
        assert list(result) == ["moderation", "unknown"]


async def test_totals_sum_money_and_regenerations(db: Path) -> None:
    """totals() reports spent (charged), planned and remaining price, and regenerations."""
    async with Ledger.open(db) as ledger:
        await ledger.sync(new_task(i, price=0.25) for i in range(4))
        await ledger.write(
            Transition("k0000", TaskState.DONE, charged=0.25, regenerations=2),
            Transition("k0001", TaskState.RUNNING, charged=0.25),
        )
        assert await ledger.totals() == {
            "spent": 0.5,
            "chat_spent": 0.0,
            "planned": 1.0,
            "remaining": 0.75,
            "regenerations": 2.0,
        }


async def test_empty_ledger_reads(db: Path) -> None:
    """A fresh ledger reads as empty everywhere and passes the integrity check."""
    async with Ledger.open(db) as ledger:
        assert await ledger.counts() == {s.value: 0 for s in TaskState}
        assert await ledger.failures_by_code() == {}
        assert await ledger.totals() == {
            "spent": 0.0,
            "chat_spent": 0.0,
            "planned": 0.0,
            "remaining": 0.0,
            "regenerations": 0.0,
        }
        assert [r async for r in ledger.iter_rows()] == []
        assert [f async for f in ledger.done_files()] == []
        assert await ledger.integrity_check() == "ok"
