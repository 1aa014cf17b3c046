"""The ``batchgen`` command: a thin edge over the library.

Each command parses its arguments, awaits one library call, and turns a library error
into one line on stderr and an exit code: 0 all done, 1 some tasks failed or are
unknown (or another run error), 2 bad spec or usage, 3 authentication or
configuration, 130 interrupted. Only this module prints, and only this module knows
about tqdm.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import anyio

from batchgen import __version__
from batchgen.errors import BatchgenError, SpecError, leaf_error, redact
from batchgen.runner.progress import Snapshot

__all__ = ["entrypoint", "main"]

EPILOG = "Docs: README.md. The API key comes from COBABA_API_KEY, never from a spec."


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def _setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # The runner's messages reach the user through the progress hook; logs are for -v.
    logging.getLogger("batchgen").setLevel(logging.DEBUG if verbosity else logging.CRITICAL)
    for name in ("httpx2", "httpcore2", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


# --- progress rendering ----------------------------------------------------------------


class TqdmHook:
    """Three tqdm bars (submitted, generated, downloaded) with rate, ETA, 429s and limits."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr  # looked up now, not at import
        self.bars: list[Any] = []
        self._drawn = 0.0

    def on_start(self, snapshot: Snapshot) -> None:
        from tqdm import tqdm

        total = max(0, snapshot.to_do)
        fmt = (
            "{desc:<11}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}"
            " [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
        )
        self.bars = [
            tqdm(
                total=total,
                desc=name,
                unit="img",
                file=self.stream,
                position=i,
                bar_format=fmt,
                dynamic_ncols=True,
                mininterval=0.2,
                leave=True,
            )
            for i, name in enumerate(("submitted", "generated", "downloaded"))
        ]
        if snapshot.already_done:
            self.on_message("info", f"{snapshot.already_done} task(s) already done: skipped")

    def on_update(self, snapshot: Snapshot) -> None:
        if not self.bars:
            return
        rpm = f"{snapshot.rpm:.0f}" if snapshot.rpm is not None else "auto"
        postfixes = (
            f"in flight {snapshot.in_flight}/{snapshot.concurrency}, rpm {rpm},"
            f" 429s {snapshot.rate_limited}",
            f"failed {snapshot.failed}, unknown {snapshot.unknown}, retried {snapshot.retried}",
            f"spent {snapshot.spent:.3f}",
        )
        values = (snapshot.accepted, snapshot.generated, snapshot.downloaded)
        for bar, value, postfix in zip(self.bars, values, postfixes, strict=True):
            bar.set_postfix_str(postfix, refresh=False)
            if value > bar.total:  # retries and regenerations submit more than planned
                bar.total = value
            bar.n = value
        now = time.monotonic()
        if now - self._drawn >= 0.2:  # redraw all three together, five times a second
            self._drawn = now
            for bar in self.bars:
                bar.refresh()

    def on_message(self, level: str, text: str) -> None:
        from tqdm import tqdm

        prefix = "" if level == "info" else f"{level}: "
        tqdm.write(redact(prefix + text), file=self.stream)

    def on_finish(self, snapshot: Snapshot) -> None:
        self.on_update(snapshot)
        for bar in self.bars:
            bar.refresh()
            bar.close()
        self.bars = []


class LineHook:
    """For a log file rather than a terminal: one status line every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def _line(self, snapshot: Snapshot) -> None:
        rpm = f"{snapshot.rpm:.0f}" if snapshot.rpm is not None else "auto"
        print(
            f"progress: {snapshot.accepted}/{snapshot.to_do} submitted,"
            f" {snapshot.generated} generated, {snapshot.downloaded} downloaded,"
            f" {snapshot.failed} failed, {snapshot.unknown} unknown; in flight"
            f" {snapshot.in_flight}/{snapshot.concurrency}, rpm {rpm},"
            f" 429s {snapshot.rate_limited}, spent {snapshot.spent:.3f}",
            file=self.stream,
            flush=True,
        )

    def on_start(self, snapshot: Snapshot) -> None:
        self._last = time.monotonic()
        self._line(snapshot)

    def on_update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(snapshot)

    def on_message(self, level: str, text: str) -> None:
        prefix = "" if level == "info" else f"{level}: "
        print(redact(prefix + text), file=self.stream, flush=True)

    def on_finish(self, snapshot: Snapshot) -> None:
        self._line(snapshot)


class JsonHook:
    """JSON lines on stdout for scripts: messages, progress (at most once a second)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._last = 0.0

    def _emit(self, event: dict[str, Any]) -> None:
        self.stream.write(redact(json.dumps(event, ensure_ascii=False)) + "\n")
        self.stream.flush()

    def on_start(self, snapshot: Snapshot) -> None:
        self._emit({"event": "start", **snapshot.as_dict()})

    def on_update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last >= 1.0:
            self._last = now
            self._emit({"event": "progress", **snapshot.as_dict()})

    def on_message(self, level: str, text: str) -> None:
        self._emit({"event": "message", "level": level, "text": text})

    def on_finish(self, snapshot: Snapshot) -> None:
        self._emit({"event": "progress", **snapshot.as_dict()})


class QuietHook:
    """Only warnings and errors, one line each, on stderr."""

    def on_start(self, snapshot: Snapshot) -> None:
        """Ignore."""

    def on_update(self, snapshot: Snapshot) -> None:
        """Ignore."""

    def on_message(self, level: str, text: str) -> None:
        if level != "info":
            print(redact(f"{level}: {text}"), file=sys.stderr)

    def on_finish(self, snapshot: Snapshot) -> None:
        """Ignore."""


# --- commands ----------------------------------------------------------------------------


def _spec_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="the job spec (YAML)")


def _sim_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sim",
        action="store_true",
        help="use the job's simulator output folder (<output>-sim), as `run --sim` wrote it",
    )


def _load(args: argparse.Namespace) -> Any:
    from batchgen.spec.load import load_spec

    spec = load_spec(
        args.spec,
        base_url=getattr(args, "base_url", None),
        max_tasks=getattr(args, "max_tasks", None),
    )
    for warning in spec.warnings:
        print(str(warning), file=sys.stderr)
    if getattr(args, "sim", False):
        spec = spec.for_simulator()
    return spec


def cmd_validate(args: argparse.Namespace) -> int:
    from batchgen.spec.plan import validate_summary

    spec = _load(args)
    print(validate_summary(spec))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from batchgen.spec.plan import format_plan, plan_json_lines, plan_summary

    spec = _load(args)
    if args.json:
        out = sys.stdout
        for line in plan_json_lines(spec):
            out.write(line + "\n")
        return 0
    done = anyio.run(_done_keys, spec, backend="asyncio")
    print(format_plan(plan_summary(spec, done_keys=done)))
    return 0


async def _done_keys(spec: Any) -> frozenset[str]:
    from batchgen.ledger.schema import TaskState
    from batchgen.ledger.store import Ledger
    from batchgen.runner.job import ledger_path

    path = ledger_path(spec)
    if not path.exists():
        return frozenset()
    async with Ledger.open(path, create=False) as ledger:
        return frozenset([row.key async for row in ledger.iter_rows([TaskState.DONE])])


def cmd_schema(args: argparse.Namespace) -> int:
    from batchgen.spec.plan import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2, ensure_ascii=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from batchgen.runner.job import RunOptions

    spec = _load(args)
    options = RunOptions(
        base_url=args.base_url,
        concurrency=args.concurrency,
        rpm=args.rpm,
        max_tasks=args.max_tasks,
        resubmit_unknown=args.resubmit_unknown,
        argv=["batchgen", *sys.argv[1:]],
    )
    hook: Any
    if args.json:
        hook = JsonHook()
    elif args.quiet:
        hook = QuietHook()
    elif sys.stderr.isatty():
        hook = TqdmHook()
    else:
        hook = LineHook()
    summary = anyio.run(_run_async, spec, options, hook, args, backend="asyncio")
    if args.json:
        print(json.dumps({"event": "summary", **summary.as_dict()}, ensure_ascii=False))
    else:
        print(_format_summary(summary, spec))
    if args.gallery:
        from batchgen.gallery.build import build_gallery

        index = anyio.run(build_gallery, spec, backend="asyncio")
        print(f"  gallery: {index}", file=sys.stderr if args.json else sys.stdout)
    return int(summary.exit_code)


async def _run_async(spec: Any, options: Any, hook: Any, args: argparse.Namespace) -> Any:
    from batchgen.runner.job import RunHandle, arun, sim_session

    handle = RunHandle()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, handle, hook)
        try:
            if args.sim:
                async with sim_session(
                    latency=args.sim_latency, fail_rate=args.sim_fail_rate, seed=0
                ) as (base_url, auth):
                    hook.on_message("info", f"simulator at {base_url} (no API key needed)")
                    options = _replace(options, base_url=base_url, auth=auth, seed=0)
                    summary = await arun(spec, options, hook=hook, handle=handle)
            else:
                summary = await arun(spec, options, hook=hook, handle=handle)
        finally:
            tg.cancel_scope.cancel()
    return summary


def _replace(options: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(options, **changes)


async def _watch_signals(handle: Any, hook: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            handle.interrupt()
            if handle.requests == 1:
                hook.on_message(
                    "warning",
                    "stopping: no new submissions; waiting for answers in flight"
                    " (Ctrl-C again to quit at once)",
                )
            else:
                hook.on_message("warning", "quitting now")


def _format_summary(summary: Any, spec: Any) -> str:
    counts = summary.counts
    parts = [
        f"{counts.get(s, 0)} {s}"
        for s in ("done", "failed", "unknown", "pending", "running", "downloading")
        if counts.get(s, 0)
    ]
    run = summary.this_run
    lines = [
        f"{summary.job}: {', '.join(parts) or 'nothing to do'} of {summary.tasks} task(s)"
        f" in {summary.elapsed:.1f}s; spent {summary.spent_total:.4f} {spec.currency}",
    ]
    if run:
        lines.append(
            f"  this run: {run.get('accepted', 0)} submitted, {run.get('downloaded', 0)} saved,"
            f" {run.get('rate_limited', 0)} rate-limited (429), {run.get('retried', 0)} retried,"
            f" {run.get('regenerated', 0)} regenerated"
        )
    if summary.failures_by_code:
        codes = ", ".join(f"{c} {n}" for c, n in summary.failures_by_code.items())
        lines.append(f"  failures by code: {codes}")
    lines.extend(f"  {m}" for m in summary.messages)
    if summary.not_in_spec:
        lines.append(f"  {summary.not_in_spec} task(s) in the ledger are no longer in the spec")
    lines.append(f"  output: {summary.output}")
    if summary.exit_code == 130:
        lines.append(f"  interrupted: run `batchgen run {_quote(summary.spec)}` again to resume")
    elif counts.get("unknown"):
        lines.append(
            "  unknown tasks may have been charged; review them with `batchgen status`, then"
            " `batchgen retry SPEC --unknown` to resubmit"
        )
    elif counts.get("failed"):
        lines.append(
            "  `batchgen retry SPEC --failed` then `batchgen run SPEC` tries the failed again"
        )
    return "\n".join(lines)


def _quote(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    return rel if " " not in rel else f"'{rel}'"


def cmd_status(args: argparse.Namespace) -> int:
    from batchgen.ledger.report import job_status

    spec = _load(args)
    status = anyio.run(job_status, spec, backend="asyncio")
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return 0
    counts = status["counts"]
    print(f"{status['job']}: {status['tasks']} task(s) in {status['ledger']}")
    for state, count in counts.items():
        print(f"  {state:<12} {count:>8}")
    if status["failures_by_code"]:
        print("failures by code:")
        for code, count in status["failures_by_code"].items():
            print(f"  {code:<24} {count:>6}")
    currency = status["currency"]
    print(f"spent {status['spent']:.4f} {currency}; to spend (est.) {status['remaining']:.4f}")
    if status["not_in_spec"]:
        print(f"{status['not_in_spec']} task(s) in the ledger are no longer in the spec")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from batchgen.ledger.report import retry_tasks

    spec = _load(args)
    failed = args.failed or not (args.failed or args.unknown)
    result = anyio.run(
        lambda: retry_tasks(spec, failed=failed, unknown=args.unknown, code=args.code),
        backend="asyncio",
    )
    for line in result:
        print(line)
    print(f"next: batchgen run {_quote(str(spec.path))}{' --sim' if args.sim else ''}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from batchgen.ledger.report import export_rows

    spec = _load(args)
    out: TextIO = (
        open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
        if args.output
        else sys.stdout
    )
    try:
        rows = anyio.run(export_rows, spec, backend="asyncio")
        if args.format == "jsonl":
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["key"])
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
                        for k, v in row.items()
                    }
                )
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from batchgen.sim.cli import run_from_args

    return int(run_from_args(args))


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (tests read its help)."""
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Batch image generation through the CobabaAi API: YAML matrix jobs,"
        " a resumable ledger, rate-limit-aware runs, and a local simulator.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log details (-vv: HTTP)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        p.set_defaults(func=fn)
        return p

    p = add("run", cmd_run, "run (or resume) a job: submit, poll, download")
    _spec_arg(p)
    p.add_argument(
        "--sim",
        action="store_true",
        help="run against the built-in simulator (output goes to <output>-sim)",
    )
    p.add_argument(
        "--sim-latency",
        type=float,
        default=1.0,
        metavar="S",
        help="simulated task latency with --sim (default 1.0)",
    )
    p.add_argument(
        "--sim-fail-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="simulated failure rate with --sim",
    )
    p.add_argument(
        "--base-url", metavar="URL", help="service URL (overrides COBABA_BASE_URL and the spec)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="tasks in flight at once (overrides limits.concurrency)",
    )
    p.add_argument(
        "--rpm",
        type=float,
        metavar="N",
        help="submissions per minute (overrides limits.requests_per_minute)",
    )
    p.add_argument(
        "--max-tasks",
        type=int,
        metavar="N",
        help="allow a matrix this large (overrides limits.max_tasks)",
    )
    p.add_argument(
        "--gallery", action="store_true", help="write the HTML gallery at the end of the run"
    )
    p.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="resubmit tasks whose submission answer was lost (may pay twice)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quiet", action="store_true", help="no progress bars; warnings and the summary only"
    )
    mode.add_argument(
        "--json", action="store_true", help="JSON lines on stdout: events, progress, summary"
    )

    p = add("validate", cmd_validate, "check a job spec; print a one-line summary or every error")
    _spec_arg(p)
    p = add("plan", cmd_plan, "show what a job will run: counts per axis value, cost, duration")
    _spec_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per task per line")
    p.add_argument("--max-tasks", type=int, metavar="N", help="allow a matrix this large")
    _sim_flag(p)
    add("schema", cmd_schema, "print the JSON Schema of job specs (for editors)")

    p = add("status", cmd_status, "counts by state, failures by code, spend")
    _spec_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _sim_flag(p)

    p = add("retry", cmd_retry, "mark failed and/or unknown tasks for the next run")
    _spec_arg(p)
    p.add_argument("--failed", action="store_true", help="retry failed tasks (the default)")
    p.add_argument("--unknown", action="store_true", help="resubmit unknown tasks (may pay twice)")
    p.add_argument("--code", metavar="CODE", help="only tasks that failed with this error code")
    _sim_flag(p)

    p = add("export", cmd_export, "export every task with its result as JSON lines or CSV")
    _spec_arg(p)
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    _sim_flag(p)

    from batchgen.gallery.build import configure_parser as gallery_parser
    from batchgen.gallery.build import run_from_args as gallery_run

    p = add("gallery", gallery_run, "write index.html: the job's images on labelled grids, offline")
    gallery_parser(p)

    from batchgen.sim.cli import configure_parser

    p = add("sim", cmd_sim, "start the CobabaAi simulator on loopback")
    configure_parser(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code (never raises for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own usage errors and --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except BaseException as exc:  # every error becomes one line and an exit code
        return _report(leaf_error(exc), verbose=args.verbose)


def _report(exc: BaseException, *, verbose: int) -> int:
    if isinstance(exc, SpecError):
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, BatchgenError):
        print(f"batchgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        print("batchgen: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, SystemExit):
        return int(exc.code) if isinstance(exc.code, int) else 1
    if isinstance(exc, BrokenPipeError):
        return 0
    if isinstance(exc, OSError):
        print(f"batchgen: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    if verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    message = redact(f"{type(exc).__name__}: {exc}")
    print(f"batchgen: internal error: {message} (run with -v for details)", file=sys.stderr)
    return 1


def entrypoint() -> None:
    """The console script (kept for callers of ``batchgen.cli:entrypoint``)."""
    from batchgen.__main__ import entrypoint as run_cli

    run_cli()
